"""The console in a real browser: Playwright driving Debian's Chromium against
`receiver serve` and `receiver simulate` running as processes.

Skipped, with the reason, where /usr/bin/chromium is missing (``apt-get install chromium``;
.ci/run installs it). Set UPDATE_SCREENSHOTS=docs to refresh the README's screenshots."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import API_KEY, Proc, base_config, free_port, submit, wait_http, wait_tasks

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed: apt-get install chromium", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser
READ_ONLY_KEY = "read-only-console-key-0123"
EVIL = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PROMPTS = (
    "a lighthouse on a basalt cliff at dawn, film grain",
    "a paper crane folded from a subway map",
    "a greenhouse on the moon, soft studio light",
    "a fox made of autumn leaves, macro photograph",
    "a lighthouse keeper's kitchen, warm lamplight",
    "a glass orchard in the rain",
)


@dataclass
class Served:
    base: str
    sim_url: str
    tmp: Path
    archived: list[str]

    def task(self, prompt: str, **faults: Any) -> str:
        params: dict[str, Any] = {"width": 256, "height": 192}
        if faults:
            params["faults"] = faults
        response = submit(self.base, {"provider": "simulated", "prompt": prompt, "params": params})
        assert response.status_code == 202, response.text
        return str(response.json()["id"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("console")
    sim_port, port = free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    conf = base_config(
        tmp,
        public_url=f"http://127.0.0.1:{port}",
        providers={"simulated": {"base_url": sim_url}},
        console={"read_only_keys": [READ_ONLY_KEY]},
        log_level="info",  # serve.log explains a failure
    )
    conf["worker"]["max_attempts"] = 1  # one refused download fails a task: fetch_failed
    path = tmp / "receiver.toml"
    from tests.helpers import to_toml

    path.write_text(to_toml(conf))
    sim = Proc(["simulate", "--port", str(sim_port), "--delay", "0.05"], tmp / "sim.log").start()
    server = Proc(["serve", "--port", str(port), "--config", str(path)], tmp / "serve.log").start()
    try:
        wait_http(f"{sim_url}/_sim/state", proc=sim.proc)
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=server.proc)
        stack = Served(f"http://127.0.0.1:{port}", sim_url, tmp, [])
        ids = [stack.task(p) for p in PROMPTS]
        ids.append(stack.task(EVIL))
        wait_tasks(stack.base, ids, final=("archived",))
        stack.archived = ids
        yield stack
    finally:
        server.stop()
        sim.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as play:
        found = play.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield found
        found.close()


def sign_in(browser: Any, base: str, key: str = API_KEY) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.goto(f"{base}/ui/")
    assert page.url.startswith(f"{base}/ui/login")
    page.fill("#api_key", key)
    page.click("button[type=submit]")
    page.wait_for_selector("#grid")
    return page


def test_sign_in_and_thumbnails_render(served: Served, browser: Any) -> None:
    page = sign_in(browser, served.base)
    for task_id in served.archived:
        page.wait_for_selector(f'article[data-id="{task_id}"][data-status="archived"] img')
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#grid img'))"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    widths = page.eval_on_selector_all("#grid img", "imgs => imgs.map(i => i.naturalWidth)")
    assert len(widths) >= len(served.archived) and all(w > 0 for w in widths)
    page.context.close()


def test_filter_and_search(served: Served, browser: Any) -> None:
    page = sign_in(browser, served.base)
    page.fill("input[name=q]", "lighthouse")
    page.click(".filters button[type=submit]")
    page.wait_for_url(re.compile(r".*q=lighthouse.*"))
    prompts = page.eval_on_selector_all("#grid .prompt", "ps => ps.map(p => p.textContent)")
    assert len(prompts) == 2 and all("lighthouse" in p for p in prompts)
    page.select_option("select[name=status]", "failed")
    page.click(".filters button[type=submit]")
    page.wait_for_url(re.compile(r".*status=failed.*"))
    assert page.eval_on_selector_all("#grid article", "a => a.length") == 0
    assert page.is_visible("#empty")
    page.context.close()


def test_a_task_appears_and_turns_archived_live(served: Served, browser: Any) -> None:
    page = sign_in(browser, served.base)
    page.evaluate("window.__sameDocument = true")
    task_id = served.task("a kite appearing live", delay=3)
    card = page.wait_for_selector(f'article[data-id="{task_id}"]', timeout=30000)
    assert card.get_attribute("data-status") in ("submitted", "completed")
    page.wait_for_selector(f'article[data-id="{task_id}"][data-status="archived"] img')
    assert page.evaluate("window.__sameDocument") is True  # updated in place, not reloaded
    # The task page follows its own task too.
    second = served.task("a kite watched on its own page", delay=3)
    page.goto(f"{served.base}/ui/tasks/{second}")
    page.evaluate("window.__sameDocument = true")
    assert page.inner_text("#task-status") in ("submitted", "completed")
    page.wait_for_function(
        "() => document.getElementById('task-status').textContent === 'archived'",
        timeout=30000,
    )
    page.wait_for_selector("img.full")
    assert page.evaluate("window.__sameDocument") is True
    assert page.evaluate("document.querySelector('img.full').naturalWidth") == 256
    page.context.close()


def test_bulk_replay_of_failed_tasks(served: Served, browser: Any) -> None:
    # Each task's first download is refused: with one attempt allowed, fetch_failed.
    ids = [served.task(f"zeppelin over the harbour {i}", download_5xx=1) for i in range(3)]
    tasks = wait_tasks(served.base, ids, final=("failed",))
    assert {t["failure"]["reason"] for t in tasks} == {"fetch_failed"}
    page = sign_in(browser, served.base)
    page.goto(f"{served.base}/ui/?status=failed&reason=fetch_failed&q=zeppelin")
    assert page.eval_on_selector_all("#grid article", "a => a.length") == 3
    page.click("#bulk-replay")
    page.wait_for_selector("#bulk-count")
    assert "3 tasks" in page.inner_text("h1")
    assert re.search(r"\b3\b", page.inner_text("#bulk-count"))
    page.click("#bulk-confirm")
    page.wait_for_selector("#bulk-result")
    assert page.inner_text("#bulk-result").startswith("3 of 3 tasks")
    page.goto(f"{served.base}/ui/?q=zeppelin")  # they turn archived here, live
    # The ledger first, so a failure says whether the replay or the live page fell short.
    done = wait_tasks(served.base, ids)
    outcome = {t["id"]: (t["status"], t["failure"], t.get("retry")) for t in done}
    assert all(t["status"] == "archived" for t in done), f"{outcome}\n{_log_tail(served)}"
    assert all(len(t["objects"]) == 1 for t in done)
    for task_id in ids:
        page.wait_for_selector(
            f'article[data-id="{task_id}"][data-status="archived"] img', timeout=30000
        )
    page.context.close()


def _log_tail(served: Served, lines: int = 60) -> str:
    """The server's last log lines, for a failure message (the tmp folder is gone after CI)."""
    text = (served.tmp / "serve.log").read_text(errors="replace")
    return "serve.log:\n" + "\n".join(text.splitlines()[-lines:])


def test_refused_without_a_session_or_a_csrf_token(served: Served, browser: Any) -> None:
    stranger = browser.new_context()
    page = stranger.new_page()
    page.goto(f"{served.base}/ui/tasks/{served.archived[0]}")
    assert "/ui/login" in page.url
    refused = stranger.request.post(
        f"{served.base}/ui/bulk", form={"action": "replay", "status": "failed"}
    )
    assert refused.status == 401
    stranger.close()

    page = sign_in(browser, served.base)
    no_token = page.request.post(
        f"{served.base}/ui/bulk",
        form={"action": "replay", "status": "failed", "as_of": str(time.time())},
    )
    assert no_token.status == 403 and "CSRF" in no_token.text()
    forged = page.request.post(
        f"{served.base}/ui/tasks/{served.archived[0]}/replay", form={"csrf": "guess"}
    )
    assert forged.status == 403
    page.context.close()

    reader = sign_in(browser, served.base, READ_ONLY_KEY)
    assert reader.is_visible("text=read-only")
    assert reader.query_selector("#bulk-replay") is None
    reader.context.close()


def test_injected_script_prompt_is_inert(served: Served, browser: Any) -> None:
    page = sign_in(browser, served.base)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    evil = served.archived[-1]
    for path in ("/ui/?q=pwned", f"/ui/tasks/{evil}"):
        page.goto(f"{served.base}{path}")
        page.wait_for_load_state("load")
        assert page.evaluate("window.__pwned") is None
        text = page.inner_text(".prompt-full" if "tasks" in path else "#grid .prompt")
        assert "<script>window.__pwned=1</script>" in text
    assert dialogs == []
    page.context.close()


def test_screenshots(served: Served, browser: Any) -> None:
    """The README's pictures, of the real console (written to docs/ on request)."""
    failed = served.task("a storm over a salt flat, long exposure", outcome="failed")
    wait_tasks(served.base, [failed], final=("failed",))
    context = browser.new_context(viewport={"width": 1280, "height": 760})
    page = context.new_page()
    page.goto(f"{served.base}/ui/login")
    page.fill("#api_key", API_KEY)
    page.click("button[type=submit]")
    page.goto(f"{served.base}/ui/?q=a")  # the tasks with everyday prompts
    page.wait_for_function(
        "() => Array.from(document.querySelectorAll('#grid img'))"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    shots = served.tmp / "shots"
    shots.mkdir(exist_ok=True)
    page.screenshot(path=str(shots / "console-gallery.png"))
    page.goto(f"{served.base}/ui/tasks/{served.archived[0]}")
    page.wait_for_function("() => document.querySelector('img.full').naturalWidth > 0")
    page.screenshot(path=str(shots / "console-task.png"), full_page=True)
    context.close()
    for name in ("console-gallery.png", "console-task.png"):
        assert (shots / name).stat().st_size > 10_000
    target = os.environ.get("UPDATE_SCREENSHOTS")
    if target:
        for name in ("console-gallery.png", "console-task.png"):
            shutil.copy(shots / name, Path(target) / name)


def test_api_key_alone_reaches_no_console_page(served: Served) -> None:
    response = httpx.get(
        f"{served.base}/ui/", headers={"authorization": f"Bearer {API_KEY}"}, timeout=10
    )
    assert response.status_code == 303
