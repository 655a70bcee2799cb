"""The alert rules and the Grafana dashboard in infra/, held against promtool and against what
``/metrics`` really exposes after traffic through the whole path."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "infra" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
DASHBOARD = ROOT / "infra" / "grafana" / "receiver.json"
METRIC = re.compile(r"\breceiver_[a-z0-9_]+\b")

promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool not found: apt-get install prometheus (Debian's package ships it)",
)


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


@promtool
def test_alert_rules_pass_promtool_check() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


@promtool
def test_each_alert_fires_on_its_synthetic_series_and_not_on_a_healthy_one() -> None:
    files = sorted((PROMETHEUS / "tests").glob("*.yml"))
    result = subprocess.run(
        ["promtool", "test", "rules", *(f.name for f in files)],
        cwd=PROMETHEUS / "tests",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files) == len(alerts())


def test_every_alert_has_a_unit_test_file_that_fires_and_one_case_that_stays_quiet() -> None:
    for rule in alerts():
        name = rule["alert"]
        path = PROMETHEUS / "tests" / f"{name}.yml"
        assert path.exists(), f"no promtool test for {name}"
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../alerts.yml"]
        cases = [c for test in doc["tests"] for c in test["alert_rule_test"]]
        assert {c["alertname"] for c in cases} == {name}
        assert any(c["exp_alerts"] for c in cases), f"{name} is never shown firing"
        assert any(not c["exp_alerts"] for c in cases), f"{name} is never shown quiet"


def test_every_alert_says_what_to_do() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    for rule in alerts():
        notes = rule["annotations"]
        assert notes.get("summary") and len(notes.get("action", "")) > 80, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning")
    # What loses data or money, as the issue lists it.
    wanted = {
        "receiver_oldest_unfinished_job_seconds",  # jobs near the result URL lifetime
        "receiver_verification_failures_total",
        "receiver_store_seconds_count",
        "receiver_oldest_notification_seconds",
        "receiver_ledger_transaction_seconds_count",
        "receiver_oldest_submitted_task_seconds",
    }
    used = {m for rule in alerts() for m in METRIC.findall(rule["expr"])}
    assert wanted <= used


async def _traffic_then_scrape() -> str:
    """The whole path in one fresh process (so only this traffic made the series): a task
    submitted over HTTP, a forged and a genuine callback, a store failure then success, the
    notification, a poll, a resubmission, an unknown path; then ``GET /metrics``."""
    from receiver.app import create_app
    from receiver.errors import StoreError
    from receiver.models import NewTask
    from receiver.notify import Notifier
    from receiver.reconciler import Reconciler
    from receiver.testing import API_KEY, memory_runtime
    from receiver.worker import Worker

    auth = {"authorization": f"Bearer {API_KEY}"}
    async with memory_runtime() as rt:
        app = create_app(rt.settings, runtime=rt, background=False)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=rt.settings.public_url) as api:
            created = await api.post(
                "/v1/tasks",
                json={"provider": "simulated", "prompt": "p", "notify_url": "https://app.test/h"},
                headers=auth,
            )
            assert created.status_code == 202, created.text
            task = await rt.ledger.get_task(created.json()["id"])
            assert task is not None
            url = rt.origin.serve_image("https://cdn.example/a.png")
            body = {"id": task.provider_task_id, "status": "succeeded", "images": [{"url": url}]}
            path, headers, raw = rt.callback(task, body)
            forged = {**headers, "webhook-signature": "v1,AAAA"}
            assert (await api.post(path, content=raw, headers=forged)).status_code == 401
            assert (await api.post(path, content=raw, headers=headers)).status_code == 200
            assert (await api.get("/nowhere")).status_code == 404
            rt.store.fail_next(StoreError("the store is down"))
            worker = Worker(rt)
            for _ in range(2):
                for job in await rt.ledger.claim_jobs(rt.owner, 5, 60):
                    await worker.process(job)
                rt.clock.advance(120)
            notifier = Notifier(rt)
            for note in await rt.ledger.claim_notifications(rt.owner, 5, 60):
                assert await notifier.send(note)
            await notifier.http.aclose()
            pending = await rt.submitted_task()
            await rt.ledger.schedule_poll(pending.id, rt.clock.now())
            await rt.ledger.create_task(NewTask("simulated", "orphan", "local"))  # no answer
            rt.clock.advance(200)
            await Reconciler(rt).tick()
            return (await api.get("/metrics")).text


def test_dashboard_and_alerts_use_only_metrics_that_metrics_exposes() -> None:
    code = (
        "import asyncio, sys; from tests.unit.test_alerts import _traffic_then_scrape as f; "
        "sys.stdout.write(asyncio.run(f()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    families = list(text_string_to_metric_families(result.stdout))
    exposed = {sample.name for family in families for sample in family.samples}
    board = {m for expr in dashboard_exprs() for m in METRIC.findall(expr)}
    rules = {m for rule in alerts() for m in METRIC.findall(rule["expr"])}
    assert len(board) > 20
    assert board - exposed == set(), "the dashboard names metrics /metrics does not expose"
    assert rules - exposed == set(), "alert rules name metrics /metrics does not expose"
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("**Metrics** (`GET /metrics`)") : readme.index("**Request ids")]
    named = set(METRIC.findall(table))
    assert len(named) > 20
    assert named - exposed - {f.name for f in families} == set(), "README names unknown metrics"
    # The traffic reached every part of the path the panels show.
    assert 'route="unmatched"' in result.stdout
    assert 'outcome="error"' in result.stdout and 'kind="sidecar"' in result.stdout
    assert "receiver_build_info{python=" in result.stdout


def test_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["schemaVersion"] >= 30
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
