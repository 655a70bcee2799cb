"""Archive throughput: images from a loopback origin into S3 (moto), three ways.

- receiver: the real ``receiver serve`` (SQLite ledger, S3 destination, ``worker.concurrency``
  = C). Tasks are made in the ledger, then the bench posts one signed ``succeeded`` callback
  per task, as the provider would; timed from the first callback sent to the last task's
  ``archived_at``. Each image costs a fetch (checked address, sniffed, hashed, spooled), an
  image PUT, a sidecar PUT and ledger transactions.
- rclone: ``rclone copy`` from the origin's HTML listing (http backend) to the same endpoint,
  ``--transfers C --checkers C``.
- baseline: C threads, each ``httpx.get`` then boto3 ``put_object`` (bench/baseline.py).

Every contender is its own process; peak RSS is its kernel high-water mark, CPU its user +
system time. moto is reset between contenders so it holds one set of objects at a time.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config

from . import s3server
from .common import (
    S3_KEY_ID,
    S3_REGION,
    S3_SECRET,
    Child,
    MiB,
    Signer,
    cpu_seconds,
    create_tasks,
    free_port,
    median,
    python,
    receiver_config,
    start_receiver,
    succeeded,
    wait_http,
)

BUCKET = "bench"


@dataclass
class Sample:
    seconds: float
    peak_rss_mib: float
    cpu_seconds: float
    objects: int
    store_cpu: float = 0.0  # moto's CPU seconds during the run


@dataclass
class Contender:
    name: str
    count: int
    size: int
    samples: list[Sample] = field(default_factory=list)
    note: str = ""

    @property
    def seconds(self) -> float:
        return median([s.seconds for s in self.samples])

    @property
    def objects_per_s(self) -> float:
        return self.count / self.seconds

    @property
    def mib_per_s(self) -> float:
        return self.count * self.size / MiB / self.seconds

    @property
    def peak_rss_mib(self) -> float:
        return median([s.peak_rss_mib for s in self.samples])

    @property
    def cpu_seconds(self) -> float:
        return median([s.cpu_seconds for s in self.samples])

    @property
    def store_cpu(self) -> float:
        return median([s.store_cpu for s in self.samples])

    def ms_per_image(self, seconds: float) -> float:
        return seconds / self.count * 1000


class Infra:
    """The origin and one S3 endpoint (SeaweedFS or moto), shared by the archive scenarios."""

    def __init__(self, tmp: Path, store: str = "seaweedfs") -> None:
        self.tmp = tmp
        self.store = store
        self.origin_port = free_port()
        self.s3_port = free_port()
        self.origin = Child(
            "origin", python("bench.origin", "--port", str(self.origin_port)), tmp / "origin.log"
        )
        make = s3server.seaweed_child if store == "seaweedfs" else s3server.moto_child
        self.s3 = make(tmp, self.s3_port)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def listing(self, count: int, size: int) -> str:
        return f"http://127.0.0.1:{self.origin_port}/s{size}/n{count}/"

    def start(self) -> Infra:
        self.origin.start()
        wait_http(f"http://127.0.0.1:{self.origin_port}/", self.origin)
        for attempt in range(3):
            self.s3.start()
            try:
                wait_http(self.endpoint, self.s3, timeout=60)
                break
            except RuntimeError:  # exited early: a port taken between choosing and binding
                if attempt == 2:
                    raise
                self.s3_port = free_port()
                make = s3server.seaweed_child if self.store == "seaweedfs" else s3server.moto_child
                self.s3 = make(self.tmp, self.s3_port)
        self.client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_KEY_ID,
            aws_secret_access_key=S3_SECRET,
            config=Config(
                region_name=S3_REGION,
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"mode": "standard", "max_attempts": 10},
            ),
        )
        deadline = time.monotonic() + 60
        while True:  # SeaweedFS answers HTTP before its filer and volumes are ready
            try:
                self.reset()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        return self

    def reset(self) -> None:
        """An empty bucket: moto drops everything it holds; SeaweedFS has the bucket's objects
        deleted (a thousand per request)."""
        if self.store == "moto":
            httpx.post(f"{self.endpoint}/moto-api/reset", timeout=60).raise_for_status()
            self.client.create_bucket(Bucket=BUCKET)
            return
        try:
            self.client.head_bucket(Bucket=BUCKET)
        except Exception:
            self.client.create_bucket(Bucket=BUCKET)
            return
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})

    def count(self, prefix: str, suffix: str = "") -> int:
        """Objects under ``prefix/`` whose keys end with ``suffix``."""
        total = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=prefix + "/"
        ):
            total += sum(1 for o in page.get("Contents", []) if o["Key"].endswith(suffix))
        return total

    def stop(self) -> None:
        self.origin.stop()
        self.s3.stop()


async def post_all(base: str, callbacks: list[Any], concurrency: int) -> None:
    """Send the callbacks ``concurrency`` at a time; each must be accepted."""
    queue = list(reversed(callbacks))
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def sender() -> None:
            while queue:
                cb = queue.pop()
                r = await client.post(cb.path, content=cb.body, headers=cb.headers)
                if r.status_code != 200:
                    raise RuntimeError(f"callback refused: {r.status_code} {r.text}")

        await asyncio.gather(*(sender() for _ in range(concurrency)))


def wait_final(db: Path, count: int, timeout: float) -> tuple[int, int, float]:
    """Poll the SQLite ledger (read-only) until every task is final: (archived, failed, last
    archived_at)."""
    deadline = time.monotonic() + timeout
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        while True:
            archived, failed, last = conn.execute(
                "SELECT sum(status = 'archived'), sum(status = 'failed'), max(archived_at) "
                "FROM tasks"
            ).fetchone()
            archived, failed = int(archived or 0), int(failed or 0)
            if archived + failed >= count:
                return archived, failed, float(last or 0.0)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{archived + failed}/{count} tasks final after {timeout:g}s")
            time.sleep(0.05)
    finally:
        conn.close()


def task_times(db: Path) -> list[tuple[float, float]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT completed_at, archived_at FROM tasks WHERE status = 'archived'"
        ).fetchall()
    finally:
        conn.close()
    return [(float(a), float(b)) for a, b in rows]


@dataclass
class ReceiverRun:
    child: Child
    db: Path
    base: str
    callbacks: list[Any]


def start_receiver_run(
    infra: Infra,
    tmp: Path,
    name: str,
    count: int,
    size: int,
    concurrency: int,
    *,
    worker: dict[str, Any] | None = None,
    s3: bool = True,
) -> ReceiverRun:
    """A fresh ledger with ``count`` tasks, a fresh server, the callbacks signed and ready.
    ``worker`` overrides worker settings; ``s3=False`` archives to the local filesystem."""
    db = tmp / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    ledger_url = f"sqlite:///{db}"
    port = free_port()
    conf = receiver_config(
        tmp,
        port,
        ledger_url=ledger_url,
        s3_endpoint=infra.endpoint if s3 else None,
        bucket=BUCKET,
        prefix=name,
        concurrency=concurrency,
    )
    conf["worker"].update(worker or {})
    conf["destinations"]["local"]["path"] = str(tmp / f"archive-{name}")
    tasks = asyncio.run(create_tasks(ledger_url, count, conf["default_destination"]))
    child = start_receiver(tmp, name, conf, port)
    listing = infra.listing(count, size)
    signer = Signer()
    callbacks = [
        signer.sign(tid, succeeded(ptid, [f"{listing}img_{i:05d}.png"], seed=i), f"msg_{tid}")
        for i, (tid, ptid) in enumerate(tasks)
    ]
    return ReceiverRun(child, db, f"http://127.0.0.1:{port}", callbacks)


def run_receiver(
    infra: Infra,
    tmp: Path,
    count: int,
    size: int,
    concurrency: int,
    timeout: float,
    worker: dict[str, Any] | None = None,
) -> Sample:
    rr = start_receiver_run(infra, tmp, "receiver", count, size, concurrency, worker=worker)
    try:
        cpu0 = cpu_seconds(rr.child.pid)
        t0 = time.time()
        asyncio.run(post_all(rr.base, rr.callbacks, concurrency))
        _, failed, last = wait_final(rr.db, count, timeout)
        if failed:
            raise RuntimeError(f"receiver: {failed} tasks failed; see {rr.child.log}")
        sample = Sample(
            seconds=last - t0,
            peak_rss_mib=rr.child.peak_rss_mib(),
            cpu_seconds=cpu_seconds(rr.child.pid) - cpu0,
            objects=infra.count("receiver", ".png"),
        )
    finally:
        rr.child.stop()
    sidecars = infra.count("receiver", ".png.json")
    if sample.objects != count or sidecars != count:
        raise RuntimeError(
            f"receiver stored {sample.objects} images and {sidecars} sidecars, expected {count}"
        )
    return sample


def _timed(child: Child, timeout: float) -> tuple[float, int]:
    t0 = time.monotonic()
    child.start()
    code = child.wait(timeout)
    return time.monotonic() - t0, code


def rclone_args(listing: str, endpoint: str, concurrency: int) -> list[str]:
    return [
        "rclone",
        "copy",
        ":http:",
        f":s3:{BUCKET}/rclone",
        "--http-url",
        listing,
        "--s3-provider",
        "Other",
        "--s3-endpoint",
        endpoint,
        "--s3-access-key-id",
        S3_KEY_ID,
        "--s3-secret-access-key",
        S3_SECRET,
        "--s3-region",
        S3_REGION,
        "--s3-force-path-style",
        "--s3-no-check-bucket",
        "--transfers",
        str(concurrency),
        "--checkers",
        str(concurrency),
        "-q",
    ]


def rclone_command_text(count: int, size: int, concurrency: int) -> str:
    listing = f"http://127.0.0.1:$ORIGIN/s{size}/n{count}/"
    return " ".join(rclone_args(listing, "http://127.0.0.1:$S3", concurrency))


def run_rclone(
    infra: Infra, tmp: Path, count: int, size: int, concurrency: int, timeout: float
) -> Sample:
    conf = tmp / "rclone.conf"
    conf.touch()
    args = rclone_args(infra.listing(count, size), infra.endpoint, concurrency)
    # rclone's S3 backend cannot load AWS_CA_BUNDLE into its transport; loopback needs none.
    child = Child(
        "rclone",
        args,
        tmp / "rclone.log",
        env={"RCLONE_CONFIG": str(conf)},
        drop_env=("AWS_CA_BUNDLE",),
    )
    seconds, code = _timed(child, timeout)
    if code != 0:
        raise RuntimeError(f"rclone exited {code}:\n{child.output()[-2000:]}")
    objects = infra.count("rclone")
    if objects != count:
        raise RuntimeError(f"rclone stored {objects} objects, expected {count}")
    return Sample(seconds, child.peak_rss_mib(), child.cpu_seconds, objects)


def run_baseline(
    infra: Infra, tmp: Path, count: int, size: int, concurrency: int, timeout: float
) -> Sample:
    args = python(
        "bench.baseline",
        "--origin",
        infra.listing(count, size),
        "--count",
        str(count),
        "--endpoint",
        infra.endpoint,
        "--bucket",
        BUCKET,
        "--prefix",
        "baseline",
        "--concurrency",
        str(concurrency),
    )
    child = Child("baseline", args, tmp / "baseline.log")
    seconds, code = _timed(child, timeout)
    if code != 0:
        raise RuntimeError(f"baseline exited {code}:\n{child.output()[-2000:]}")
    objects = infra.count("baseline")
    if objects != count:
        raise RuntimeError(f"baseline stored {objects} objects, expected {count}")
    return Sample(seconds, child.peak_rss_mib(), child.cpu_seconds, objects)


def with_store_cpu(infra: Infra, fn: Callable[..., Sample], *args: Any, **kw: Any) -> Sample:
    """Run one contender and add the CPU moto spent serving it."""
    before = cpu_seconds(infra.s3.pid)
    sample = fn(infra, *args, **kw)
    sample.store_cpu = cpu_seconds(infra.s3.pid) - before
    return sample


def run(
    infra: Infra, tmp: Path, *, count: int, size: int, concurrency: int, runs: int
) -> dict[str, Contender]:
    timeout = max(120.0, count * size / MiB / 5)  # a floor of 5 MiB/s before giving up
    contenders = {
        "receiver": (Contender("receiver", count, size), run_receiver),
        "rclone": (Contender("rclone", count, size), run_rclone),
        "baseline": (Contender("httpx+boto3", count, size), run_baseline),
    }
    for _ in range(runs):  # interleaved, so drift in the machine hits everyone alike
        for contender, fn in contenders.values():
            infra.reset()
            contender.samples.append(
                with_store_cpu(infra, fn, tmp, count, size, concurrency, timeout)
            )
    infra.reset()
    return {key: c for key, (c, _) in contenders.items()}


def wait_final_pg(url: str, count: int, timeout: float) -> tuple[int, int, float]:
    """As wait_final, on a PostgreSQL ledger."""
    import psycopg

    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'archived'), "
                "count(*) FILTER (WHERE status = 'failed'), max(archived_at) FROM tasks"
            ).fetchone()
            assert row is not None
            archived, failed, last = int(row[0]), int(row[1]), float(row[2] or 0.0)
            if archived + failed >= count:
                return archived, failed, last
            if time.monotonic() > deadline:
                raise TimeoutError(f"{archived + failed}/{count} tasks final after {timeout:g}s")
            time.sleep(0.05)


def run_postgres_processes(
    infra: Infra,
    tmp: Path,
    pg_dsn: str,
    count: int,
    size: int,
    concurrency: int,
    processes: int,
    timeout: float,
) -> Sample:
    """``receiver serve`` on a PostgreSQL ledger, plus ``processes - 1`` ``receiver worker``
    processes sharing it (each with ``worker.concurrency`` slots): the replicas' layout.
    CPU is every process's together."""
    from . import intake
    from .common import write_config

    name = f"receiver_bench_workers_{processes}"
    url = intake.scratch_database(pg_dsn, name, create=True)
    children: list[Child] = []
    prefix = f"pg{processes}"
    try:
        port = free_port()
        conf = receiver_config(
            tmp,
            port,
            ledger_url=url,
            s3_endpoint=infra.endpoint,
            bucket=BUCKET,
            prefix=prefix,
            concurrency=concurrency,
        )
        tasks = asyncio.run(create_tasks(url, count, conf["default_destination"]))
        children.append(start_receiver(tmp, f"{prefix}-serve", conf, port))
        config = write_config(tmp / f"{prefix}-serve.toml", conf)
        for n in range(processes - 1):
            children.append(
                Child(
                    f"{prefix}-worker-{n}",
                    python("receiver", "worker", "--config", str(config)),
                    tmp / f"{prefix}-worker-{n}.log",
                ).start()
            )
        time.sleep(1.0)  # the workers connect and start listening
        listing = infra.listing(count, size)
        signer = Signer()
        callbacks = [
            signer.sign(tid, succeeded(ptid, [f"{listing}img_{i:05d}.png"], seed=i), f"m_{tid}")
            for i, (tid, ptid) in enumerate(tasks)
        ]
        cpu0 = sum(cpu_seconds(c.pid) for c in children)
        t0 = time.time()
        asyncio.run(post_all(f"http://127.0.0.1:{port}", callbacks, concurrency))
        _, failed, last = wait_final_pg(url, count, timeout)
        if failed:
            raise RuntimeError(f"{prefix}: {failed} tasks failed; see {tmp}")
        sample = Sample(
            seconds=last - t0,
            peak_rss_mib=max(c.peak_rss_mib() for c in children),
            cpu_seconds=sum(cpu_seconds(c.pid) for c in children) - cpu0,
            objects=infra.count(prefix, ".png"),
        )
        if sample.objects != count:
            raise RuntimeError(f"{prefix}: {sample.objects} images stored, expected {count}")
    finally:
        for child in reversed(children):
            child.stop()
        intake.scratch_database(pg_dsn, name, create=False)
    return sample


def run_processes(
    infra: Infra,
    tmp: Path,
    pg_dsn: str,
    *,
    count: int,
    size: int,
    concurrency: int,
    runs: int,
) -> dict[str, Contender]:
    """One process against two sharing PostgreSQL, interleaved."""
    timeout = max(120.0, count * size / MiB / 5)
    out = {
        1: Contender("receiver, PostgreSQL, 1 process", count, size),
        2: Contender("receiver, PostgreSQL, 2 processes", count, size),
    }
    for _ in range(runs):
        for processes, contender in out.items():
            infra.reset()
            contender.samples.append(
                with_store_cpu(
                    infra,
                    run_postgres_processes,
                    tmp,
                    pg_dsn,
                    count,
                    size,
                    concurrency,
                    processes,
                    timeout,
                )
            )
    infra.reset()
    return {f"pg{k}": v for k, v in out.items()}


def run_moto(
    infra: Infra, tmp: Path, *, count: int, size: int, concurrency: int, runs: int
) -> dict[str, Contender]:
    """The receiver and rclone against moto: the earlier S3 server, kept as a second row."""
    timeout = max(120.0, count * size / MiB / 5)
    contenders = {
        "receiver": (Contender("receiver (moto)", count, size), run_receiver),
        "rclone": (Contender("rclone (moto)", count, size), run_rclone),
    }
    for _ in range(runs):
        for contender, fn in contenders.values():
            infra.reset()
            contender.samples.append(
                with_store_cpu(infra, fn, tmp, count, size, concurrency, timeout)
            )
    infra.reset()
    return {key: c for key, (c, _) in contenders.items()}
