"""The console over real HTTP: sessions, CSRF, read-only keys, escaping, headers, thumbnails,
full images from a folder and from S3, live streams, bulk actions in the API and the CLI."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from PIL import Image

from receiver import cli
from receiver.replay import FILTER_KEYS
from receiver.ui import auth

from ..console_kit import API_KEY, READ_ONLY_KEY, console_stack, sign_in

pytestmark = pytest.mark.anyio
EVIL = '<script>window.__pwned=1</script><img src=x onerror="alert(1)">'


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def test_pages_need_a_session(tmp_path: Path) -> None:
    async with console_stack(tmp_path) as stack, httpx.AsyncClient() as client:
        task_id = await stack.submit(client, "a kite")
        await stack.wait([task_id], "archived")
        gallery = await client.get(f"{stack.base}/ui/")
        assert gallery.status_code == 303
        assert gallery.headers["location"] == "/ui/login?next=%2Fui%2F"
        assert (await client.get(f"{stack.base}/ui/tasks/{task_id}")).status_code == 303
        assert (await client.get(f"{stack.base}/ui/thumbs/{task_id}/0.webp")).status_code == 401
        assert (await client.get(f"{stack.base}/ui/images/{task_id}/0")).status_code == 401
        posted = await client.post(
            f"{stack.base}/ui/bulk", data={"action": "replay", "status": "failed"}
        )
        assert posted.status_code == 401 and "Sign in" in posted.text
        replay = await client.post(f"{stack.base}/ui/tasks/{task_id}/replay", data={})
        assert replay.status_code == 401
        # An API key is no console session.
        api = await client.get(f"{stack.base}/ui/", headers=stack.api)
        assert api.status_code == 303


async def test_sign_in_gives_a_hardened_cookie_and_sign_out_ends_it(tmp_path: Path) -> None:
    async with console_stack(tmp_path) as stack, httpx.AsyncClient() as client:
        form = await client.get(f"{stack.base}/ui/login")
        wrong = await client.post(
            f"{stack.base}/ui/login", data={"csrf": csrf_of(form.text), "api_key": "nope"}
        )
        assert wrong.status_code == 401 and "not accepted" in wrong.text
        no_token = await client.post(f"{stack.base}/ui/login", data={"api_key": API_KEY})
        assert no_token.status_code == 403
        form = await client.get(f"{stack.base}/ui/login")
        done = await client.post(
            f"{stack.base}/ui/login",
            data={"csrf": csrf_of(form.text), "api_key": API_KEY, "next": "https://evil.test/"},
        )
        assert done.status_code == 303 and done.headers["location"] == "/ui/"  # no open redirect
        cookie = next(
            v for v in done.headers.get_list("set-cookie") if v.startswith("receiver_console=")
        )
        flags = {part.strip().lower() for part in cookie.split(";")}
        assert {"httponly", "samesite=lax", "path=/ui"} <= flags
        assert "secure" not in flags  # public_url is http here
        assert API_KEY not in cookie
        page = await client.get(f"{stack.base}/ui/")
        assert page.status_code == 200
        no_csrf = await client.post(f"{stack.base}/ui/logout", data={})
        assert no_csrf.status_code == 403
        out = await client.post(f"{stack.base}/ui/logout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303
        assert (await client.get(f"{stack.base}/ui/")).status_code == 303


def test_cookie_is_secure_behind_https_and_sessions_end(tmp_path: Path) -> None:
    from starlette.responses import Response

    from receiver.config import Settings

    conf = {"secret_keys": ["s" * 20], "api_keys": [API_KEY], "ledger_url": "memory://"}
    https = Settings.model_validate({**conf, "public_url": "https://hooks.example.com"})
    session = auth.match_key(https, API_KEY)
    assert session is not None and not session.read_only
    response = Response()
    auth.set_session(response, https, session)
    assert "secure" in response.headers["set-cookie"].lower()

    class Old(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - https.console.session_seconds - 5

    stale = URLSafeTimedSerializer(
        list(reversed(https.secret_keys)), salt=auth.SESSION_SALT, signer=Old
    ).dumps({"k": session.key_hash, "c": session.csrf})

    class Req:
        def __init__(self, value: str) -> None:
            self.cookies = {auth.COOKIE: value}

    fresh_value = response.headers["set-cookie"].split(";")[0].split("=", 1)[1]
    assert auth.current_session(Req(fresh_value), https) is not None  # type: ignore[arg-type]
    assert auth.current_session(Req(stale), https) is None  # type: ignore[arg-type]
    removed = Settings.model_validate({**conf, "api_keys": ["another-key-0123456789"]})
    assert auth.current_session(Req(fresh_value), removed) is None  # type: ignore[arg-type]
    rotated = Settings.model_validate({**conf, "secret_keys": ["t" * 20, "s" * 20]})
    assert auth.current_session(Req(fresh_value), rotated) is not None  # type: ignore[arg-type]
    tampered = fresh_value[:-2] + ("AA" if not fresh_value.endswith("AA") else "BB")
    assert auth.current_session(Req(tampered), https) is None  # type: ignore[arg-type]


async def test_csrf_and_read_only_keys_guard_every_action(tmp_path: Path) -> None:
    async with console_stack(tmp_path) as stack, httpx.AsyncClient() as client:
        async with httpx.AsyncClient() as api:
            task_id = await stack.submit(api, "a kite [sim:no_callback=true]")
        await stack.rt.ledger.fail_task(task_id, _reason("fetch_failed"), "origin answered 503")
        csrf = await sign_in(client, stack.base)
        for path in (f"/ui/tasks/{task_id}/replay", f"/ui/tasks/{task_id}/redeliver", "/ui/bulk"):
            data = {"action": "replay", "status": "failed", "as_of": str(time.time())}
            refused = await client.post(f"{stack.base}{path}", data=data)
            assert refused.status_code == 403, path
            wrong = await client.post(f"{stack.base}{path}", data={**data, "csrf": "x" + csrf})
            assert wrong.status_code == 403, path
        task = await stack.rt.ledger.get_task(task_id)
        assert task is not None and task.status.value == "failed"  # nothing happened

        async with httpx.AsyncClient() as reader:
            ro_csrf = await sign_in(reader, stack.base, READ_ONLY_KEY)
            gallery = await reader.get(f"{stack.base}/ui/")
            assert gallery.status_code == 200 and "read-only" in gallery.text
            assert "bulk-replay" not in gallery.text
            page = await reader.get(f"{stack.base}/ui/tasks/{task_id}")
            assert 'id="replay"' not in page.text
            for path in (f"/ui/tasks/{task_id}/replay", "/ui/bulk"):
                data = {"csrf": ro_csrf, "action": "replay", "as_of": str(time.time())}
                refused = await reader.post(f"{stack.base}{path}", data=data)
                assert refused.status_code == 403 and "read-only" in refused.text
            # The read-only key is no API key.
            api = await reader.get(
                f"{stack.base}/v1/tasks", headers={"authorization": f"Bearer {READ_ONLY_KEY}"}
            )
            assert api.status_code == 401
        task = await stack.rt.ledger.get_task(task_id)
        assert task is not None and task.status.value == "failed"


def _reason(value: str):  # type: ignore[no-untyped-def]
    from receiver.models import Reason

    return Reason(value)


async def test_prompts_are_escaped_and_headers_forbid_inline_script(tmp_path: Path) -> None:
    async with console_stack(tmp_path) as stack, httpx.AsyncClient() as client:
        task_id = await stack.submit(client, EVIL, metadata={"note": "</code><b>x</b>"})
        await stack.wait([task_id], "archived")
        await sign_in(client, stack.base)
        for path in ("/ui/", f"/ui/tasks/{task_id}", "/ui/?q=script"):
            page = await client.get(f"{stack.base}{path}")
            assert page.status_code == 200
            assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page.text, path
            assert "<script>window" not in page.text and "<img src=x" not in page.text
            assert "<b>x</b>" not in page.text
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "frame-ancestors 'none'" in csp
            assert page.headers["x-frame-options"] == "DENY"
            assert page.headers["x-content-type-options"] == "nosniff"
            # The only script is our own file.
            assert re.findall(r"<script[^>]*>", page.text) == [
                f'<script src="/ui/static/console.js?v={_version()}" defer>'
            ]
            names = _attribute_names(page.text)
            assert "style" not in names and not any(n.startswith("on") for n in names)
            assert "script" not in _elements(page.text).difference({"script:src"})
        static = await client.get(f"{stack.base}/ui/static/console.js")
        assert static.status_code == 200 and "EventSource" in static.text
        # The filter form keeps what was chosen, and offers only known values.
        page = await client.get(f"{stack.base}/ui/?status=archived&provider=simulated")
        assert '<option value="archived" selected>archived</option>' in page.text
        assert '<option value="simulated" selected>simulated</option>' in page.text
        assert '<option value="failed">failed</option>' in page.text
        assert '<option value="">any reason</option>' in page.text


def _version() -> str:
    from receiver import __version__

    return __version__


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attributes: set[str] = set()
        self.elements: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attributes |= {name for name, _ in attrs}
        names = {name for name, _ in attrs}
        self.elements.add(f"{tag}:src" if tag == "script" and "src" in names else tag)


def _parsed(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    return collector


def _attribute_names(html: str) -> set[str]:
    """Every attribute the browser would see (inline styles and event handlers are banned)."""
    return _parsed(html).attributes


def _elements(html: str) -> set[str]:
    return _parsed(html).elements


async def test_thumbnails_are_webp_cached_beside_the_image(tmp_path: Path) -> None:
    async with console_stack(tmp_path) as stack, httpx.AsyncClient() as client:
        task_id = await stack.submit(client, "a wide kite", params={"width": 256, "height": 128})
        await stack.wait([task_id], "archived")
        await sign_in(client, stack.base)
        task = await stack.rt.ledger.get_task(task_id)
        assert task is not None
        (obj,) = task.objects
        page = await client.get(f"{stack.base}/ui/")
        url = f"/ui/thumbs/{task_id}/0.webp?v={obj.sha256[:16]}"
        assert url in page.text
        thumb = await client.get(f"{stack.base}{url}")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp"
        assert "immutable" in thumb.headers["cache-control"]
        assert "max-age=31536000" in thumb.headers["cache-control"]
        with Image.open(io.BytesIO(thumb.content)) as img:
            assert img.format == "WEBP" and img.size == (256, 128)  # never enlarged
        cached = stack.archive / "_thumbs" / (obj.key.rsplit(".", 1)[0] + ".webp")
        assert cached.read_bytes() == thumb.content
        assert not (stack.archive / obj.key).with_suffix(".webp").exists()
        # Served from the cache from now on: the original may even be gone.
        (stack.archive / obj.key).rename(tmp_path / "moved.png")
        again = await client.get(f"{stack.base}{url}")
        assert again.content == thumb.content
        missing = await client.get(f"{stack.base}/ui/thumbs/{task_id}/7.webp")
        assert missing.status_code == 404


def test_big_images_shrink_to_the_limit() -> None:
    from receiver.ui.media import make_thumbnail

    out = io.BytesIO()
    Image.new("RGB", (1600, 900), (200, 30, 30)).save(out, "JPEG")
    with Image.open(io.BytesIO(make_thumbnail(out.getvalue(), 512))) as img:
        assert img.format == "WEBP" and img.size == (512, 288)
    rgba = io.BytesIO()
    Image.new("RGBA", (300, 700), (0, 0, 0, 0)).save(rgba, "PNG")
    with Image.open(io.BytesIO(make_thumbnail(rgba.getvalue(), 512))) as img:
        assert img.size == (219, 512) and img.mode == "RGBA"


async def test_full_images_stream_from_a_folder(tmp_path: Path) -> None:
    async with console_stack(tmp_path) as stack, httpx.AsyncClient() as client:
        task_id = await stack.submit(client, "a kite")
        await stack.wait([task_id], "archived")
        await sign_in(client, stack.base)
        task = await stack.rt.ledger.get_task(task_id)
        assert task is not None
        full = await client.get(f"{stack.base}/ui/images/{task_id}/0")
        assert full.status_code == 200 and full.headers["content-type"] == "image/png"
        assert full.content == (stack.archive / task.objects[0].key).read_bytes()
        assert "sandbox" in full.headers["content-security-policy"]
        page = await client.get(f"{stack.base}/ui/tasks/{task_id}")
        for value in (task.objects[0].sha256, "sim-flux-1", "0.0040", task.provider_task_id):
            assert value and value in page.text


async def test_full_images_redirect_to_a_presigned_url_on_s3(
    tmp_path: Path, moto_endpoint: str, s3_bucket: str
) -> None:
    dest = {"type": "s3", "bucket": s3_bucket, "endpoint_url": moto_endpoint, "prefix": "flux/"}
    async with (
        console_stack(tmp_path, destinations={"s3": dest}, default_destination="s3") as stack,
        httpx.AsyncClient() as client,
    ):
        task_id = await stack.submit(client, "a kite in a bucket")
        await stack.wait([task_id], "archived")
        await sign_in(client, stack.base)
        full = await client.get(f"{stack.base}/ui/images/{task_id}/0")
        assert full.status_code == 302
        location = full.headers["location"]
        assert location.startswith(moto_endpoint) and f"/{s3_bucket}/flux/" in location
        query = parse_qs(urlsplit(location).query)
        assert query.get("Expires") or query.get("X-Amz-Expires")
        fetched = httpx.get(location)
        task = await stack.rt.ledger.get_task(task_id)
        assert task is not None
        assert fetched.status_code == 200
        assert fetched.content == await stack.rt.destination("s3").read(task.objects[0].key)
        page = await client.get(f"{stack.base}/ui/")
        assert moto_endpoint in page.headers["content-security-policy"]  # img-src allows it
        thumb = await client.get(f"{stack.base}/ui/thumbs/{task_id}/0.webp")
        assert thumb.status_code == 200
        key = "_thumbs/" + task.objects[0].key.rsplit(".", 1)[0] + ".webp"
        assert await stack.rt.destination("s3").read(key) == thumb.content


Event = dict[str, Any]


async def _sse(
    client: httpx.AsyncClient, url: str, until: Callable[[Event], bool], seconds: float
) -> list[Event]:
    """Data events of a stream up to the first one ``until`` accepts (or ``seconds``)."""
    found: list[Event] = []
    with anyio.move_on_after(seconds):
        async with client.stream("GET", url) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    found.append(json.loads(line[6:]))
                    if until(found[-1]):
                        break
    return found


async def test_live_streams_send_cards_and_panels_as_tasks_move(tmp_path: Path) -> None:
    async with console_stack(tmp_path) as stack, httpx.AsyncClient(timeout=30) as client:
        await sign_in(client, stack.base)
        since = time.time()
        listener = asyncio.create_task(
            _sse(
                client,
                f"{stack.base}/ui/live?q=kite&since={since}",
                lambda e: e["status"] == "archived",
                60,
            )
        )
        await asyncio.sleep(0.3)
        async with httpx.AsyncClient() as api:
            other = await stack.submit(api, "a lighthouse")
            task_id = await stack.submit(api, f"a slow kite {EVIL} [sim:delay=0.5]")
        await stack.wait([task_id, other], "archived")
        cards = await listener
        assert {c["id"] for c in cards} == {task_id}  # the filter holds in the stream too
        assert cards[0]["status"] == "submitted" and cards[-1]["status"] == "archived"
        assert f'data-id="{task_id}"' in cards[-1]["html"]
        assert "&lt;script&gt;" in cards[-1]["html"] and "<script>" not in cards[-1]["html"]
        panel = await _sse(
            client, f"{stack.base}/ui/tasks/{task_id}/live?after=1", lambda e: True, 20
        )
        assert panel and panel[0]["seq"] >= 3 and "archived" in panel[0]["html"]


async def test_bulk_replay_in_the_api_counts_then_acts_once(tmp_path: Path) -> None:
    async with console_stack(tmp_path) as stack, httpx.AsyncClient(timeout=30) as client:
        stack.sim.faults.download_5xx_rate = 1.0
        ids = [await stack.submit(client, f"kite {i}") for i in range(4)]
        await stack.wait(ids, "failed")
        stack.sim.faults.download_5xx_rate = 0.0
        url = f"{stack.base}/v1/tasks/replay"
        body = {"filter": {"status": "failed", "reason": "fetch_failed", "since": "1h"}}
        unauth = await client.post(url, json={**body, "dry_run": True})
        assert unauth.status_code == 401
        bad = await client.post(url, json={"filter": {"colour": "red"}}, headers=stack.api)
        assert bad.status_code == 422 and "filter.colour" in bad.json()["error"]["message"]
        bad = await client.post(url, json={"filter": {"since": "yesterday"}}, headers=stack.api)
        assert bad.status_code == 422 and "since" in bad.json()["error"]["message"]
        bad = await client.post(url, json={"filter": {"status": "archived"}}, headers=stack.api)
        assert bad.status_code == 422
        counted = await client.post(url, json={**body, "dry_run": True}, headers=stack.api)
        assert counted.status_code == 200 and counted.json()["matched"] == 4
        for task_id in ids:  # a dry run changes nothing
            task = await stack.rt.ledger.get_task(task_id)
            assert task is not None and task.status.value == "failed"
        late = await stack.submit(client, "a late kite [sim:download_5xx=1]")
        await stack.wait([late], "failed")  # fails after the count: not in this action
        body["filter"]["as_of"] = counted.json()["as_of"]
        done = await client.post(url, json={**body, "dry_run": False}, headers=stack.api)
        assert done.status_code == 202, done.text
        result = done.json()
        assert result["matched"] == 4 and result["done"] == 4 and result["skipped"] == 0
        await stack.wait(ids, "archived")
        again = await client.post(url, json={**body, "dry_run": False}, headers=stack.api)
        assert again.json()["done"] == 0
        for task_id in ids:
            events = await stack.rt.ledger.events(task_id)
            assert [e.status for e in events].count("archived") == 1
            (replay,) = [e for e in events if e.data.get("replay")]
            assert replay.data["bulk"] == result["bulk_id"]
            assert str(replay.data["by"]).startswith("api:key:")
        late_task = await stack.rt.ledger.get_task(late)
        assert late_task is not None and late_task.status.value == "failed"


async def test_cli_replays_by_filter(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with console_stack(tmp_path) as stack, httpx.AsyncClient(timeout=30) as client:
        stack.sim.faults.download_5xx_rate = 1.0
        ids = [await stack.submit(client, f"kite {i}") for i in range(2)]
        await stack.wait(ids, "failed")
        stack.sim.faults.download_5xx_rate = 0.0
        common = ["--url", stack.base, "--api-key", API_KEY]
        args = ["replay", *common, "--status", "failed", "--reason", "fetch_failed"]
        code = await anyio.to_thread.run_sync(cli.main, [*args, "--since", "1h", "--dry-run"])
        assert code == 0 and "2 task(s) match" in capsys.readouterr().out
        code = await anyio.to_thread.run_sync(cli.main, [*args, "--since", "1h"])
        out = capsys.readouterr().out
        assert code == 0 and "2 of 2 task(s) queued for archiving again" in out, out
        await stack.wait(ids, "archived")
        both = await anyio.to_thread.run_sync(cli.main, ["replay", ids[0], "--status", "failed"])
        assert both == 1 and "not both" in capsys.readouterr().err
        code = await anyio.to_thread.run_sync(
            cli.main, ["redeliver", *common, "--status", "archived", "--yes"]
        )
        out = capsys.readouterr().out
        assert code == 0 and "0 of 2 task(s) queued for redelivery" in out, out
        assert "no notify_url" in out


async def test_operations_view(tmp_path: Path) -> None:
    async with console_stack(tmp_path) as stack, httpx.AsyncClient(timeout=30) as client:
        ok = await stack.submit(client, "a kite")
        await stack.wait([ok], "archived")
        forged = await client.post(f"{stack.base}/v1/hooks/simulated/not-a-token", content=b"{}")
        assert forged.status_code == 401
        await sign_in(client, stack.base)
        page = await client.get(f"{stack.base}/ui/ops")
        assert page.status_code == 200
        assert re.search(r'id="queue-depth">0<', page.text)
        callbacks = page.text.split('id="callbacks"')[1].split("</table>")[0]
        assert re.search(r"<td>simulated</td><td>1</td><td>[a-z_]+: \d+", callbacks), callbacks


async def test_console_can_be_turned_off(tmp_path: Path) -> None:
    async with (
        console_stack(tmp_path, console={"enabled": False}) as stack,
        httpx.AsyncClient() as client,
    ):
        assert (await client.get(f"{stack.base}/ui/login")).status_code == 404
        assert (await client.get(f"{stack.base}/healthz")).status_code == 200


def test_bulk_routes_are_in_the_openapi_document() -> None:
    from receiver.api.openapi import spec

    doc = spec()
    schemas = doc["components"]["schemas"]
    for path in ("/v1/tasks/replay", "/v1/tasks/redeliver"):
        post = doc["paths"][path]["post"]
        body = post["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": "#/components/schemas/BulkRequest"}
        assert {"200", "202", "401", "422"} <= set(post["responses"])
    # The API's filter is the one the console and parse_filter read: no key on one side only.
    assert set(schemas["BulkFilter"]["properties"]) == set(FILTER_KEYS)
    assert "matched" in schemas["BulkResult"]["required"]
    text = json.dumps(doc)
    for ref in set(re.findall(r"#/components/schemas/(\w+)", text)):
        assert ref in schemas, ref


async def test_live_gallery_hears_another_replica_over_postgres(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Replicas share PostgreSQL: a task submitted to and archived by replica B shows up live
    in the gallery stream of replica A (woken by LISTEN/NOTIFY, or by its poll as a net)."""
    from receiver.app import create_app
    from receiver.config import Settings
    from receiver.demo import free_port, serving

    async with (
        console_stack(tmp_path, ledger_url=pg_dsn) as stack,
        httpx.AsyncClient(timeout=30) as client,
    ):
        port_b = free_port()
        conf_b = stack.settings.model_dump()
        conf_b["public_url"] = f"http://127.0.0.1:{port_b}"
        replica_b = create_app(Settings.model_validate(conf_b))
        async with serving(replica_b, port_b):
            await sign_in(client, stack.base)
            listener = asyncio.create_task(
                _sse(
                    client,
                    f"{stack.base}/ui/live?q=replica&since={time.time()}",
                    lambda e: e["status"] == "archived",
                    60,
                )
            )
            await asyncio.sleep(0.5)
            response = await client.post(
                f"http://127.0.0.1:{port_b}/v1/tasks",
                json={"provider": "simulated", "prompt": "made on replica b"},
                headers=stack.api,
            )
            assert response.status_code == 202
            task_id = response.json()["id"]
            cards = await listener
        assert cards and cards[-1]["id"] == task_id and cards[-1]["status"] == "archived"


async def test_bulk_actions_past_the_limit_are_refused_before_anything_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from receiver import replay
    from receiver.ui import views

    monkeypatch.setattr(replay, "MAX_BULK", 2)
    monkeypatch.setattr(views, "MAX_BULK", 2)
    async with console_stack(tmp_path) as stack, httpx.AsyncClient(timeout=30) as client:
        ids = [
            await stack.submit(client, f"kite {i}", params={"faults": {"download_5xx": 1}})
            for i in range(3)
        ]
        await stack.wait(ids, "failed")
        await sign_in(client, stack.base)
        confirm = await client.get(f"{stack.base}/ui/bulk?action=replay&status=failed")
        assert "more than 2 tasks" in confirm.text and 'id="bulk-confirm"' not in confirm.text
        url = f"{stack.base}/v1/tasks/replay"
        refused = await client.post(url, json={"filter": {"status": "failed"}}, headers=stack.api)
        assert refused.status_code == 422 and "at most 2" in refused.json()["error"]["message"]
        for task_id in ids:
            task = await stack.rt.ledger.get_task(task_id)
            assert task is not None and task.status.value == "failed"
