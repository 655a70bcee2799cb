"""Command line: ``receiver serve|worker|submit|status|tasks|demo|simulate|check|completion``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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

    from . import log, tracing
    from . import server as server_mod
    from .app import create_app

    settings = _settings(args)
    log.setup(settings.log_level, settings.log_format)
    tracing.setup()  # OTEL_* from the environment, when the [otel] extra is installed
    asyncio.run(_preflight(settings))
    sock = server_mod.listen(args.host, args.port)
    app = create_app(settings, background=not args.no_worker)
    config = server_mod.config(
        app,
        settings.server,
        log_config=None,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=",".join(settings.server.trusted_proxies),
        timeout_graceful_shutdown=int(settings.worker.shutdown_grace_seconds) + 1,
    )
    server = server_mod.Server(config, on_exit=app.state.runtime.begin_shutdown)
    server.run(sockets=[sock])
    return 0 if server.started else EXIT_FAILED


async def _preflight(settings: Settings) -> None:
    """Open the ledger once before serving: an unreachable database is one line and exit 1,
    not uvicorn's startup traceback."""
    from .ledger import open_ledger

    ledger = open_ledger(settings.ledger_url)
    try:
        await ledger.open()
    except ReceiverError as exc:
        raise ReceiverError(
            f"cannot open the ledger ({_safe_url(settings.ledger_url)}): {exc.message}"
        ) from None
    finally:
        with contextlib.suppress(Exception):
            await ledger.close()


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


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

    _run_loop(run())
    return 0


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop where installed (as ``receiver serve`` gets it through uvicorn), else asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


# --- simulate ---------------------------------------------------------------------------------


def cmd_simulate(args: argparse.Namespace) -> int:
    import uvicorn

    from . import server as server_mod
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
    sock = server_mod.listen(args.host, args.port)
    app, _ = build_simulator(public, faults, [args.provider])
    print(f"simulated provider {args.provider!r} on {public}", flush=True)
    print(simulator_config(args.provider, public), flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])
    return 0


def simulator_config(provider: str, public: str) -> str:
    """The settings a receiver needs to use a simulator at ``public``: its base URL, the
    regional host the BFL simulator returns in ``polling_url``, and (for a loopback or private
    address, which the fetcher refuses by default) the network its result URLs are on."""
    import ipaddress

    host = urlsplit(public).hostname or ""
    lines = ["point a receiver at it with:", f"  [providers.{provider}]"]
    lines.append(f'  base_url = "{public}"')
    if provider == "bfl" and host == "127.0.0.1":
        lines.append('  polling_hosts = ["localhost"]   # its polling_url names this host')
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if host == "localhost" or (address is not None and not address.is_global):
        loopback = address is None or address.is_loopback
        network = "127.0.0.0/8" if loopback else str(ipaddress.ip_network(host))
        lines += ["  [fetch]", f'  allowed_networks = ["{network}"]   # result URLs are here']
    return "\n".join(lines)


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


def _retry_line(task: dict[str, Any]) -> str | None:
    """``retrying (attempt 3): <last error>; next attempt in 12s`` while archiving retries."""
    retry = task.get("retry")
    if not retry:
        return None
    line = f"retrying (attempt {retry.get('attempts')}): {retry.get('last_error')}"
    if retry.get("next_attempt_at"):
        line += f"; next attempt in {max(0, retry['next_attempt_at'] - time.time()):.0f}s"
    return line


def _print_task(task: dict[str, Any]) -> None:
    print(f"task {task['id']}: {task['status']}")
    if task.get("failure"):
        print(f"  failed: {task['failure']['reason']}: {task['failure']['message']}")
    retrying = _retry_line(task)
    if retrying:
        print(f"  {retrying}")
    for obj in task.get("objects", []):
        print(f"  image   {obj['uri']}  ({obj['bytes']} bytes, sha256 {obj['sha256'][:12]}…)")
        print(f"  sidecar {obj['sidecar_uri']}")


def _default_provider(args: argparse.Namespace) -> str | None:
    """The configuration's ``default_provider``, when a configuration can be read."""
    try:
        return _settings(args).default_provider
    except ConfigError:
        return None


def cmd_submit(args: argparse.Namespace) -> int:
    base, headers = _client(args)
    provider = args.provider or _default_provider(args)
    if not provider:
        return _die("submit: --provider is required (or set default_provider in the config)")
    body: dict[str, Any] = {"provider": provider, "prompt": args.prompt}
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
    last_error = None
    while True:
        task = _request("GET", f"{base}/v1/tasks/{task_id}", headers)
        if task["status"] != last:
            print(f"  … {task['status']}", flush=True)
            last = task["status"]
        error = (task.get("retry") or {}).get("last_error")
        if error and error != last_error:
            print(f"  … {_retry_line(task)}", flush=True)
        last_error = error
        if task["status"] in ("archived", "failed"):
            _print_task(task)
            return 0 if task["status"] == "archived" else EXIT_FAILED
        if time.monotonic() > deadline:
            why = f" ({_retry_line(task)})" if error else ""
            return _die(
                f"task {task_id} still {task['status']} after {timeout:.0f}s{why}", EXIT_FAILED
            )
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


SHELLS = ("bash", "zsh", "tcsh")


def cmd_completion(args: argparse.Namespace) -> int:
    """Completion scripts generated from the parser itself by shtab (static: no Python runs
    on each Tab press, unlike argcomplete), so they never drift from the options."""
    import shtab

    print(shtab.complete(parser(), shell=args.shell), end="")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .check import run_checks

    settings = _settings(args)
    return asyncio.run(run_checks(settings))


# --- parser -----------------------------------------------------------------------------------


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default after its help, unless there is none to show (flags, options
    whose help already says where their default comes from)."""

    def __init__(self, prog: str, **kw: Any) -> None:
        # Room for the longest command name, so each command's summary stays on its line.
        kw.setdefault("max_help_position", 28)
        super().__init__(prog, **kw)

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        # argparse measures the command list two columns shallower than it prints it, which
        # pushes the longest names' summaries onto a line of their own.
        if isinstance(action, argparse._SubParsersAction) and action.choices:
            width = max(map(len, action.choices)) + self._current_indent + 4
            self._action_max_length = max(self._action_max_length, width)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        unset = action.default is None or action.default is False
        if "default" in text or not action.option_strings or unset:
            return text
        if action.default is argparse.SUPPRESS:
            return text
        return f"{text} (default: %(default)s)"


DESCRIPTION = (
    "Submit FLUX-family image tasks with webhooks, verify the callbacks, and archive every "
    "image with its sidecars."
)
EPILOG = (
    "'receiver COMMAND --help' shows a command's options and their defaults; "
    "'receiver completion bash' (or zsh, tcsh) prints a shell completion script."
)


def _complete(action: argparse.Action, kind: str) -> argparse.Action:
    """Tell shtab what an option's value is (a file or a folder) for the completion scripts."""
    action.complete = {  # type: ignore[attr-defined]
        "file": {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"},
        "dir": {"bash": "_shtab_compgen_dirs", "zsh": "_files -/", "tcsh": "d"},
    }[kind]
    return action


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="receiver", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Formatter
    )
    p.add_argument("--version", action="version", version=f"receiver {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=summary, description=summary, formatter_class=_Formatter)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        _complete(sp.add_argument("--config", help="TOML file (default: $RECEIVER_CONFIG)"), "file")
        return sp

    def client(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        with_config(sp)
        sp.add_argument("--url", help="server base URL (default: $RECEIVER_URL or public_url)")
        sp.add_argument("--api-key", help="API key (default: $RECEIVER_API_KEY or api_keys[0])")
        return sp

    s = with_config(command("serve", "HTTP API, workers and reconciler"))
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8000, help="port to listen on")
    s.add_argument("--no-worker", action="store_true", help="HTTP only; run workers apart")
    s.set_defaults(func=cmd_serve)

    s = with_config(command("worker", "workers and reconciler only"))
    s.set_defaults(func=cmd_worker)

    s = client(command("submit", "submit a task"))
    s.add_argument(
        "--provider", help="provider name (required unless the config sets default_provider)"
    )
    s.add_argument("--model", help="model (default: the provider's default model)")
    s.add_argument("--prompt", required=True, help="the prompt (required)")
    s.add_argument("--destination", help="destination name (default: default_destination)")
    s.add_argument("--notify-url", help="URL to notify when done (default: notify.default_url)")
    s.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="provider parameter; VALUE is JSON or a string; repeatable (default: none)",
    )
    s.add_argument("--wait", action="store_true", help="wait until archived or failed")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait")
    s.set_defaults(func=cmd_submit)

    s = client(command("status", "show one task"))
    s.add_argument("task_id", help="the task's id")
    s.add_argument("--json", action="store_true", help="print the task as JSON")
    s.set_defaults(func=cmd_status)

    s = client(command("tasks", "list tasks, newest first"))
    s.add_argument("--status", help="only tasks in this status (default: any)")
    s.add_argument("--provider", help="only tasks of this provider (default: any)")
    s.add_argument("--limit", type=int, default=50, help="at most this many tasks")
    s.set_defaults(func=cmd_tasks)

    def by_filter(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("task_id", nargs="?", help="one task; or select many with the options")
        sp.add_argument("--status", help="bulk: task status, e.g. failed (default: any)")
        sp.add_argument("--reason", help="bulk: failure reason, e.g. fetch_failed (default: any)")
        sp.add_argument(
            "--since", help="bulk: created since, e.g. 1h, 30m, 2026-11-30T10:00 (default: ever)"
        )
        sp.add_argument("--until", help="bulk: created before (default: now)")
        sp.add_argument("--provider", help="bulk: provider (default: any)")
        sp.add_argument("--model", help="bulk: model (default: any)")
        sp.add_argument("--destination", help="bulk: destination (default: any)")
        sp.add_argument("--search", help="bulk: words in the prompt (default: none)")
        sp.add_argument("--dry-run", action="store_true", help="bulk: only count")
        sp.add_argument("--yes", action="store_true", help="bulk: do not ask on a terminal")

    s = client(command("replay", "archive again from the provider's result"))
    by_filter(s)
    s.add_argument("--wait", action="store_true", help="wait until archived or failed")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait")
    s.set_defaults(func=cmd_replay)

    s = client(command("redeliver", "send the task's notification again"))
    by_filter(s)
    s.set_defaults(func=cmd_redeliver)

    s = command("demo", "simulator + server + local folder, three tasks")
    _complete(s.add_argument("--dir", default="demo-output", help="folder for the demo"), "dir")
    s.add_argument("--count", type=int, default=3, help="tasks to submit")
    s.add_argument("--serve", action="store_true", help="keep serving the console until Ctrl-C")
    s.add_argument("--port", type=int, help="receiver port (default: 8000 with --serve)")
    s.set_defaults(func=cmd_demo)

    s = command("simulate", "run a simulated provider")
    s.add_argument("--provider", default="simulated", help="whose wire format to speak")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on")
    s.add_argument("--port", type=int, default=8100, help="port to listen on")
    s.add_argument("--public-url", help="base URL in result URLs (default: http://HOST:PORT)")
    s.add_argument("--delay", type=float, default=0.2, help="seconds before a task completes")
    s.add_argument("--url-ttl", type=float, default=600.0, help="seconds a result URL lives")
    s.add_argument(
        "--download-5xx-rate", type=float, default=0.0, help="share of downloads answered 5xx"
    )
    s.add_argument(
        "--slow-download", type=float, default=0.0, help="seconds each download is held back"
    )
    s.add_argument("--duplicates", type=int, default=1, help="copies of each callback sent")
    s.set_defaults(func=cmd_simulate)

    s = with_config(command("check", "validate configuration, reach ledger and stores"))
    s.set_defaults(func=cmd_check)

    s = command("completion", "print a shell completion script")
    s.add_argument("shell", choices=SHELLS, help="the shell: " + ", ".join(SHELLS))
    s.set_defaults(func=cmd_completion)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except ConfigError as exc:
        return _die(f"configuration error: {exc.message}")
    except ReceiverError as exc:
        return _die(exc.message, EXIT_FAILED)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (``receiver status --json | head``): that is not our error.
        # Point stdout at /dev/null so the interpreter's final flush cannot raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return code
