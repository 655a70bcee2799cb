"""Command line: ``receiver serve|worker|submit|status|tasks|demo|simulate|check``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from . import __version__
from .config import Settings, load_settings
from .errors import ConfigError, ReceiverError

EXIT_CONFIG = 2
EXIT_FAILED = 1


def _die(message: str, code: int = EXIT_CONFIG) -> int:
    print(f"receiver: {message}", file=sys.stderr)
    return code


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


# --- serve / worker ---------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from . import log, tracing
    from .app import create_app

    settings = _settings(args)
    log.setup(settings.log_level, settings.log_format)
    tracing.setup()  # OTEL_* from the environment, when the [otel] extra is installed
    app = create_app(settings, background=not args.no_worker)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=",".join(settings.server.trusted_proxies),
        timeout_graceful_shutdown=int(settings.worker.shutdown_grace_seconds) + 1,
    )
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from . import log, tracing
    from .background import Background
    from .runtime import Runtime

    settings = _settings(args)
    log.setup(settings.log_level, settings.log_format)
    tracing.setup()

    async def run() -> None:
        rt = Runtime(settings)
        await rt.open()
        loops = Background(rt)
        loops.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await loops.stop()
        await rt.close()

    asyncio.run(run())
    return 0


# --- simulate ---------------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    import uvicorn

    from .simulator import SIMULATORS, Faults, build_simulator

    if args.provider not in SIMULATORS:
        return _die(f"unknown provider {args.provider!r} (have: {', '.join(sorted(SIMULATORS))})")
    public = args.public_url or f"http://{args.host}:{args.port}"
    faults = Faults(
        delay=args.delay,
        url_ttl=args.url_ttl,
        download_5xx_rate=args.download_5xx_rate,
        slow_download=args.slow_download,
        duplicates=args.duplicates,
    )
    app, _ = build_simulator(public, faults, [args.provider])
    print(f"simulated provider {args.provider!r} on {public}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


# --- client commands --------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    url = args.url or os.environ.get("RECEIVER_URL")
    key = args.api_key or os.environ.get("RECEIVER_API_KEY")
    if url is None or key is None:
        try:
            settings = _settings(args)
            url = url or settings.public_url
            key = key or (settings.api_keys[0] if settings.api_keys else None)
        except ConfigError:
            url = url or "http://127.0.0.1:8000"
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return url.rstrip("/"), headers


def _request(method: str, url: str, headers: dict[str, str], **kw: Any) -> dict[str, Any]:
    try:
        response = httpx.request(method, url, headers=headers, timeout=30.0, **kw)
    except httpx.HTTPError as exc:
        raise ReceiverError(f"cannot reach {url.split('?')[0]}: {exc}") from None
    try:
        data: dict[str, Any] = response.json()
    except ValueError:
        raise ReceiverError(f"HTTP {response.status_code} from the server") from None
    if response.status_code >= 400:
        err = data.get("error", {})
        raise ReceiverError(f"HTTP {response.status_code}: {err.get('message', response.text)}")
    return data


def _parse_params(items: Sequence[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ReceiverError(f"--param {item!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


def _print_task(task: dict[str, Any]) -> None:
    print(f"task {task['id']}: {task['status']}")
    if task.get("failure"):
        print(f"  failed: {task['failure']['reason']}: {task['failure']['message']}")
    for obj in task.get("objects", []):
        print(f"  image   {obj['uri']}  ({obj['bytes']} bytes, sha256 {obj['sha256'][:12]}…)")
        print(f"  sidecar {obj['sidecar_uri']}")


def cmd_submit(args: argparse.Namespace) -> int:
    base, headers = _client(args)
    body: dict[str, Any] = {"provider": args.provider, "prompt": args.prompt}
    if args.model:
        body["model"] = args.model
    if args.destination:
        body["destination"] = args.destination
    if args.notify_url:
        body["notify_url"] = args.notify_url
    body["params"] = _parse_params(args.param or [])
    task = _request("POST", f"{base}/v1/tasks", headers, json=body)
    print(f"submitted {task['id']} to {task['provider']}", flush=True)
    if not args.wait:
        _print_task(task)
        return 0
    return _wait(base, headers, task["id"], args.timeout)


def _wait(base: str, headers: dict[str, str], task_id: str, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    last = None
    while True:
        task = _request("GET", f"{base}/v1/tasks/{task_id}", headers)
        if task["status"] != last:
            print(f"  … {task['status']}", flush=True)
            last = task["status"]
        if task["status"] in ("archived", "failed"):
            _print_task(task)
            return 0 if task["status"] == "archived" else EXIT_FAILED
        if time.monotonic() > deadline:
            return _die(f"task {task_id} still {task['status']} after {timeout:.0f}s", EXIT_FAILED)
        time.sleep(0.5)


def cmd_status(args: argparse.Namespace) -> int:
    base, headers = _client(args)
    task = _request("GET", f"{base}/v1/tasks/{args.task_id}", headers)
    if args.json:
        print(json.dumps(task, indent=2))
    else:
        _print_task(task)
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    base, headers = _client(args)
    params = {"limit": str(args.limit)}
    if args.status:
        params["status"] = args.status
    if args.provider:
        params["provider"] = args.provider
    data = _request("GET", f"{base}/v1/tasks", headers, params=params)
    rows = [("ID", "PROVIDER", "STATUS", "IMAGES", "CREATED")]
    for t in data["tasks"]:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t["created_at"]))
        rows.append((t["id"], t["provider"], t["status"], str(len(t["objects"])), created))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _bulk_filter(args: argparse.Namespace) -> dict[str, str]:
    found = {
        "status": args.status,
        "provider": args.provider,
        "model": args.model,
        "destination": args.destination,
        "reason": args.reason,
        "since": args.since,
        "until": args.until,
        "q": args.search,
    }
    return {k: v for k, v in found.items() if v}


def cmd_bulk(args: argparse.Namespace, action: str) -> int:
    """``replay``/``redeliver`` by filter: count first, confirm on a terminal, then act on
    exactly the tasks counted."""
    base, headers = _client(args)
    where = _bulk_filter(args)
    url = f"{base}/v1/tasks/{action}"
    counted = _request("POST", url, headers, json={"filter": where, "dry_run": True})
    print(f"{counted['matched']} task(s) match", flush=True)
    if args.dry_run or counted["matched"] == 0:
        return 0
    if not args.yes and sys.stdin.isatty():
        answer = input(f"{action} {counted['matched']} task(s)? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing done")
            return EXIT_FAILED
    body = {"filter": {**where, "as_of": repr(counted["as_of"])}, "dry_run": False}
    done = _request("POST", url, headers, json=body)
    verb = "queued for archiving again" if action == "replay" else "queued for redelivery"
    print(f"{done['done']} of {done['matched']} task(s) {verb} (bulk {done['bulk_id']})")
    for skipped in done.get("skipped_tasks", []):
        print(f"  skipped {skipped['id']}: {skipped['reason']}")
    return 0


def _wants_bulk(args: argparse.Namespace) -> bool:
    if args.task_id and _bulk_filter(args):
        raise ReceiverError("give a task id or filter options, not both")
    if not args.task_id and not _bulk_filter(args):
        raise ReceiverError("give a task id, or filter options such as --status failed")
    return not args.task_id


def cmd_replay(args: argparse.Namespace) -> int:
    if _wants_bulk(args):
        return cmd_bulk(args, "replay")
    base, headers = _client(args)
    task = _request("POST", f"{base}/v1/tasks/{args.task_id}/replay", headers)
    print(f"task {task['id']} queued for archiving again")
    return _wait(base, headers, task["id"], args.timeout) if args.wait else 0


def cmd_redeliver(args: argparse.Namespace) -> int:
    if _wants_bulk(args):
        return cmd_bulk(args, "redeliver")
    base, headers = _client(args)
    data = _request("POST", f"{base}/v1/tasks/{args.task_id}/redeliver", headers)
    print(f"notification {data['event_id']} queued for {data['url']}")
    return 0


# --- demo -------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return asyncio.run(run_demo(Path(args.dir), count=args.count, serve=args.serve, port=args.port))


def cmd_check(args: argparse.Namespace) -> int:
    from .check import run_checks

    settings = _settings(args)
    return asyncio.run(run_checks(settings))


# --- parser -----------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="receiver", description=__doc__)
    p.add_argument("--version", action="version", version=f"receiver {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", help="TOML file (default: $RECEIVER_CONFIG)")
        return sp

    def client(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        with_config(sp)
        sp.add_argument("--url", help="server base URL (default: $RECEIVER_URL or public_url)")
        sp.add_argument("--api-key", help="API key (default: $RECEIVER_API_KEY or api_keys[0])")
        return sp

    s = with_config(sub.add_parser("serve", help="HTTP API, workers and reconciler"))
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--no-worker", action="store_true", help="HTTP only; run workers apart")
    s.set_defaults(func=cmd_serve)

    s = with_config(sub.add_parser("worker", help="workers and reconciler only"))
    s.set_defaults(func=cmd_worker)

    s = client(sub.add_parser("submit", help="submit a task"))
    s.add_argument("--provider", default="simulated")
    s.add_argument("--model")
    s.add_argument("--prompt", required=True)
    s.add_argument("--destination")
    s.add_argument("--notify-url")
    s.add_argument("--param", action="append", metavar="KEY=VALUE", help="provider parameter")
    s.add_argument("--wait", action="store_true", help="wait until archived or failed")
    s.add_argument("--timeout", type=float, default=600.0)
    s.set_defaults(func=cmd_submit)

    s = client(sub.add_parser("status", help="show one task"))
    s.add_argument("task_id")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    s = client(sub.add_parser("tasks", help="list tasks"))
    s.add_argument("--status")
    s.add_argument("--provider")
    s.add_argument("--limit", type=int, default=50)
    s.set_defaults(func=cmd_tasks)

    def by_filter(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("task_id", nargs="?", help="one task; or select many with the options")
        sp.add_argument("--status", help="bulk: task status (replay: failed)")
        sp.add_argument("--reason", help="bulk: failure reason, e.g. fetch_failed")
        sp.add_argument("--since", help="bulk: created since, e.g. 1h, 30m, 2026-11-30T10:00")
        sp.add_argument("--until", help="bulk: created before")
        sp.add_argument("--provider", help="bulk: provider")
        sp.add_argument("--model", help="bulk: model")
        sp.add_argument("--destination", help="bulk: destination")
        sp.add_argument("--search", help="bulk: words in the prompt")
        sp.add_argument("--dry-run", action="store_true", help="bulk: only count")
        sp.add_argument("--yes", action="store_true", help="bulk: do not ask on a terminal")

    s = client(sub.add_parser("replay", help="archive again from the provider's result"))
    by_filter(s)
    s.add_argument("--wait", action="store_true")
    s.add_argument("--timeout", type=float, default=600.0)
    s.set_defaults(func=cmd_replay)

    s = client(sub.add_parser("redeliver", help="send the task's notification again"))
    by_filter(s)
    s.set_defaults(func=cmd_redeliver)

    s = sub.add_parser("demo", help="simulator + server + local folder, three tasks")
    s.add_argument("--dir", default="demo-output")
    s.add_argument("--count", type=int, default=3, help=argparse.SUPPRESS)
    s.add_argument("--serve", action="store_true", help="keep serving the console until Ctrl-C")
    s.add_argument("--port", type=int, help="receiver port (default: 8000 with --serve)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("simulate", help="run a simulated provider")
    s.add_argument("--provider", default="simulated")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8100)
    s.add_argument("--public-url")
    s.add_argument("--delay", type=float, default=0.2)
    s.add_argument("--url-ttl", type=float, default=600.0)
    s.add_argument("--download-5xx-rate", type=float, default=0.0)
    s.add_argument("--slow-download", type=float, default=0.0)
    s.add_argument("--duplicates", type=int, default=1)
    s.set_defaults(func=cmd_simulate)

    s = with_config(sub.add_parser("check", help="validate configuration, reach ledger and stores"))
    s.set_defaults(func=cmd_check)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        return _die(f"configuration error: {exc.message}")
    except ReceiverError as exc:
        return _die(exc.message, EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
    return code
