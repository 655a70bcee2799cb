"""End to end: Vtrix over real HTTP against a simulator written from the gateway's own client.

The simulator takes only the envelope ``{"model", "input": [{"params"}]}``, serves tasks at
``/model/v1/generation/task/{id}`` and calls back unsigned (nothing is published). The receiver
authenticates the callback by its URL token and takes the outcome from a read of the task.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx

from receiver.signatures import hook_token
from tests.e2e.conftest import Stack
from tests.helpers import submit, wait_tasks


def _sidecar(task: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(Path(task["objects"][0]["sidecar_uri"]).read_text()))


def _wait_sim(stack: Stack, pid: str, status: str = "succeeded") -> None:
    deadline = time.monotonic() + 20
    while stack.sim.tasks[pid].status != status:
        assert time.monotonic() < deadline, stack.sim.tasks[pid].status
        time.sleep(0.05)


def test_vtrix_unsigned_callback_is_confirmed_by_a_read_then_archived(make_stack: Any) -> None:
    stack: Stack = make_stack(providers=["vtrix"])
    r = submit(
        stack.base,
        {
            "provider": "vtrix",
            "model": "flux_2_max",
            "prompt": "harbour at night [sim:extra_content=1]",
            "params": {"seed": 77, "output_format": "png", "width": 128, "height": 96},
        },
    )
    assert r.status_code == 202, r.text
    [task] = wait_tasks(stack.base, [r.json()["id"]], timeout=30)
    assert task["status"] == "archived", task
    sim_task = stack.sim.tasks[task["provider_task_id"]]
    # The envelope reached the simulator (it refuses a flat body) with our webhook inside.
    assert sim_task.params["seed"] == 77 and sim_task.extra["model"] == "flux_2_max"
    assert sim_task.webhook_url and "/v1/hooks/vtrix/" in sim_task.webhook_url
    assert sim_task.extra["signature"] == "none"  # the callback carried no signature at all
    assert stack.sim.callbacks_sent >= 1
    assert sim_task.extra["reads"] >= 1  # the outcome came from a read of the task
    # Only the image item is archived (the audio item beside it is not).
    assert len(task["objects"]) == 1
    image = Path(task["objects"][0]["uri"]).read_bytes()
    assert hashlib.sha256(image).hexdigest() == hashlib.sha256(sim_task.images[0]).hexdigest()
    side = _sidecar(task)
    assert side["provider"] == "vtrix" and side["model"] == "flux_2_max"
    assert side["cost"] == "0.07" == task["cost"]
    assert side["usage"] == {"cost": "0.07", "quantity": 1, "unit_price": "0.07"}


def test_vtrix_forged_callback_archives_only_what_the_api_says(make_stack: Any) -> None:
    """A body with a valid token but another image URL: the API's image is archived, and the
    forged URL is never fetched."""
    stack: Stack = make_stack(providers=["vtrix"])
    decoy = submit(stack.base, {"provider": "vtrix", "prompt": "decoy image"}).json()
    [decoy] = wait_tasks(stack.base, [decoy["id"]], timeout=30)
    decoy_sim = stack.sim.tasks[decoy["provider_task_id"]]
    decoy_downloads = decoy_sim.downloads

    r = submit(stack.base, {"provider": "vtrix", "prompt": "the real one [sim:no_callback=1]"})
    assert r.status_code == 202, r.text
    task_id, pid = r.json()["id"], r.json()["provider_task_id"]
    _wait_sim(stack, pid)
    forged = {
        "id": pid,
        "status": "completed",
        "model": "flux_2_max",
        "output": [{"content": [{"type": "image", "url": decoy_sim.urls[0]}]}],
        "usage": {"cost": "0.00", "quantity": 1, "unit_price": "0.00"},
    }
    token = hook_token(stack.settings.secret_keys, task_id, "vtrix")
    hook = httpx.post(f"{stack.base}/v1/hooks/vtrix/{token}", json=forged, timeout=10)
    assert hook.status_code == 200, hook.text
    # The callback grace is 120 s: archiving within the wait below came from this callback.
    [task] = wait_tasks(stack.base, [task_id], timeout=20)
    assert task["status"] == "archived", task
    real = stack.sim.tasks[pid]
    assert real.extra["reads"] >= 1
    archived = Path(task["objects"][0]["uri"]).read_bytes()
    assert hashlib.sha256(archived).digest() == hashlib.sha256(real.images[0]).digest()
    assert archived != decoy_sim.images[0]
    assert decoy_sim.downloads == decoy_downloads  # the forged URL was never fetched
    side = _sidecar(task)
    assert side["source_url"].split("/files/")[1].startswith(pid)
    assert side["cost"] == "0.07"  # the API's usage, not the body's


def test_vtrix_forged_failure_does_not_fail_a_task(make_stack: Any) -> None:
    """A forged "failed" body for a task the API shows running changes nothing."""
    stack: Stack = make_stack(providers=["vtrix"])
    r = submit(stack.base, {"provider": "vtrix", "prompt": "slow [sim:delay=3][sim:no_callback=1]"})
    task_id, pid = r.json()["id"], r.json()["provider_task_id"]
    token = hook_token(stack.settings.secret_keys, task_id, "vtrix")
    body = {"id": pid, "status": "failed", "error": "NSFW content detected"}
    hook = httpx.post(f"{stack.base}/v1/hooks/vtrix/{token}", json=body, timeout=10)
    assert hook.status_code == 200 and hook.json()["status"] == "accepted"
    got = stack.client().get(f"/v1/tasks/{task_id}").json()
    assert got["status"] == "submitted"
    [task] = wait_tasks(stack.base, [task_id], timeout=30)
    assert task["status"] == "archived"


def test_vtrix_each_error_form_maps_to_its_reason(make_stack: Any) -> None:
    stack: Stack = make_stack(providers=["vtrix"])
    ids: dict[str, tuple[str, str]] = {}
    for form in ("string", "message", "error_message"):
        for outcome in ("failed", "moderated"):
            prompt = f"x [sim:outcome={outcome}][sim:error_form={form}]"
            r = submit(stack.base, {"provider": "vtrix", "prompt": prompt})
            assert r.status_code == 202, r.text
            ids[r.json()["id"]] = (form, outcome)
    tasks = wait_tasks(stack.base, list(ids), timeout=30)
    for task in tasks:
        form, outcome = ids[task["id"]]
        assert task["status"] == "failed", (form, outcome, task)
        want = "moderated" if outcome == "moderated" else "provider_error"
        assert task["failure"]["reason"] == want, (form, outcome, task["failure"])
        if outcome == "moderated":
            assert "NSFW" in task["failure"]["message"]
        else:
            assert "out of capacity" in task["failure"]["message"]


def test_vtrix_invalid_params_are_422_and_never_sent(make_stack: Any) -> None:
    stack: Stack = make_stack(providers=["vtrix"])
    for params, field in (
        ({"output_format": "webp"}, "params.output_format"),
        ({"prompt_upsampling": True}, "params.prompt_upsampling"),
        ({"safety_tolerance": 6}, "params.safety_tolerance"),
    ):
        bad = submit(stack.base, {"provider": "vtrix", "prompt": "a cat", "params": params})
        assert bad.status_code == 422, bad.text
        assert field in bad.json()["error"]["message"]
    assert stack.sim_state()["submissions"] == 0
