"""End to end: BFL over real HTTP against its simulator (Vtrix: test_provider_vtrix.py).

Each test runs the receiver and the provider's simulator as uvicorn servers on loopback: the
submission goes out in the provider's wire format with our webhook URL and secret, the
simulator calls back signed (``X-BFL-Signature`` and ``X-Webhook-Secret`` alternate task by
task), and the worker archives the image with its sidecar.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from receiver.simulator import Faults
from tests.e2e.conftest import Stack
from tests.helpers import submit, wait_tasks


def _sidecar(task: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(Path(task["objects"][0]["sidecar_uri"]).read_text()))


def _archived_matches_sim(stack: Stack, task: dict[str, Any]) -> dict[str, Any]:
    """The archived bytes are the simulator's image; returns the simulator's task record."""
    state = stack.sim_state()["tasks"][task["provider_task_id"]]
    image = Path(task["objects"][0]["uri"]).read_bytes()
    assert hashlib.sha256(image).hexdigest() == state["sha256"][0]
    assert task["objects"][0]["sha256"] == state["sha256"][0]
    return dict(state)


def test_bfl_submit_callback_archive_both_signature_forms(make_stack: Any) -> None:
    stack: Stack = make_stack(providers=["bfl"])
    ids = []
    for i, params in enumerate(({"seed": 4242, "width": 128, "height": 96}, {})):
        r = submit(
            stack.base,
            {
                "provider": "bfl",
                "model": "flux-2-pro",
                "prompt": f"lighthouse {i}",
                "params": params,
            },
        )
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    tasks = wait_tasks(stack.base, ids, timeout=30)
    assert [t["status"] for t in tasks] == ["archived", "archived"], tasks
    for task in tasks:
        state = _archived_matches_sim(stack, task)
        # The request carried our callback URL (the secret is never shown by the simulator).
        assert state["params"]["webhook_url"].startswith(f"{stack.base}/v1/hooks/bfl/")
        side = _sidecar(task)
        assert side["provider"] == "bfl"
        assert side["model"] == "flux-2-pro"
        assert side["seed"] == state["seed"]
        assert side["provider_task_id"] == task["provider_task_id"]
        assert "?" not in side["source_url"]
    assert _sidecar(tasks[0])["seed"] == 4242
    # Both documented authentication forms were used, and both were accepted.
    styles = {stack.sim.tasks[t["provider_task_id"]].extra["signature"] for t in tasks}
    assert styles == {"hmac", "echo"}


def test_bfl_moderated_fails_with_the_providers_message(make_stack: Any) -> None:
    stack: Stack = make_stack(providers=["bfl"])
    r = submit(
        stack.base,
        {"provider": "bfl", "model": "flux-kontext-pro", "prompt": "x [sim:outcome=moderated]"},
    )
    assert r.status_code == 202, r.text
    [task] = wait_tasks(stack.base, [r.json()["id"]], timeout=30)
    assert task["status"] == "failed"
    assert task["failure"]["reason"] == "moderated"
    assert "Content flagged by the safety filter" in task["failure"]["message"]
    assert task["objects"] == []


def test_bfl_invalid_params_are_422_and_never_sent(make_stack: Any) -> None:
    stack: Stack = make_stack(providers=["bfl"])
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "flux-2-pro", "params": {"width": 50}}, "params.width"),
        ({"model": "flux-2-pro", "params": {"steps": 20}}, "params.steps"),
        (
            {"model": "flux-kontext-max", "params": {"input_image_5": "https://x.test/a.png"}},
            "params.input_image_5",
        ),
        ({"model": "flux-kontext-pro", "params": {"aspect_ratio": "5:1"}}, "params.aspect_ratio"),
        ({"model": "flux-2-max", "params": {"safety_tolerance": 6}}, "params.safety_tolerance"),
        ({"model": "flux-9"}, "model"),
    ]
    for extra, field in cases:
        r = submit(stack.base, {"provider": "bfl", "prompt": "a cat", **extra})
        assert r.status_code == 422, r.text
        assert field in r.json()["error"]["message"], (field, r.text)
    state = stack.sim_state()
    assert state["submissions"] == 0 and state["rejected"] == 0


def test_bfl_429_is_retried_after_retry_after(make_stack: Any) -> None:
    stack: Stack = make_stack(providers=["bfl"])
    r = submit(stack.base, {"provider": "bfl", "prompt": "busy [sim:rate_limit=1]"})
    assert r.status_code == 202, r.text
    [task] = wait_tasks(stack.base, [r.json()["id"]], timeout=30)
    assert task["status"] == "archived", task
    state = stack.sim_state()
    assert state["rejected"] == 1  # the 429
    assert state["submissions"] == 1  # then exactly one accepted POST


def test_bfl_duplicate_callbacks_archive_once(make_stack: Any) -> None:
    stack: Stack = make_stack(providers=["bfl"], faults=Faults(delay=0.05, duplicates=3))
    r = submit(stack.base, {"provider": "bfl", "prompt": "three copies"})
    [task] = wait_tasks(stack.base, [r.json()["id"]], timeout=30)
    assert task["status"] == "archived"
    assert len(task["objects"]) == 1
    assert stack.sim.callbacks_sent >= 3
    files = [p for p in (stack.tmp / "archive").rglob("*") if p.is_file()]
    assert len(files) == 3  # one image, its .json and .xmp sidecars


def test_bfl_expired_result_url_fails_as_expired(make_stack: Any) -> None:
    """The sample URL states its own expiry (se=): a URL already dead is not fetched forever."""
    stack: Stack = make_stack(providers=["bfl"], faults=Faults(delay=0.05, url_ttl=-5.0))
    r = submit(stack.base, {"provider": "bfl", "prompt": "too late"})
    [task] = wait_tasks(stack.base, [r.json()["id"]], timeout=30)
    assert task["status"] == "failed"
    assert task["failure"]["reason"] == "expired"


def test_bfl_callback_with_bad_signature_is_refused(make_stack: Any) -> None:
    stack: Stack = make_stack(providers=["bfl"], faults=Faults(delay=0.05))
    r = submit(stack.base, {"provider": "bfl", "prompt": "forged [sim:signature=bad]"})
    task_id = r.json()["id"]
    deadline = time.monotonic() + 10
    while stack.sim.callbacks_sent < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.sim.callbacks_sent >= 1
    with stack.client() as client:
        task = client.get(f"/v1/tasks/{task_id}").json()
        assert task["status"] == "submitted"
        metrics = client.get("/metrics").text
    refused = [
        line
        for line in metrics.splitlines()
        if line.startswith("receiver_verification_failures_total{")
        and 'provider="bfl"' in line
        and 'cause="signature"' in line
    ]
    assert refused and float(refused[0].rsplit(" ", 1)[1]) >= 1
