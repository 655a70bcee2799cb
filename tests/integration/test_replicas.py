"""Replicas on PostgreSQL: started together on an empty database, both come up; `/readyz`
follows the database going away and coming back; SIGTERM drains and exits."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx

from tests.helpers import Proc, base_config, free_port, wait_http, write_config


class CuttableProxy:
    """A TCP proxy to PostgreSQL that a test can cut (refuse and drop every connection) and
    restore, on the same port: the database going away, as the replicas see it."""

    def __init__(self, target_port: int = 5432) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, up_writer}
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self.writers -= {writer, up_writer}

    def _run(self, coro: object) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def start(self) -> None:
        async def go() -> None:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

        self._run(go())

    def cut(self) -> None:
        async def go() -> None:
            if self.server is not None:
                self.server.close()
                self.server = None
            for writer in list(self.writers):
                writer.transport.abort()
            self.writers.clear()

        self._run(go())

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)


def ready(port: int) -> int:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=15).status_code
    except httpx.HTTPError:
        return 0


def wait_status(port: int, want: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := ready(port)) != want:
        assert time.monotonic() < deadline, f"/readyz stayed {got}, wanted {want}"
        time.sleep(0.2)


def test_replicas_start_together_and_follow_the_database(tmp_path: Path, pg_dsn: str) -> None:
    proxy = CuttableProxy()
    proxy.start()
    dsn = pg_dsn.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    assert dsn != pg_dsn
    path = write_config(tmp_path, base_config(tmp_path, ledger_url=dsn, log_level="info"))
    ports = [free_port(), free_port()]
    replicas = [
        Proc(["serve", "--port", str(p), "--config", str(path)], tmp_path / f"r{i}.log")
        for i, p in enumerate(ports)
    ]
    try:
        for r in replicas:  # at the same moment, on an empty database
            r.start()
        for r, p in zip(replicas, ports, strict=True):
            wait_http(f"http://127.0.0.1:{p}/readyz", timeout=60, proc=r.proc)
            assert ready(p) == 200, r.output()

        proxy.cut()
        for p in ports:
            wait_status(p, 503)
        body = httpx.get(f"http://127.0.0.1:{ports[0]}/readyz", timeout=15).json()
        assert body["error"]["code"] == "ledger_unavailable"
        assert httpx.get(f"http://127.0.0.1:{ports[0]}/healthz", timeout=5).status_code == 200

        proxy.start()
        for p in ports:
            wait_status(p, 200, timeout=60)

        # SIGTERM: the replica stops and exits cleanly.
        # uvicorn re-raises the signal after its graceful shutdown, so the exit status is
        # -SIGTERM either way; the log line shows the drain ran to its end.
        code = replicas[0].stop()
        assert code in (0, -15), code
        assert "stopped: background loops drained" in replicas[0].output()
        assert ready(ports[0]) == 0
        assert ready(ports[1]) == 200
    finally:
        for r in replicas:
            r.stop()
        proxy.close()


def test_bfl_task_is_finished_by_another_replica_through_the_stored_polling_url(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Replica A submits a BFL task and dies (kill -9) before the webhook, which never comes.
    Replica B, which never saw the submission, polls the polling_url BFL returned (kept in the
    ledger; on another host than base_url, where alone the task is known) and archives."""
    import psycopg

    from receiver.simulator import Faults, build_simulator
    from tests.e2e.conftest import ServerThread
    from tests.helpers import submit, wait_tasks

    thread = ServerThread()
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    app, sim = build_simulator(sim_url, Faults(delay=0.3), ["bfl"])
    thread.serve(app, sim_port)
    port_a, port_b = free_port(), free_port()
    conf = base_config(
        tmp_path,
        ledger_url=pg_dsn,
        public_url=f"http://127.0.0.1:{port_a}",
        providers={
            "bfl": {
                "base_url": sim_url,
                "api_key": "sim-key",
                "polling_hosts": ["localhost"],
                "callback_grace_seconds": 1.0,
            }
        },
    )
    path = write_config(tmp_path, conf)
    # A's reconciler ticks once at start and then not for an hour: only B can poll the task.
    replica_a = Proc(
        ["serve", "--port", str(port_a), "--config", str(path)],
        tmp_path / "a.log",
        env={"RECEIVER_WORKER__RECONCILE_INTERVAL": "3600"},
    )
    replica_b = Proc(["serve", "--port", str(port_b), "--config", str(path)], tmp_path / "b.log")
    try:
        replica_a.start()
        wait_http(f"http://127.0.0.1:{port_a}/readyz", timeout=60, proc=replica_a.proc)
        r = submit(
            f"http://127.0.0.1:{port_a}",
            {
                "provider": "bfl",
                "model": "flux-2-pro",
                "prompt": "a lighthouse [sim:no_callback=1]",
            },
        )
        assert r.status_code == 202, r.text
        task_id, pid = r.json()["id"], r.json()["provider_task_id"]
        assert pid in sim.tasks
        replica_a.kill9()

        with psycopg.connect(pg_dsn) as conn:
            (state,) = conn.execute(
                "SELECT provider_state FROM tasks WHERE id = %s", (task_id,)
            ).fetchone()  # type: ignore[misc]
        polling_url = json.loads(state)["polling_url"]
        assert polling_url == f"http://localhost:{sim_port}/v1/get_result?id={pid}"

        replica_b.start()
        wait_http(f"http://127.0.0.1:{port_b}/readyz", timeout=60, proc=replica_b.proc)
        [task] = wait_tasks(f"http://127.0.0.1:{port_b}", [task_id], timeout=60)
        assert task["status"] == "archived", (task, replica_b.output()[-3000:])
        assert set(sim.tasks[pid].extra["polled_hosts"]) == {"localhost"}
        assert sim.callbacks_sent == 0
        archived = Path(task["objects"][0]["uri"]).read_bytes()
        assert archived == sim.tasks[pid].images[0]
    finally:
        replica_a.stop()
        replica_b.stop()
        thread.stop()
