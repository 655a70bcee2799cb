"""Issue 4's command line against a live server, and a result URL found expired before
archiving: refreshed through the provider where it can, else the task fails ``expired``."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from tests.e2e.test_application_side import NOTIFY_SECRET, Sink, sink  # noqa: F401
from tests.helpers import API_KEY, submit, wait_tasks


def cli(base: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RECEIVER_URL": base, "RECEIVER_API_KEY": API_KEY}
    env.pop("RECEIVER_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_submit_wait_status_tasks_replay_redeliver(make_stack: Any, sink: Sink) -> None:  # noqa: F811
    stack = make_stack(notify={"secret": NOTIFY_SECRET, "allowed_networks": ["127.0.0.0/8"]})
    done = cli(
        stack.base,
        "submit",
        "--provider",
        "simulated",
        "--prompt",
        "a kite",
        "--param",
        "width=96",
        "--notify-url",
        sink.url,
        "--wait",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    task_id = out.split()[1]
    assert out.startswith(f"submitted {task_id} to simulated")
    assert "… archived" in out and f"/{task_id}/0.png" in out and "sidecar" in out
    [task] = wait_tasks(stack.base, [task_id])
    path = task["objects"][0]["uri"]
    assert os.path.exists(path) and path in out

    status = cli(stack.base, "status", task_id)
    assert status.returncode == 0 and f"task {task_id}: archived" in status.stdout

    table = cli(stack.base, "tasks", "--status", "archived")
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["ID", "PROVIDER", "STATUS", "IMAGES", "CREATED"]
    assert any(row.split()[:4] == [task_id, "simulated", "archived", "1"] for row in rows)

    replay = cli(stack.base, "replay", task_id, "--wait")
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert "queued for archiving again" in replay.stdout and "archived" in replay.stdout

    before = len(sink.delivered())
    redeliver = cli(stack.base, "redeliver", task_id)
    assert redeliver.returncode == 0 and sink.url in redeliver.stdout
    wait_for = before + 1
    for _ in range(100):
        if len(sink.delivered()) >= wait_for:
            break
        time.sleep(0.1)
    assert len(sink.delivered()) >= wait_for

    missing = cli(stack.base, "status", "tsk_nope")
    assert missing.returncode != 0 and "404" in missing.stderr + missing.stdout
    assert "Traceback" not in missing.stderr


def test_expired_result_url_is_refreshed_by_polling(make_stack: Any) -> None:
    stack = make_stack()
    r = submit(
        stack.base,
        {"provider": "simulated", "prompt": "x [sim:url_ttl=-5][sim:refreshed_url_ttl=600]"},
    )
    assert r.status_code == 202, r.text
    [task] = wait_tasks(stack.base, [r.json()["id"]], timeout=30)
    assert task["status"] == "archived", task
    sidecar = open(task["objects"][0]["sidecar_uri"]).read()
    assert "expires=" not in sidecar  # the source URL is kept without its query


def test_expired_result_url_that_cannot_be_refreshed_fails_expired(make_stack: Any) -> None:
    stack = make_stack()
    r = submit(
        stack.base,
        {"provider": "simulated", "prompt": "x [sim:url_ttl=-5][sim:refreshed_url_ttl=-5]"},
    )
    assert r.status_code == 202, r.text
    [task] = wait_tasks(stack.base, [r.json()["id"]], timeout=30)
    assert task["status"] == "failed" and task["failure"]["reason"] == "expired", task
