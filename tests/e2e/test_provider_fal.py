"""Issue 3, fal end to end: the queue submit with ``fal_webhook``, an ED25519-signed callback
checked against the simulator's JWKS, and the archive (image + sidecar) over real HTTP."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from receiver.signatures import fal_sign, hook_token
from receiver.simulator import Faults
from tests.e2e.conftest import Stack
from tests.helpers import SECRET, submit, wait_tasks


def _fal_stack(make_stack: Any, grace: float | None = None, **faults: Any) -> Stack:
    """A stack whose fal provider trusts the simulator's JWKS (not fal's public one).

    make_stack only learns the simulator's URL once it runs, so ``jwks_url`` is set on the
    provider's settings afterwards; the adapter reads it on every key fetch."""
    stack: Stack = make_stack(
        Faults(delay=0.05, **faults), providers=["fal"], worker={"reconcile_interval": 0.1}
    )
    conf = stack.settings.providers["fal"]
    setattr(conf, "jwks_url", f"{stack.sim_url}/.well-known/jwks.json")  # noqa: B010
    if grace is not None:
        conf.callback_grace_seconds = grace
    return stack


def _archive_files(stack: Stack) -> list[Path]:
    return sorted(p for p in (stack.tmp / "archive").rglob("*") if p.is_file())


def test_signed_callback_archives_images_and_sidecars(make_stack: Any) -> None:
    """Three copies of the signed callback: one archive with the model and fal's seed."""
    stack = _fal_stack(make_stack, duplicates=3)
    body = {
        "provider": "fal",
        "prompt": "a lighthouse at dusk",
        "params": {"num_images": 2, "seed": 424242, "image_size": "square"},
    }
    response = submit(stack.base, body)
    assert response.status_code == 202, response.text
    created = response.json()
    uuid.UUID(created["provider_task_id"])  # fal's request id
    [task] = wait_tasks(stack.base, [created["id"]], timeout=30)
    assert task["status"] == "archived", task
    served = stack.sim_state()["tasks"][task["provider_task_id"]]
    assert served["params"]["prompt"] == "a lighthouse at dusk"
    assert len(task["objects"]) == 2 == len(served["sha256"])
    for index, obj in enumerate(task["objects"]):
        data = Path(obj["uri"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == served["sha256"][index] == obj["sha256"]
        sidecar = json.loads(Path(obj["sidecar_uri"]).read_text())
        assert sidecar["provider"] == "fal"
        assert sidecar["model"] == "fal-ai/flux/dev"
        assert sidecar["seed"] == 424242
        assert sidecar["provider_task_id"] == task["provider_task_id"]
        assert sidecar["sha256"] == obj["sha256"] and sidecar["index"] == index
    time.sleep(0.5)  # let every copy arrive
    assert stack.sim.callbacks_sent >= 3
    assert len(_archive_files(stack)) == 6  # two images, two sidecars each (.json, .xmp)
    metrics = httpx.get(f"{stack.base}/metrics").text
    assert 'receiver_deliveries_total{outcome="duplicate",provider="fal"} 2.0' in metrics
    assert 'receiver_deliveries_total{outcome="accepted",provider="fal"} 1.0' in metrics


def test_forged_fal_callbacks_get_401_and_archive_nothing(make_stack: Any) -> None:
    stack = _fal_stack(make_stack)
    r = submit(stack.base, {"provider": "fal", "prompt": "[sim:no_callback=true] a harbour"})
    assert r.status_code == 202, r.text
    task_id, request_id = r.json()["id"], r.json()["provider_task_id"]
    # A real result URL on the simulator: only the signature stands between it and the archive.
    deadline = time.monotonic() + 10
    while stack.sim_state()["tasks"][request_id]["status"] != "succeeded":
        assert time.monotonic() < deadline, "the simulated request never finished"
        time.sleep(0.05)
    sim_task = stack.sim.tasks[request_id]
    body = json.dumps(
        {
            "request_id": request_id,
            "gateway_request_id": request_id,
            "status": "OK",
            "payload": {"images": [{"url": sim_task.urls[0]}], "seed": 1},
            "error": None,
        }
    ).encode()
    attacker = Ed25519PrivateKey.generate()
    now = int(time.time())

    def headers(key: Any = attacker, ts: int = now, data: bytes = body) -> dict[str, str]:
        return {
            "x-fal-webhook-request-id": request_id,
            "x-fal-webhook-user-id": "someone",
            "x-fal-webhook-timestamp": str(ts),
            "x-fal-webhook-signature": fal_sign(key, request_id, "someone", ts, data),
        }

    url = f"{stack.base}/v1/hooks/fal/{hook_token([SECRET], task_id, 'fal')}"
    unsigned = {k: v for k, v in headers().items() if k != "x-fal-webhook-signature"}
    cases = {
        "key not in the JWKS": headers(),
        "no signature": unsigned,
        "signature not hex": {**headers(), "x-fal-webhook-signature": "zz" * 64},
        "stale and forged": headers(ts=now - 3600),
    }
    for name, case in cases.items():
        response = httpx.post(url, content=body, headers=case)
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error"]["code"] == "bad_signature", name
    task = stack.client().get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "submitted" and task["objects"] == []
    assert _archive_files(stack) == []
    assert stack.sim_state()["downloads"] == 0


def test_stale_timestamp_from_the_real_signer_is_refused(make_stack: Any) -> None:
    """The simulator's own key, but 15 minutes old: refused, so the task waits for a poll."""
    stack = _fal_stack(make_stack)
    r = submit(stack.base, {"provider": "fal", "prompt": "[sim:timestamp_skew=900] old"})
    task_id = r.json()["id"]
    deadline = time.monotonic() + 10
    while stack.sim.callbacks_sent < 1:
        assert time.monotonic() < deadline, "no callback was sent"
        time.sleep(0.05)
    time.sleep(0.3)
    metrics = httpx.get(f"{stack.base}/metrics").text
    assert 'receiver_verification_failures_total{cause="stale",provider="fal"}' in metrics
    task = stack.client().get(f"/v1/tasks/{task_id}").json()
    assert task["status"] == "submitted" and task["objects"] == []


def test_moderated_result_fails_with_reason_moderated(make_stack: Any) -> None:
    stack = _fal_stack(make_stack)
    r = submit(stack.base, {"provider": "fal", "prompt": "[sim:outcome=moderated] a thing"})
    [task] = wait_tasks(stack.base, [r.json()["id"]], timeout=30)
    assert task["status"] == "failed", task
    assert task["failure"]["reason"] == "moderated"
    assert "safety" in task["failure"]["message"]
    assert _archive_files(stack) == []


def test_partly_flagged_result_archives_only_the_clean_image(make_stack: Any) -> None:
    stack = _fal_stack(make_stack)
    prompt = "[sim:nsfw=tf] two"
    r = submit(stack.base, {"provider": "fal", "prompt": prompt, "params": {"num_images": 2}})
    [task] = wait_tasks(stack.base, [r.json()["id"]], timeout=30)
    assert task["status"] == "archived", task
    served = stack.sim_state()["tasks"][task["provider_task_id"]]["sha256"]
    assert [obj["sha256"] for obj in task["objects"]] == [served[1]]


def test_provider_error_fails_the_task(make_stack: Any) -> None:
    stack = _fal_stack(make_stack)
    r = submit(stack.base, {"provider": "fal", "prompt": "[sim:outcome=failed] x"})
    [task] = wait_tasks(stack.base, [r.json()["id"]], timeout=30)
    assert task["status"] == "failed"
    assert task["failure"]["reason"] == "provider_error"
    assert "out of capacity" in task["failure"]["message"]


def test_payload_error_callback_waits_for_the_poll(make_stack: Any) -> None:
    """``payload: null`` is not a failure: the reconciler fetches the result from the queue."""
    stack = _fal_stack(make_stack, grace=1.0)
    r = submit(stack.base, {"provider": "fal", "prompt": "[sim:payload_error=true] later"})
    task_id = r.json()["id"]
    deadline = time.monotonic() + 10
    while stack.sim.callbacks_sent < 1:
        assert time.monotonic() < deadline, "no callback was sent"
        time.sleep(0.05)
    time.sleep(0.2)
    early = stack.client().get(f"/v1/tasks/{task_id}").json()
    assert early["status"] == "submitted"  # accepted as pending, not failed
    [task] = wait_tasks(stack.base, [task_id], timeout=30)
    assert task["status"] == "archived", task
    served = stack.sim_state()["tasks"][task["provider_task_id"]]["sha256"]
    assert task["objects"][0]["sha256"] == served[0]


def test_out_of_range_params_are_422_before_any_call(make_stack: Any) -> None:
    stack = _fal_stack(make_stack)
    cases = {
        "params.num_images": {"num_images": 5},
        "params.image_size": {"image_size": "huge"},
        "params.image_size.width": {"image_size": {"width": 10, "height": 512}},
        "params.bogus": {"bogus": 1},
    }
    for field, params in cases.items():
        response = submit(stack.base, {"provider": "fal", "prompt": "p", "params": params})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["message"].startswith(f"{field}:"), field
    assert stack.sim_state()["submissions"] == 0


def test_kontext_edit_sends_its_source_image_and_is_archived_as_an_edit(make_stack: Any) -> None:
    stack = _fal_stack(make_stack)
    body = {
        "provider": "fal",
        "model": "fal-ai/flux-pro/kontext",
        "prompt": "make it dusk",
        "params": {"image_url": "https://images.example/in.png", "aspect_ratio": "16:9"},
    }
    response = submit(stack.base, body)
    assert response.status_code == 202, response.text
    [task] = wait_tasks(stack.base, [response.json()["id"]], timeout=30)
    assert task["status"] == "archived", task
    served = stack.sim_state()["tasks"][task["provider_task_id"]]
    assert served["params"]["image_url"] == "https://images.example/in.png"
    side = json.loads(Path(task["objects"][0]["sidecar_uri"]).read_text())
    assert side["digital_source_type"] == "compositeWithTrainedAlgorithmicMedia"
    # The simulator, like fal, refuses the edit endpoint without its source image.
    no_image = submit(stack.base, {"provider": "fal", "model": "fal-ai/flux-2/edit", "prompt": "p"})
    assert no_image.status_code == 202
    [failed] = wait_tasks(stack.base, [no_image.json()["id"]], timeout=30)
    assert failed["status"] == "failed" and "image_urls" in failed["failure"]["message"]
