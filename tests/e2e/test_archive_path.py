"""Issue 2, end to end: the whole path over real HTTP with real processes and stores."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from receiver.models import new_id
from receiver.signatures import hook_token, standard_sign, task_secrets
from receiver.simulator import Faults
from tests.e2e.conftest import Stack
from tests.helpers import (
    API_KEY,
    SECRET,
    Proc,
    base_config,
    free_port,
    submit,
    wait_http,
    wait_tasks,
    write_config,
)

SIDECAR_FIELDS = {
    "schema",
    "task_id",
    "provider",
    "provider_task_id",
    "model",
    "prompt",
    "negative_prompt",
    "seed",
    "params",
    "index",
    "content_type",
    "bytes",
    "sha256",
    "width",
    "height",
    "source_url",
    "cost",
    "metadata",
    "digital_source_type",
    "submitted_at",
    "completed_at",
    "archived_at",
    "receiver_version",
    "provenance",
}


def _s3(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def _objects(s3: Any, bucket: str, prefix: str = "") -> dict[str, bytes]:
    found = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            found[item["Key"]] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return found


def test_twenty_tasks_archived_into_s3_by_subprocesses(
    tmp_path: Path, moto_endpoint: str, s3_bucket: str
) -> None:
    """`receiver serve` and `receiver simulate` as processes, S3 via moto's server."""
    sim_port, port = free_port(), free_port()
    sim = Proc(["simulate", "--port", str(sim_port), "--delay", "0.1"], tmp_path / "sim.log")
    conf = base_config(
        tmp_path,
        public_url=f"http://127.0.0.1:{port}",
        default_destination="s3",
        destinations={
            "s3": {
                "type": "s3",
                "bucket": s3_bucket,
                "prefix": "flux/",
                "endpoint_url": moto_endpoint,
                "region": "us-east-1",
                "access_key_id": "testing",
                "secret_access_key": "testing",
            }
        },
        providers={"simulated": {"base_url": f"http://127.0.0.1:{sim_port}"}},
    )
    server = Proc(
        ["serve", "--port", str(port), "--config", str(write_config(tmp_path, conf))],
        tmp_path / "serve.log",
    )
    base = f"http://127.0.0.1:{port}"
    try:
        sim.start()
        server.start()
        wait_http(f"http://127.0.0.1:{sim_port}/_sim/state", proc=sim.proc)
        wait_http(f"{base}/healthz", proc=server.proc)
        ids = []
        for i in range(20):
            r = submit(
                base,
                {
                    "provider": "simulated",
                    "prompt": f"task {i}",
                    "params": {"count": 1 + i % 2},
                    "metadata": {"n": i},
                },
            )
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        tasks = wait_tasks(base, ids, timeout=90)
        assert [t["status"] for t in tasks] == ["archived"] * 20, server.output()[-3000:]

        state = httpx.get(f"http://127.0.0.1:{sim_port}/_sim/state").json()["tasks"]
        served = {t["provider_task_id"]: state[t["provider_task_id"]]["sha256"] for t in tasks}
        stored = _objects(_s3(moto_endpoint), s3_bucket, "flux/")
        images = {k: v for k, v in stored.items() if not k.endswith((".json", ".xmp"))}
        sidecars = {k: v for k, v in stored.items() if k.endswith(".json")}
        expected = sum(1 + i % 2 for i in range(20))
        assert len(images) == expected and len(sidecars) == expected
        assert {k + ".xmp" for k in images} == {k for k in stored if k.endswith(".xmp")}
        for task in tasks:
            shas = served[task["provider_task_id"]]
            assert len(task["objects"]) == len(shas)
            for index, obj in enumerate(task["objects"]):
                key = obj["uri"].removeprefix(f"s3://{s3_bucket}/")
                assert key.startswith("flux/") and key.endswith(f"/{task['id']}/{index}.png")
                body = stored[key]
                assert hashlib.sha256(body).hexdigest() == shas[index] == obj["sha256"]
                sidecar = json.loads(stored[key + ".json"])
                assert SIDECAR_FIELDS <= set(sidecar)
                assert sidecar["schema"] == "receiver.sidecar/1"
                assert sidecar["sha256"] == shas[index] and sidecar["bytes"] == len(body)
                assert sidecar["task_id"] == task["id"] and sidecar["index"] == index
                assert sidecar["digital_source_type"] == "trainedAlgorithmicMedia"
                assert sidecar["metadata"] == task["metadata"]
                assert "?" not in sidecar["source_url"]
                assert sidecar["provenance"]["status"] == "absent"  # the simulator signs nothing
        head = _s3(moto_endpoint).head_object(Bucket=s3_bucket, Key=next(iter(images)))
        assert head["ContentType"] == "image/png"
    finally:
        server.stop()
        sim.stop()


def test_duplicate_callbacks_archive_once(make_stack: Any) -> None:
    """Five copies of one callback, some at once: one job, one image and one sidecar each."""
    stack: Stack = make_stack(Faults(delay=0.05, duplicates=5))
    r = submit(stack.base, {"provider": "simulated", "prompt": "dup", "params": {"count": 2}})
    task_id = r.json()["id"]
    [task] = wait_tasks(stack.base, [task_id])
    assert task["status"] == "archived"
    time.sleep(0.5)  # let every copy arrive
    assert stack.sim.callbacks_sent >= 5
    files = sorted(p.name for p in (stack.tmp / "archive").rglob("*") if p.is_file())
    assert files == ["0.png", "0.png.json", "0.png.xmp", "1.png", "1.png.json", "1.png.xmp"]
    metrics = httpx.get(f"{stack.base}/metrics").text
    assert 'receiver_deliveries_total{outcome="duplicate",provider="simulated"} 4.0' in metrics


def test_forged_and_tampered_callbacks_are_refused(make_stack: Any) -> None:
    stack: Stack = make_stack(Faults(delay=0.05))
    mine = submit(stack.base, {"provider": "simulated", "prompt": "[sim:no_callback=true] a"})
    other = submit(stack.base, {"provider": "simulated", "prompt": "[sim:no_callback=true] b"})
    task_id, other_id = mine.json()["id"], other.json()["id"]
    body = json.dumps(
        {
            "id": mine.json()["provider_task_id"],
            "status": "succeeded",
            "images": [{"url": f"{stack.sim_url}/files/x/0.png"}],
        }
    ).encode()

    def post(token: str, data: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{stack.base}/v1/hooks/simulated/{token}", content=data, headers=headers)

    def sign(task: str, data: bytes, ts: int) -> dict[str, str]:
        msg = new_id("msg")
        secret = task_secrets([SECRET], task, "whsec")[0]
        return {
            "webhook-id": msg,
            "webhook-timestamp": str(ts),
            "webhook-signature": standard_sign(secret, msg, ts, data),
        }

    now = int(time.time())
    token = hook_token([SECRET], task_id, "simulated")
    forged = hook_token(["an-attacker-key-0123456789"], task_id, "simulated")
    cases = {
        "forged token": post(forged, body, sign(task_id, body, now)),
        "other task's token": post(
            hook_token([SECRET], other_id, "simulated"), body, sign(task_id, body, now)
        ),
        "token for another provider": post(
            hook_token([SECRET], task_id, "bfl"), body, sign(task_id, body, now)
        ),
        "tampered body": post(
            token, body.replace(b"succeeded", b"failed"), sign(task_id, body, now)
        ),
        "stale timestamp": post(token, body, sign(task_id, body, now - 3600)),
        "no signature": post(token, body, {}),
    }
    for name, response in cases.items():
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error"]["code"] in ("bad_signature", "unauthorized"), name
    for tid in (task_id, other_id):
        task = stack.client().get(f"/v1/tasks/{tid}").json()
        assert task["status"] == "submitted" and task["objects"] == []
    # The genuine signature with the right token is accepted: the refusals above were real.
    good = post(token, body, sign(task_id, body, now))
    assert good.status_code == 200, good.text


def test_oversized_callback_body_is_413(make_stack: Any) -> None:
    stack: Stack = make_stack(server={"max_body_bytes": 4096})
    r = submit(stack.base, {"provider": "simulated", "prompt": "[sim:no_callback=true] big"})
    token = hook_token([SECRET], r.json()["id"], "simulated")
    big = b'{"pad": "' + b"x" * 10_000 + b'"}'
    response = httpx.post(f"{stack.base}/v1/hooks/simulated/{token}", content=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("result_base", "allowed"),
    [
        (None, []),  # the simulator itself, on 127.0.0.1
        ("http://10.20.30.40:8080", []),
        ("http://169.254.169.254", []),
    ],
)
def test_private_result_urls_are_refused(
    make_stack: Any, result_base: str | None, allowed: list[str]
) -> None:
    stack: Stack = make_stack(fetch={"allowed_networks": allowed})
    faults = f"[sim:result_base_url={result_base}] " if result_base else ""
    r = submit(stack.base, {"provider": "simulated", "prompt": faults + "ssrf"})
    [task] = wait_tasks(stack.base, [r.json()["id"]])
    assert task["status"] == "failed"
    assert task["failure"]["reason"] == "fetch_failed"
    assert "address" in task["failure"]["message"] or "private" in task["failure"]["message"]
    assert not list((stack.tmp / "archive").rglob("*.png"))


def test_html_in_place_of_an_image_is_refused(make_stack: Any) -> None:
    stack: Stack = make_stack()
    r = submit(stack.base, {"provider": "simulated", "prompt": "[sim:serve_html=true] page"})
    [task] = wait_tasks(stack.base, [r.json()["id"]])
    assert task["status"] == "failed" and task["failure"]["reason"] == "fetch_failed"
    assert "not an image" in task["failure"]["message"]


def test_image_over_the_size_cap_fails_with_a_clear_reason(make_stack: Any) -> None:
    stack: Stack = make_stack(fetch={"max_bytes": 200_000})
    r = submit(stack.base, {"provider": "simulated", "prompt": "[sim:image_bytes=600000] huge"})
    [task] = wait_tasks(stack.base, [r.json()["id"]])
    assert task["status"] == "failed" and task["failure"]["reason"] == "fetch_failed"
    assert "200000" in task["failure"]["message"]


def slow_downloads(tmp_path: Path, slow: float, **config: Any) -> tuple[Proc, str, str, Path]:
    """A simulator subprocess serving each result over ``slow`` seconds, and a configuration
    for servers on a free port: (simulator, its URL, the server's base URL, config path)."""
    sim_port, port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    sim = Proc(
        ["simulate", "--port", str(sim_port), "--delay", "0.1", "--slow-download", str(slow)],
        tmp_path / "sim.log",
    )
    conf = base_config(
        tmp_path,
        public_url=f"http://127.0.0.1:{port}",
        providers={"simulated": {"base_url": sim_url}},
        **config,
    )
    return sim, sim_url, f"http://127.0.0.1:{port}", write_config(tmp_path, conf)


def wait_downloads(sim_url: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while httpx.get(f"{sim_url}/_sim/state").json()["downloads"] < count:
        assert time.monotonic() < deadline, "downloads never started"
        time.sleep(0.05)


def test_kill_9_during_an_archive_job_loses_nothing(tmp_path: Path) -> None:
    """The server dies mid-download; after a restart the job is claimed again and archived."""
    sim, sim_url, base, path = slow_downloads(
        tmp_path,
        4,
        worker={"lease_seconds": 2.0, "poll_interval": 0.1, "reconcile_interval": 0.5},
    )
    port = base.rsplit(":", 1)[1]
    server = Proc(["serve", "--port", port, "--config", str(path)], tmp_path / "s1.log")
    again = Proc(["serve", "--port", port, "--config", str(path)], tmp_path / "s2.log")
    try:
        sim.start()
        server.start()
        wait_http(f"{sim_url}/_sim/state", proc=sim.proc)
        wait_http(f"{base}/healthz", proc=server.proc)
        ids = [
            submit(base, {"provider": "simulated", "prompt": f"slow {i}"}).json()["id"]
            for i in range(3)
        ]
        wait_downloads(sim_url, 3)
        statuses = {t["status"] for t in wait_tasks(base, ids, 5, ("completed",))}
        assert statuses == {"completed"}  # jobs in flight, nothing archived yet
        server.kill9()
        again.start()
        wait_http(f"{base}/healthz", proc=again.proc)
        tasks = wait_tasks(base, ids, timeout=60)
        assert [t["status"] for t in tasks] == ["archived"] * 3, again.output()[-2000:]
        pngs = list((tmp_path / "archive").rglob("*.png"))
        sidecars = list((tmp_path / "archive").rglob("*.png.json"))
        assert len(pngs) == 3 and len(sidecars) == 3
        state = httpx.get(f"{sim_url}/_sim/state").json()["tasks"]
        for task in tasks:
            [obj] = task["objects"]
            assert obj["sha256"] == state[task["provider_task_id"]]["sha256"][0]
            assert hashlib.sha256(Path(obj["uri"]).read_bytes()).hexdigest() == obj["sha256"]
    finally:
        again.stop()
        server.stop()
        sim.stop()


def test_task_api_requires_the_api_key(make_stack: Any) -> None:
    stack: Stack = make_stack()
    body = {"provider": "simulated", "prompt": "x"}
    assert httpx.post(f"{stack.base}/v1/tasks", json=body).status_code == 401
    wrong = httpx.post(
        f"{stack.base}/v1/tasks", json=body, headers={"authorization": "Bearer nope"}
    )
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    assert submit(stack.base, body).status_code == 202
    assert API_KEY


def test_demo_runs_and_prints_every_archived_file(tmp_path: Path) -> None:
    demo = Proc(["demo", "--dir", str(tmp_path / "out")], tmp_path / "demo.log").start()
    assert demo.proc is not None
    assert demo.proc.wait(120) == 0, demo.output()
    out = demo.output()
    assert out.count(": archived") == 3
    images = [line.split()[1] for line in out.splitlines() if line.strip().startswith("image ")]
    sidecars = [line.split()[1] for line in out.splitlines() if line.strip().startswith("sidecar")]
    assert len(images) == 3 and len(sidecars) == 3
    for img, side in zip(images, sidecars, strict=True):
        data = json.loads(Path(side).read_text())  # relative paths resolve against our cwd
        assert data["sha256"] == hashlib.sha256(Path(img).read_bytes()).hexdigest()


def test_sigterm_gives_back_unfinished_jobs_to_a_worker(tmp_path: Path) -> None:
    """`receiver serve` takes callbacks, `receiver worker` archives; SIGTERM to the worker in
    the middle of slow downloads gives the jobs back at once (the lease is 120 s, so only the
    give-back explains a second worker finishing them within the test's 40 s)."""
    sim, sim_url, base, path = slow_downloads(
        tmp_path,
        6,
        worker={"lease_seconds": 120.0, "shutdown_grace_seconds": 0.5, "poll_interval": 0.1},
        log_level="info",
    )
    port = base.rsplit(":", 1)[1]
    server = Proc(
        ["serve", "--no-worker", "--port", port, "--config", str(path)], tmp_path / "s.log"
    )
    first = Proc(["worker", "--config", str(path)], tmp_path / "w1.log")
    second = Proc(["worker", "--config", str(path)], tmp_path / "w2.log")
    try:
        sim.start()
        server.start()
        first.start()
        wait_http(f"{sim_url}/_sim/state", proc=sim.proc)
        wait_http(f"{base}/healthz", proc=server.proc)
        ids = [
            submit(base, {"provider": "simulated", "prompt": f"slow {i}"}).json()["id"]
            for i in range(2)
        ]
        wait_downloads(sim_url, 2)
        first.stop()  # SIGTERM
        assert "gave back 2 unfinished jobs" in first.output(), first.output()[-2000:]
        second.start()
        tasks = wait_tasks(base, ids, timeout=40)
        assert [t["status"] for t in tasks] == ["archived"] * 2, second.output()[-2000:]
    finally:
        second.stop()
        first.stop()
        server.stop()
        sim.stop()
