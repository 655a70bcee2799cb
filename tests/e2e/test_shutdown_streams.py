"""Issue 12, finding 9: SIGTERM with a live event stream. Before, one open
``/v1/tasks/{id}/events`` held uvicorn's connection wait for its whole graceful timeout (about
21 s) before the worker drain even began; the worst case passed the Kubernetes example's grace
period. Now the stream ends when shutdown begins.

Both phases are measured on real processes (``receiver simulate`` keeping the task pending,
``receiver serve``): SIGTERM → the stream closed, then → the process exited; their sum must
fit in the Deployment's ``terminationGracePeriodSeconds`` after its preStop pause."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import SUMMARIES
from tests.helpers import API_KEY, Proc, base_config, free_port, wait_http, write_config

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s" / "deployment.yaml"


def k8s_budget() -> float:
    """terminationGracePeriodSeconds minus the preStop sleep: what the process itself gets."""
    text = K8S.read_text()
    grace = float(re.search(r"terminationGracePeriodSeconds:\s*(\d+)", text).group(1))  # type: ignore[union-attr]
    pre = re.search(r'command:\s*\["sleep",\s*"(\d+)"\]', text)
    return grace - (float(pre.group(1)) if pre else 0.0)


def test_sigterm_with_an_open_event_stream_fits_the_kubernetes_grace(tmp_path: Path) -> None:
    sim_port, port = free_port(), free_port()
    sim = Proc(
        ["simulate", "--port", str(sim_port), "--delay", "600"], tmp_path / "sim.log"
    ).start()
    conf = base_config(
        tmp_path,
        public_url=f"http://127.0.0.1:{port}",
        providers={"simulated": {"base_url": f"http://127.0.0.1:{sim_port}"}},
    )
    server = Proc(
        ["serve", "--port", str(port), "--config", str(write_config(tmp_path, conf))],
        tmp_path / "serve.log",
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"http://127.0.0.1:{sim_port}/healthz", proc=sim.proc)
        wait_http(f"{base}/healthz", proc=server.proc)
        auth = {"authorization": f"Bearer {API_KEY}"}
        task = httpx.post(
            f"{base}/v1/tasks", json={"provider": "simulated", "prompt": "p"}, headers=auth
        ).json()
        assert task["status"] == "submitted", task
        opened = threading.Event()
        closed: list[float] = []

        def listen() -> None:
            with httpx.stream(
                "GET", f"{base}/v1/tasks/{task['id']}/events", headers=auth, timeout=120
            ) as stream:
                for _ in stream.iter_raw():
                    opened.set()
            closed.append(time.monotonic())

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        assert opened.wait(30), "the event stream did not open"
        assert server.proc is not None
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(120)
        exited = time.monotonic()
        reader.join(30)
    finally:
        server.stop()
        sim.stop()
    # uvicorn re-raises the SIGTERM it caught once it has shut down cleanly.
    assert code in (0, -signal.SIGTERM), (tmp_path / "serve.log").read_text()[-2000:]
    assert "stopped: background loops drained" in (tmp_path / "serve.log").read_text()
    assert closed, "the stream never closed"
    stream_phase, drain_phase = closed[0] - start, exited - closed[0]
    budget = k8s_budget()
    SUMMARIES.append(
        f"shutdown with an open SSE stream: stream closed {stream_phase:.2f}s after SIGTERM, "
        f"process exited {drain_phase:.2f}s later (Kubernetes budget {budget:.0f}s)"
    )
    # The stream must not wait out uvicorn's graceful timeout (shutdown_grace_seconds + 1):
    # it ends when shutdown begins, well inside the worker's own grace.
    assert stream_phase < conf["worker"].get("shutdown_grace_seconds", 20.0)
    assert stream_phase + drain_phase < budget
