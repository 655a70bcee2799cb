"""APIMart (poll-only), EigenAI (synchronous) and Replicate (webhook), end to end.

Each provider's simulator speaks its wire format over real HTTP; the receiver must submit,
learn the result the provider's way (reconciler poll, submit response, signed webhook),
archive image + sidecar, and turn refusals into the documented failures. Stacks take about a
second to start, so each test runs several tasks side by side on one stack.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver.ledger import open_ledger
from receiver.signatures import hook_token, standard_sign
from receiver.simulator import Faults
from tests.e2e.conftest import Stack
from tests.helpers import SECRET


class Env:
    """A stack plus one HTTP client for the receiver and one for the simulator: a new
    client costs ~0.1 s (TLS context), too much to pay per request."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.api = stack.client()
        self.sim = httpx.Client(base_url=stack.sim_url, timeout=10.0)

    def close(self) -> None:
        self.api.close()
        self.sim.close()

    def submit(self, body: dict[str, Any]) -> httpx.Response:
        return self.api.post("/v1/tasks", json=body)

    def create(self, body: dict[str, Any]) -> str:
        response = self.submit(body)
        assert response.status_code == 202, response.text
        task_id: str = response.json()["id"]
        return task_id

    def task(self, task_id: str) -> dict[str, Any]:
        data: dict[str, Any] = self.api.get(f"/v1/tasks/{task_id}").json()
        return data

    def wait(self, ids: list[str], timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            tasks = [self.task(i) for i in ids]
            if all(t["status"] in ("archived", "failed") for t in tasks):
                return tasks
            assert time.monotonic() < deadline, {t["id"]: t["status"] for t in tasks}
            time.sleep(0.05)

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = self.sim.get("/_sim/state").json()
        return data

    def check_archived(self, task: dict[str, Any]) -> dict[str, Any]:
        """The stored bytes are the simulator's, and each sidecar describes its image."""
        assert task["status"] == "archived", task
        served = self.state()["tasks"][task["provider_task_id"]]["sha256"]
        assert served and len(task["objects"]) == len(served)
        for index, obj in enumerate(task["objects"]):
            stored = hashlib.sha256(Path(obj["uri"]).read_bytes()).hexdigest()
            assert stored == served[index] == obj["sha256"]
            side = sidecar(task, index)
            assert side["sha256"] == stored and side["task_id"] == task["id"]
            assert side["index"] == index and side["provider"] == task["provider"]
            assert side["provider_task_id"] == task["provider_task_id"]
        return sidecar(task)

    def refused(self, body: dict[str, Any], field: str) -> None:
        """A 422 naming ``field``, and the simulator never heard of the request."""
        before = self.state()
        response = self.submit(body)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "validation_failed"
        assert error["message"].startswith(f"{field}:"), error
        after = self.state()
        assert after["submissions"] == before["submissions"], body
        assert after["rejected"] == before["rejected"], body
        assert after["tasks"] == before["tasks"], body


def sidecar(task: dict[str, Any], index: int = 0) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(Path(task["objects"][index]["sidecar_uri"]).read_text())
    return data


@pytest.fixture
def env(make_stack: Any) -> Iterator[Callable[..., Env]]:
    opened: list[Env] = []

    def make(*providers: str, **config: Any) -> Env:
        stack: Stack = make_stack(Faults(delay=0.05), providers=list(providers), **config)
        if "apimart" in providers:
            # APIMart never calls back: poll soon after submission and often. The value is
            # read at every scheduling, so setting it before the first task is enough.
            stack.settings.providers["apimart"].poll_interval = 0.1
        opened.append(Env(stack))
        return opened[-1]

    yield make
    for item in opened:
        item.close()


FAILURES = {
    "moderated": "Content flagged by the safety filter",
    "failed": "Generation failed: out of capacity",
}


# --- APIMart: nobody calls back; the reconciler polls ------------------------------------------


def test_apimart_tasks_are_polled_then_archived_or_failed(env: Callable[..., Env]) -> None:
    e = env("apimart", worker={"reconcile_interval": 0.1})
    bodies: list[dict[str, Any]] = [
        {
            "provider": "apimart",
            "model": "flux-2-pro",
            "prompt": "A blue cat on the grass",
            "params": {"resolution": "1K", "size": "16:9"},
        },
        {
            "provider": "apimart",
            "model": "flux-kontext-pro",
            "prompt": "Change hair color to blue",
            "params": {"image_urls": ["https://example.com/input.png"], "size": "21:9"},
        },
        {"provider": "apimart", "prompt": "the default model"},
        {"provider": "apimart", "prompt": "[sim:outcome=moderated] x"},
        {"provider": "apimart", "prompt": "[sim:outcome=failed] y"},
    ]
    ids = [e.create(body) for body in bodies]
    *done, moderated, failed = e.wait(ids)
    # The simulator alternates ``url`` as a string and as a list: both shapes are here.
    for task, model in zip(done, ["flux-2-pro", "flux-kontext-pro", "flux-2-flex"], strict=True):
        side = e.check_archived(task)
        assert side["model"] == model
        assert side["source_url"].startswith(e.stack.sim_url)
        assert side["seed"] is None and side["cost"] is None  # APIMart reports neither
    assert sidecar(done[1])["digital_source_type"] == "compositeWithTrainedAlgorithmicMedia"
    assert moderated["failure"] == {"reason": "moderated", "message": FAILURES["moderated"]}
    assert failed["failure"] == {"reason": "provider_error", "message": FAILURES["failed"]}
    # Nothing was ever called back, so only polling can have found these results.
    assert e.stack.sim.callbacks_sent == 0
    assert len(list((e.stack.tmp / "archive").rglob("*.png"))) == 3


# --- EigenAI: the submit response is the image -------------------------------------------------


def test_eigenai_each_answer_shape_is_archived_or_kept(env: Callable[..., Env]) -> None:
    """An image body, a JSON body with a data URL, a JSON body with an image URL: archived.
    A JSON body in an unknown shape: failed ``unparsed_response``, the raw answer kept."""
    e = env("eigenai")
    base = {"provider": "eigenai", "model": "flux-1-schnell"}
    binary = e.create(
        {**base, "prompt": "a lighthouse [sim:answer=binary]", "params": {"seed": 1234}}
    )
    data_url = e.create({**base, "prompt": "a harbour [sim:answer=data_url]"})
    by_url = e.create({**base, "prompt": "a cliff [sim:answer=url]"})
    unknown = e.create({**base, "prompt": "a reef [sim:answer=unknown]"})
    refusals = [
        e.create({**base, "prompt": f"[sim:outcome={o}] p"}) for o in ("moderated", "failed")
    ]
    first, second, third, fourth, moderated, failed = e.wait(
        [binary, data_url, by_url, unknown, *refusals]
    )
    state = e.state()["tasks"]
    # No binary_response unless asked: it is documented for editing only.
    assert all("binary_response" not in t["params"] for t in state.values())

    side = e.check_archived(first)  # x-request-id names the simulator task of the bytes
    assert side["model"] == "flux-1-schnell" and side["seed"] == 1234
    assert side["source_url"] == "inline:eigenai"
    side = e.check_archived(second)
    assert side["source_url"] == "inline:eigenai"
    assert e.stack.sim.downloads == 1  # only the URL answer was fetched
    side = e.check_archived(third)
    assert side["source_url"].startswith(e.stack.sim_url + "/files/")
    assert side["seed"] == state[third["provider_task_id"]]["seed"]

    assert fourth["status"] == "failed"
    assert fourth["failure"]["reason"] == "unparsed_response"
    kept = asyncio.run(_raw(e.stack, fourth["id"]))
    assert kept is not None
    raw, content_type = kept
    assert content_type == "application/json"
    assert json.loads(raw)["result"]["artifact"] == fourth["provider_task_id"]

    assert moderated["failure"] == {"reason": "moderated", "message": FAILURES["moderated"]}
    assert failed["failure"] == {
        "reason": "provider_error",
        "message": f"eigenai: HTTP 500: {FAILURES['failed']}",
    }


async def _raw(stack: Stack, task_id: str) -> tuple[bytes, str | None] | None:
    ledger = open_ledger(stack.settings.ledger_url)
    await ledger.open()
    try:
        return await ledger.raw_response(task_id)
    finally:
        await ledger.close()


def test_eigenai_editing_uploads_the_source_image_as_multipart(env: Callable[..., Env]) -> None:
    e = env("eigenai")
    source = e.wait([e.create({"provider": "eigenai", "model": "m", "prompt": "source"})])[0]
    source_sim = e.stack.sim.tasks[source["provider_task_id"]]
    # The source image, served over HTTP by the simulator (a public URL in real use).
    url = source_sim.urls[0]
    source_bytes = Path(source["objects"][0]["uri"]).read_bytes()
    assert source_bytes == source_sim.images[0]
    edited = e.create(
        {
            "provider": "eigenai",
            "model": "qwen-image-edit",
            "prompt": "make the sky violet [sim:answer=binary]",
            "params": {
                "mode": "image-editing",
                "image_file": url,
                "num_inference_steps": 20,
                "binary_response": True,
                "weight": "lightning",
            },
        }
    )
    by_path = e.create(
        {
            "provider": "eigenai",
            "model": "qwen-image-edit",
            "prompt": "add a moon",
            "params": {"image_path": "https://images.example/in.png"},
        }
    )
    [task, path_task] = e.wait([edited, by_path])
    e.check_archived(task)
    sim_task = e.stack.sim.tasks[task["provider_task_id"]]
    upload = sim_task.extra["upload"]
    assert upload["field"] == "image_file" and upload["content_type"] == "image/png"
    assert upload["sha256"] == hashlib.sha256(source_bytes).hexdigest()
    assert sim_task.params["mode"] == "image-editing"
    assert sim_task.params["num_inference_steps"] == "20"
    assert sim_task.params["binary_response"] == "true"
    e.check_archived(path_task)
    path_sim = e.stack.sim.tasks[path_task["provider_task_id"]]
    assert path_sim.extra["upload"] == {}
    assert path_sim.params["image_path"] == "https://images.example/in.png"
    assert path_sim.params["mode"] == "image-editing"


# --- Replicate: Standard Webhooks from the account secret ----------------------------------------


def test_replicate_webhooks_archive_or_fail_tasks(env: Callable[..., Env]) -> None:
    e = env("replicate")
    ids = [
        e.create(
            {
                "provider": "replicate",
                "model": "black-forest-labs/flux-schnell",
                "prompt": f"replicate {i}",
                "params": {"input": {"seed": 100 + i}},
            }
        )
        for i in range(2)
    ]
    ids.append(e.create({"provider": "replicate", "prompt": "seed only in the logs"}))
    ids += [
        e.create({"provider": "replicate", "prompt": f"[sim:outcome={o}] p"})
        for o in ("moderated", "failed")
    ]
    *done, moderated, failed = e.wait(ids)
    # The simulator answers ``output`` as a list, then as a lone string: both archived.
    for i, task in enumerate(done[:2]):
        side = e.check_archived(task)
        assert side["model"] == "black-forest-labs/flux-schnell"
        assert side["seed"] == 100 + i and side["cost"] is None  # Replicate has no price
    side = e.check_archived(done[2])
    assert side["model"] == "black-forest-labs/flux-dev"
    assert side["seed"] == e.state()["tasks"][done[2]["provider_task_id"]]["seed"]
    assert moderated["failure"] == {"reason": "moderated", "message": FAILURES["moderated"]}
    assert failed["failure"] == {"reason": "provider_error", "message": FAILURES["failed"]}
    assert e.stack.sim.callbacks_sent >= 5


def test_replicate_forged_callbacks_get_401(env: Callable[..., Env]) -> None:
    e = env("replicate")
    response = e.submit({"provider": "replicate", "prompt": "[sim:no_callback=true] quiet"})
    task = response.json()
    url = f"{e.stack.base}/v1/hooks/replicate/{hook_token([SECRET], task['id'], 'replicate')}"
    body = json.dumps(
        {
            "id": task["provider_task_id"],
            "status": "succeeded",
            "output": [f"{e.stack.sim_url}/files/forged/0.png"],
        }
    ).encode()
    stranger = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    account = e.sim.get(
        "/v1/webhooks/default/secret", headers={"authorization": "Bearer k"}
    ).json()["key"]
    now = int(time.time())

    def signed(secret: str, ts: int, data: bytes = body) -> dict[str, str]:
        msg = f"msg_{os.urandom(6).hex()}"
        return {
            "webhook-id": msg,
            "webhook-timestamp": str(ts),
            "webhook-signature": standard_sign(secret, msg, ts, data),
        }

    cases = {
        "wrong secret": (body, signed(stranger, now)),
        "changed byte": (body.replace(b"succeeded", b"succeedex"), signed(account, now)),
        "stale timestamp": (body, signed(account, now - 3600)),
        "no signature": (body, {}),
    }
    for name, (data, headers) in cases.items():
        refused = e.api.post(url, content=data, headers=headers)
        assert refused.status_code == 401, (name, refused.text)
        assert refused.json()["error"]["code"] == "bad_signature", name
    current = e.task(task["id"])
    assert current["status"] == "submitted" and current["objects"] == []
    # The refusals were real: the same URL with a genuine signature is accepted.
    genuine = json.dumps(
        {"id": task["provider_task_id"], "status": "failed", "error": "genuine failure"}
    ).encode()
    accepted = e.api.post(url, content=genuine, headers=signed(account, now, genuine))
    assert accepted.status_code == 200, accepted.text
    assert e.task(task["id"])["failure"] == {
        "reason": "provider_error",
        "message": "genuine failure",
    }


# --- validation: 422 before any request goes out -------------------------------------------------


def test_bad_parameters_are_422_and_never_reach_the_provider(env: Callable[..., Env]) -> None:
    e = env("apimart", "eigenai", "replicate")
    nine = [f"https://example.com/{i}.png" for i in range(9)]
    two = ["https://a.example/1.png", "https://a.example/2.png"]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"provider": "apimart", "params": {"image_urls": nine}}, "params.image_urls"),
        ({"provider": "apimart", "params": {"size": "5:4"}}, "params.size"),
        ({"provider": "apimart", "model": "flux-2-pro", "params": {"size": "21:9"}}, "params.size"),
        (
            {"provider": "apimart", "model": "flux-kontext-max", "params": {"image_urls": two}},
            "params.image_urls",
        ),
        ({"provider": "apimart", "model": "dall-e-3"}, "model"),
        ({"provider": "eigenai", "model": "m", "params": {"width": 511}}, "params.width"),
        ({"provider": "eigenai", "model": "m", "params": {"width": 2049}}, "params.width"),
        ({"provider": "eigenai", "model": "m", "params": {"height": 4096}}, "params.height"),
        ({"provider": "eigenai"}, "model"),
        ({"provider": "replicate", "params": {"steps": 4}}, "params.steps"),
        ({"provider": "replicate", "params": {"input": {"seed": "abc"}}}, "params.input.seed"),
    ]
    for body, field in cases:
        e.refused({"prompt": "a prompt", **body}, field)
    # The same stack does take a valid task from each provider: the refusals were the checks.
    ok = [
        e.create({"provider": "apimart", "prompt": "ok", "params": {"image_urls": nine[:8]}}),
        e.create({"provider": "eigenai", "model": "m", "prompt": "ok", "params": {"width": 2048}}),
        e.create({"provider": "replicate", "prompt": "ok", "params": {"input": {"seed": 5}}}),
    ]
    assert e.state()["submissions"] == 3
    assert [t["status"] for t in e.wait(ok)] == ["archived"] * 3
    # Had one gone out, the state would show it: the simulator refuses it and counts that.
    direct = e.sim.post(
        "/v1/images/generations",
        json={"model": "flux-2-pro", "prompt": "x", "size": "21:9"},
        headers={"authorization": "Bearer k"},
    )
    assert direct.status_code == 400 and "21:9" in direct.json()["error"]["message"]
    assert e.state()["rejected"] == 1
