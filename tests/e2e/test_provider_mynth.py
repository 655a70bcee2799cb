"""Mynth end to end: the receiver and the simulated Mynth as real servers on loopback, talking
Mynth's wire format (``POST /image/generate``, unsigned custom webhooks in both body shapes,
signed account webhooks, ``GET /tasks/{id}/result``)."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.app import create_app
from receiver.config import Settings
from receiver.simulator import Faults, build_simulator
from tests.e2e.conftest import ServerThread, Stack
from tests.helpers import API_KEY, base_config, free_port, submit, wait_tasks

ACCOUNT_SECRET = "wbs_e2e_account_secret_0123456789"


def archived_files(stack: Stack, task_id: str) -> dict[str, Path]:
    found = (stack.tmp / "archive").rglob("*")
    return {p.name: p for p in found if p.is_file() and p.parent.name == task_id}


def test_submit_callback_archive_with_model_seed_and_cost(make_stack: Any) -> None:
    """Both body shapes: each task archived once, the bytes the simulator served, and a
    sidecar carrying Mynth's resolved model, the seed and the task's cost."""
    stack: Stack = make_stack(providers=["mynth"])
    ids = []
    for shape, count in (("standard", 2), ("legacy", 1)):
        r = submit(
            stack.base,
            {
                "provider": "mynth",
                "prompt": f"[sim:shape={shape}] a cat in a teacup",
                "params": {"count": count, "negative_prompt": "dogs"},
                "metadata": {"shape": shape},
            },
        )
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    tasks = wait_tasks(stack.base, ids, timeout=30)
    assert [t["status"] for t in tasks] == ["archived", "archived"], tasks
    state = stack.sim_state()["tasks"]
    for task, count in zip(tasks, (2, 1), strict=True):
        sim_task = state[task["provider_task_id"]]
        assert sim_task["params"]["negative_prompt"] == "dogs"
        assert len(task["objects"]) == count == len(sim_task["sha256"])
        assert task["cost"] == f"{0.004 * count:.4f}"
        assert task["seed"] == sim_task["seed"]
        for index, obj in enumerate(task["objects"]):
            body = Path(obj["uri"]).read_bytes()
            assert hashlib.sha256(body).hexdigest() == sim_task["sha256"][index] == obj["sha256"]
            sidecar = json.loads(Path(obj["sidecar_uri"]).read_text())
            assert sidecar["provider"] == "mynth"
            assert sidecar["provider_task_id"] == task["provider_task_id"]
            assert sidecar["model"] == "black-forest-labs/flux.2-dev"  # "auto", resolved
            assert sidecar["seed"] == sim_task["seed"]
            assert sidecar["cost"] == f"{0.004 * count:.4f}"
            assert sidecar["negative_prompt"] == "dogs"
            assert sidecar["metadata"] == task["metadata"]
        assert sorted(archived_files(stack, task["id"])) == sorted(
            [f"{i}.png{ext}" for i in range(count) for ext in ("", ".json", ".xmp")]
        )


def test_moderated_task_fails_with_reason_moderated(make_stack: Any) -> None:
    stack: Stack = make_stack(providers=["mynth"])
    ids = []
    for shape in ("standard", "legacy"):
        body = {"provider": "mynth", "prompt": f"[sim:outcome=moderated][sim:shape={shape}] x"}
        ids.append(submit(stack.base, body).json()["id"])
    for task in wait_tasks(stack.base, ids, timeout=30):
        assert task["status"] == "failed"
        assert task["failure"]["reason"] == "moderated"
        assert "flagged" in task["failure"]["message"]
        assert task["objects"] == []
    assert not list((stack.tmp / "archive").rglob("*.png"))


def test_provider_failures_fail_the_task(make_stack: Any) -> None:
    """A failed generation, a completed task whose every image failed, and a destination slug
    the Mynth account does not have (400 at submission): each fails as a provider error."""
    stack: Stack = make_stack(providers=["mynth"])
    bodies: list[dict[str, Any]] = [
        {"prompt": "[sim:outcome=failed][sim:shape=legacy] x"},
        {"prompt": "[sim:failed_images=2] x", "params": {"count": 2}},
        {"prompt": "x", "params": {"destination": "not-configured"}},
    ]
    ids = [submit(stack.base, {"provider": "mynth", **b}).json()["id"] for b in bodies]
    failed, empty, refused = wait_tasks(stack.base, ids, timeout=30)
    for task in (failed, empty, refused):
        assert task["status"] == "failed" and task["failure"]["reason"] == "provider_error"
        assert task["objects"] == []
    assert "generation_failed" in failed["failure"]["message"]
    assert "Image generation failed" in empty["failure"]["message"]
    assert "400" in refused["failure"]["message"] and refused["provider_task_id"] is None
    assert stack.sim_state()["rejected"] == 1


VALIDATION_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("x" * 8193, {}, "prompt"),
    ("ok", {"count": 21}, "params.count"),
    ("ok", {"inputs": [f"https://example.com/{i}.png" for i in range(21)]}, "params.inputs"),
    ("ok", {"negative_prompt": "n" * 8193}, "params.negative_prompt"),
    ("ok", {"destination": "no spaces allowed"}, "params.destination"),
    ("ok", {"width": 512}, "params.width"),
]


def test_out_of_limit_requests_are_422_and_never_reach_mynth(make_stack: Any) -> None:
    stack: Stack = make_stack(providers=["mynth"])
    for prompt, params, field in VALIDATION_CASES:
        r = submit(stack.base, {"provider": "mynth", "prompt": prompt, "params": params})
        assert r.status_code == 422, (field, r.text)
        assert r.json()["error"]["code"] == "validation_failed"
        assert r.json()["error"]["message"].startswith(f"{field}:"), r.text
    state = stack.sim_state()
    assert state["submissions"] == 0 and state["rejected"] == 0 and state["tasks"] == {}
    with stack.client() as client:
        assert client.get("/v1/tasks").json()["tasks"] == []
    # The same stack does reach Mynth with a request inside the limits.
    ok = submit(stack.base, {"provider": "mynth", "prompt": "ok", "params": {"count": 20}})
    assert ok.status_code == 202, ok.text
    assert stack.sim_state()["submissions"] == 1


def test_mynth_url_is_preferred_and_failed_images_are_skipped(make_stack: Any) -> None:
    """With a Mynth destination each image's ``url`` points at the account's own storage
    (not served by the simulator): only ``mynth_url`` can be archived. The first of three
    images fails on Mynth's side and is skipped."""
    stack: Stack = make_stack(providers=["mynth"])
    r = submit(
        stack.base,
        {
            "provider": "mynth",
            "prompt": "[sim:failed_images=1] three cats",
            "params": {"count": 3, "destination": "bunny-prod"},
        },
    )
    assert r.status_code == 202, r.text
    [task] = wait_tasks(stack.base, [r.json()["id"]], timeout=30)
    assert task["status"] == "archived", task
    served = stack.sim_state()["tasks"][task["provider_task_id"]]["sha256"]
    assert [o["sha256"] for o in task["objects"]] == served[1:]
    for obj in task["objects"]:
        sidecar = json.loads(Path(obj["sidecar_uri"]).read_text())
        assert "/files/" in sidecar["source_url"]  # the mynth_url, not /destinations/


def test_duplicate_callbacks_archive_once(make_stack: Any) -> None:
    stack: Stack = make_stack(Faults(delay=0.05, duplicates=4), providers=["mynth"])
    ids = [
        submit(stack.base, {"provider": "mynth", "prompt": f"[sim:shape={s}] dup"}).json()["id"]
        for s in ("standard", "legacy")
    ]
    tasks = wait_tasks(stack.base, ids, timeout=30)
    assert [t["status"] for t in tasks] == ["archived", "archived"]
    deadline = time.monotonic() + 10
    while stack.sim.callbacks_sent < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stack.sim.callbacks_sent >= 8
    for task in tasks:
        assert sorted(archived_files(stack, task["id"])) == ["0.png", "0.png.json", "0.png.xmp"]
        events = stack.client().get(f"/v1/tasks/{task['id']}/events").text
        assert events.count('"completed"') <= 1


# --- stacks with Mynth settings ---------------------------------------------------------------


@pytest.fixture
def mynth_stack(tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Like ``make_stack`` but with ``[providers.mynth]`` settings (grace, account secret)."""
    threads: list[ServerThread] = []

    def make(**mynth: Any) -> Stack:
        thread = ServerThread()
        threads.append(thread)
        sim_port, port = free_port(), free_port()
        sim_url = f"http://127.0.0.1:{sim_port}"
        conf = base_config(tmp_path, public_url=f"http://127.0.0.1:{port}")
        conf["providers"] = {"mynth": {"base_url": sim_url, "api_key": "sim-key", **mynth}}
        settings = Settings.model_validate(conf)
        sim_app, sim = build_simulator(sim_url, Faults(delay=0.05), ["mynth"])
        thread.serve(sim_app, sim_port)
        thread.serve(create_app(settings), port)
        return Stack(f"http://127.0.0.1:{port}", sim_url, sim, settings, tmp_path)

    yield make
    for thread in threads:
        thread.stop()


def test_lost_callback_is_recovered_by_polling_the_result(mynth_stack: Any) -> None:
    stack: Stack = mynth_stack(callback_grace_seconds=0.2)
    r = submit(
        stack.base, {"provider": "mynth", "prompt": "[sim:no_callback=true] lost", "params": {}}
    )
    [task] = wait_tasks(stack.base, [r.json()["id"]], timeout=30)
    assert task["status"] == "archived", task
    assert stack.sim.callbacks_sent == 0
    served = stack.sim_state()["tasks"][task["provider_task_id"]]["sha256"]
    assert [o["sha256"] for o in task["objects"]] == served


def _adopted(stack: Stack, provider_task_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with stack.client() as client:
        while time.monotonic() < deadline:
            for task in client.get("/v1/tasks", params={"provider": "mynth"}).json()["tasks"]:
                if task["provider_task_id"] == provider_task_id and task["status"] in (
                    "archived",
                    "failed",
                ):
                    return dict(task)
            time.sleep(0.1)
    raise TimeoutError(provider_task_id)


@pytest.mark.parametrize("scheme", ["standard", "legacy"])
def test_signed_account_webhook_adopts_a_task_submitted_elsewhere(
    mynth_stack: Any, scheme: str
) -> None:
    stack: Stack = mynth_stack(webhook_secret=ACCOUNT_SECRET)
    hook = {"url": f"{stack.base}/v1/hooks/mynth", "secret": ACCOUNT_SECRET, "scheme": scheme}
    assert httpx.post(f"{stack.sim_url}/_sim/mynth/account-webhooks", json=hook).is_success
    # Another application on the same Mynth account submits directly, with no custom URL.
    created = httpx.post(
        f"{stack.sim_url}/image/generate",
        json={"prompt": f"[sim:shape={scheme}] elsewhere", "count": 1},
        headers={"authorization": "Bearer sim-key"},
    )
    assert created.status_code == 201, created.text
    mynth_id = created.json()["data"]["taskId"]
    task = _adopted(stack, mynth_id)
    assert task["status"] == "archived"
    assert task["metadata"] == {"source": "account_webhook"}
    assert [o["sha256"] for o in task["objects"]] == stack.sim_state()["tasks"][mynth_id]["sha256"]


def test_account_webhook_signed_with_another_secret_is_refused(mynth_stack: Any) -> None:
    stack: Stack = mynth_stack(webhook_secret=ACCOUNT_SECRET)
    hook = {"url": f"{stack.base}/v1/hooks/mynth", "secret": "wbs_not_ours", "scheme": "legacy"}
    assert httpx.post(f"{stack.sim_url}/_sim/mynth/account-webhooks", json=hook).is_success
    created = httpx.post(
        f"{stack.sim_url}/image/generate",
        json={"prompt": "forged", "count": 1},
        headers={"authorization": "Bearer sim-key"},
    )
    mynth_id = created.json()["data"]["taskId"]
    deadline = time.monotonic() + 10
    while stack.sim.callbacks_sent < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    with stack.client() as client:
        listed = client.get("/v1/tasks", params={"provider": "mynth"}).json()["tasks"]
    assert [t for t in listed if t["provider_task_id"] == mynth_id] == []
    forged = httpx.post(
        f"{stack.base}/v1/hooks/mynth",
        content=b'{"event":"task.image.generate.completed","task":{"id":"x"},"result":{}}',
        headers={"x-mynth-signature": f"t={int(time.time())},v1={'ab' * 32}"},
    )
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "bad_signature"
    assert API_KEY


def test_sdk_request_forms_and_a_muted_dashboard(mynth_stack: Any) -> None:
    """``webhook.dashboard: false`` keeps the account's webhooks quiet for the task; ``rating:
    true`` and ``output.format: jpg`` (the SDK's forms) pass the simulator's checks; the custom
    URL's unsigned callback is confirmed by a read and the task archived."""
    stack: Stack = mynth_stack(webhook_secret=ACCOUNT_SECRET)
    hook = {"url": f"{stack.base}/v1/hooks/mynth", "secret": ACCOUNT_SECRET, "scheme": "standard"}
    assert httpx.post(f"{stack.sim_url}/_sim/mynth/account-webhooks", json=hook).is_success
    params = {
        "webhook": {"dashboard": False},
        "rating": True,
        "output": {"format": "jpg", "quality": 90},
        "destination": "bunny-prod",
    }
    r = submit(stack.base, {"provider": "mynth", "prompt": "quiet please", "params": params})
    assert r.status_code == 202, r.text
    [task] = wait_tasks(stack.base, [r.json()["id"]], timeout=30)
    assert task["status"] == "archived", task
    sim_task = stack.sim.tasks[task["provider_task_id"]]
    assert sim_task.extra["webhook"] == {
        "dashboard": False,
        "custom": [{"url": sim_task.extra["hooks"][0]}],
    }
    assert stack.sim.callbacks_sent == 1  # the custom URL only; the account hook stayed quiet
    bad = submit(
        stack.base, {"provider": "mynth", "prompt": "x", "params": {"destination": "Bunny"}}
    )
    assert bad.status_code == 422 and "params.destination" in bad.json()["error"]["message"]
