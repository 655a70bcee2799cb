"""C2PA provenance in every sidecar, with manifests signed here (tests/c2pa_kit.py).

The reader is checked on its own, then the real worker archives signed, tampered, unsigned and
truncated images into a folder: every one is archived, and each sidecar (and the task API)
says what its manifest claims and whether it validates.
"""

from __future__ import annotations

import io
import json
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest

from receiver import provenance, sidecar
from receiver.app import create_app
from receiver.config import ProvenanceSettings, load_settings
from receiver.errors import ConfigError
from receiver.models import NewTask, Outcome, OutcomeStatus, ResultImage, Status
from receiver.runtime import Runtime
from receiver.worker import Worker
from tests import c2pa_kit as kit
from tests.helpers import API_KEY, base_config

pytest.importorskip("c2pa")
pytestmark = pytest.mark.anyio

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"


@pytest.fixture(scope="module")
def chain() -> kit.Chain:
    return kit.make_chain()


@pytest.fixture(scope="module")
def signed(chain: kit.Chain) -> bytes:
    return kit.sign(chain, kit.png())


# --- the reader -------------------------------------------------------------------------------


def test_signed_image_validates_and_names_signer_and_source_type(signed: bytes) -> None:
    block = provenance.read_bytes(signed, "image/png")
    assert block["status"] == "valid" and block["present"] is True
    assert block["validation_state"] == "Valid" and block["validates"] is True
    assert block["signer"]["common_name"] == kit.SIGNER_CN
    # c2pa-rs's "issuer" is the signing certificate's own organisation, not its CA's.
    assert block["signer"]["issuer"] == kit.SIGNER_ORG
    assert block["signer"]["alg"].lower() == "es256"
    assert block["claim_generator"] == f"{kit.GENERATOR} 2.1"
    assert block["digital_source_type"] == "trainedAlgorithmicMedia"
    [action] = block["actions"]
    assert action == {
        "action": "c2pa.created",
        "digital_source_type": IPTC + "trainedAlgorithmicMedia",
        "software_agent": "FLUX.2 [pro]",
        "when": None,
    }
    # No trust anchors configured: the signature holds, the signer is simply not anchored.
    assert block["failures"] == ["signingCredential.untrusted"]
    assert block["manifest"].startswith("urn:c2pa:")
    assert block["reader"].startswith("c2pa-python ")
    json.dumps(block)  # goes into the sidecar as it is


def test_configured_trust_anchor_makes_the_signer_trusted(
    signed: bytes, chain: kit.Chain, tmp_path: Path
) -> None:
    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(chain.root_pem)
    block = provenance.read_bytes(signed, "image/png", str(anchors))
    assert block["status"] == "trusted" and block["validation_state"] == "Trusted"
    assert block["validates"] is True and block["failures"] == []
    # Another chain's root anchors nothing here.
    other = tmp_path / "other.pem"
    other.write_bytes(kit.make_chain().root_pem)
    assert provenance.read_bytes(signed, "image/png", str(other))["status"] == "valid"


def test_bytes_changed_after_signing_do_not_validate(signed: bytes) -> None:
    block = provenance.read_bytes(kit.tamper(signed), "image/png")
    assert block["status"] == "invalid" and block["validates"] is False
    assert block["validation_state"] == "Invalid"
    assert "assertion.dataHash.mismatch" in block["failures"]
    assert "assertion.dataHash.mismatch" in block["reason"]
    # What it claims is still recorded: who signed it, and what it says it is.
    assert block["signer"]["common_name"] == kit.SIGNER_CN
    assert block["digital_source_type"] == "trainedAlgorithmicMedia"


def test_image_without_manifest_is_absent() -> None:
    block = provenance.read_bytes(kit.png(), "image/png")
    assert block["status"] == "absent" and block["present"] is False
    assert block["signer"] is None and block["actions"] == [] and block["validates"] is None


def test_truncated_manifest_is_unreadable_with_the_reason(signed: bytes) -> None:
    block = provenance.read_bytes(kit.truncate_manifest(signed), "image/png")
    assert block["status"] == "unreadable" and block["validates"] is False
    assert block["present"] is True and block["reason"]


def test_ingredients_are_listed(chain: kit.Chain, signed: bytes) -> None:
    edited = kit.sign(
        chain,
        kit.png((10, 90, 10)),
        source_type="compositeWithTrainedAlgorithmicMedia",
        ingredient=signed,
    )
    block = provenance.read_bytes(edited, "image/png")
    assert block["status"] == "valid"
    assert block["digital_source_type"] == "compositeWithTrainedAlgorithmicMedia"
    [ingredient] = block["ingredients"]
    assert ingredient["title"] == "reference.png" and ingredient["relationship"] == "inputTo"
    assert ingredient["format"] == "image/png" and ingredient["manifest"].startswith("urn:c2pa:")


def test_hostile_lists_and_strings_are_cut() -> None:
    store = {
        "active_manifest": "m",
        "validation_state": "Valid",
        "manifests": {
            "m": {
                "claim_generator": "x" * 10_000,
                "assertions": [
                    {"label": "c2pa.actions", "data": {"actions": [{"action": "a"}] * 1000}},
                    {"label": "c2pa.actions.v2", "data": "not a dict"},
                    "not an assertion",
                ],
                "ingredients": [{"title": "t"}] * 1000 + ["junk"],
                "signature_info": "junk",
            }
        },
    }
    block = provenance.summarize(store)
    assert len(block["actions"]) == provenance.MAX_ITEMS
    assert len(block["ingredients"]) <= provenance.MAX_ITEMS
    assert len(block["claim_generator"]) == provenance.MAX_TEXT
    assert block["signer"] is None
    no_active = provenance.summarize({"manifests": {}, "validation_state": "Valid"})
    assert no_active["status"] == "invalid" and no_active["validates"] is False


async def test_size_budget_skips_large_images(signed: bytes, tmp_path: Path) -> None:
    file = (tmp_path / "x.png").open("w+b")
    file.write(signed)
    conf = ProvenanceSettings(max_bytes=len(signed) - 1)
    block = await provenance.read(file, "image/png", conf)
    assert block["status"] == "skipped" and "max_bytes" in block["reason"]
    assert file.tell() == 0  # the worker's file is left where it was
    exact = await provenance.read(file, "image/png", ProvenanceSettings(max_bytes=len(signed)))
    assert exact["status"] == "valid"
    off = await provenance.read(file, "image/png", ProvenanceSettings(read_c2pa=False))
    assert off["status"] == "skipped" and "read_c2pa" in off["reason"]


async def test_bytes_without_the_manifest_label_skip_the_reader(
    signed: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No manifest store box in the bytes: absent, as the reader says, without running it; a
    store's box (even in a damaged store) still goes to the reader."""
    calls: list[int] = []
    real = provenance.read_bytes

    def counted(data: bytes, content_type: str, anchors: str | None = None) -> dict[str, Any]:
        calls.append(len(data))
        return real(data, content_type, anchors)

    monkeypatch.setattr(provenance, "read_bytes", counted)
    plain = kit.png()
    assert provenance.MANIFEST_STORE_BOX not in plain
    assert provenance.MANIFEST_STORE_BOX in signed  # the needle is what a signer writes
    block = await provenance.read(io.BytesIO(plain), "image/png", ProvenanceSettings())
    assert block == real(plain, "image/png")
    assert calls == []
    damaged = kit.truncate_manifest(signed)
    block = await provenance.read(io.BytesIO(damaged), "image/png", ProvenanceSettings())
    assert block["status"] == "unreadable" and block["present"] is True
    assert calls == [len(damaged)]
    block = await provenance.read(io.BytesIO(signed), "image/png", ProvenanceSettings())
    assert block["status"] == "valid" and len(calls) == 2


def _encoded(fmt: str, image: bytes) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(image)).convert("RGB").save(out, fmt.split("/")[1].upper())
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["image/png", "image/jpeg", "image/webp"])
def test_the_manifest_precheck_agrees_with_the_reader(chain: kit.Chain, fmt: str) -> None:
    """PNG and WebP by their chunk lists, JPEG by searching the bytes: a signed image always
    goes to the reader, a plain one never needs to."""
    plain = _encoded(fmt, kit.png())
    signed = kit.sign(chain, plain, fmt=fmt)
    assert provenance.read_bytes(signed, fmt)["status"] == "valid"
    assert provenance.may_hold_manifest(signed) is True
    assert provenance.read_bytes(plain, fmt)["status"] == "absent"
    assert provenance.may_hold_manifest(plain) is False


def test_the_manifest_precheck_searches_what_its_walk_cannot_vouch_for() -> None:
    plain = kit.png()
    box = provenance.MANIFEST_STORE_BOX
    assert provenance.may_hold_manifest(plain + b"junk" + box) is True  # after IEND
    assert provenance.may_hold_manifest(plain + b"junk") is False
    broken = plain[:8] + (2**31).to_bytes(4, "big") + plain[12:]  # a length past the end
    assert provenance.may_hold_manifest(broken) is False
    assert provenance.may_hold_manifest(broken + box) is True
    chunked = plain[:-12] + (0).to_bytes(4, "big") + b"caBX" + bytes(4) + plain[-12:]
    assert provenance.may_hold_manifest(chunked) is True  # a caBX chunk, even an empty one


async def test_time_budget_records_a_slow_read_and_moves_on(
    signed: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that does not finish in time is recorded as skipped and the job moves on. A
    wedged reader holds its slot until it ends: with every slot wedged, later reads run out of
    their budget waiting; once it ends, reading works again."""
    release = threading.Event()
    real = provenance.read_bytes

    def stuck(data: bytes, content_type: str, anchors: str | None = None) -> dict[str, Any]:
        release.wait(30)
        return provenance.skipped("released")

    monkeypatch.setattr(provenance, "READERS", 1)
    monkeypatch.setattr(provenance, "read_bytes", stuck)
    file = (tmp_path / "x.png").open("w+b")
    file.write(signed)
    budget = ProvenanceSettings(timeout_seconds=0.05)
    try:
        first = await provenance.read(file, "image/png", budget)
        monkeypatch.setattr(provenance, "read_bytes", real)
        second = await provenance.read(file, "image/png", budget)  # waits for the slot
    finally:
        release.set()
    for block in (first, second):
        assert block["status"] == "skipped" and "timeout_seconds" in block["reason"]
    third = await provenance.read(file, "image/png", ProvenanceSettings(timeout_seconds=30))
    assert third["status"] == "valid"
    assert all(t.daemon for t in threading.enumerate() if t.name == "receiver-c2pa")


async def test_reader_errors_never_escape(
    signed: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(data: bytes, content_type: str, anchors: str | None = None) -> dict[str, Any]:
        raise RuntimeError("native reader crashed")

    monkeypatch.setattr(provenance, "read_bytes", boom)
    file = (tmp_path / "x.png").open("w+b")
    file.write(signed)
    block = await provenance.read(file, "image/png", ProvenanceSettings())
    assert block["status"] == "unreadable" and "native reader crashed" in block["reason"]


def test_trust_anchors_setting_must_be_a_readable_pem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    conf = base_config(tmp_path)
    for value, words in ((str(tmp_path / "missing.pem"), "cannot read"), (str(bad), "no PEM")):
        with pytest.raises(ConfigError, match=rf"provenance.trust_anchors: .*{words}"):
            load_settings(None, {}, {**conf, "provenance": {"trust_anchors": value}})


# --- through the real worker ------------------------------------------------------------------


async def test_worker_archives_every_image_with_its_provenance(
    chain: kit.Chain, signed: bytes, tmp_path: Path
) -> None:
    """Must show: a C2PA-signed image's sidecar names its signer and digital source type and
    says it validates; the same image tampered says it does not; an image without a manifest
    says absent; a truncated manifest says unreadable. All of them archived, with .xmp."""
    served = {
        "/signed.png": signed,
        "/tampered.png": kit.tamper(signed),
        "/plain.png": kit.png((1, 2, 3)),
        "/truncated.png": kit.truncate_manifest(signed),
    }

    def origin(request: httpx.Request) -> httpx.Response:
        body = served.get(request.url.path)
        if body is None:
            return httpx.Response(404)
        return httpx.Response(200, content=body, headers={"content-type": "image/png"})

    conf = base_config(tmp_path, ledger_url="memory://")
    settings = load_settings(None, {}, conf)
    rt = Runtime(settings, fetch_transport=httpx.MockTransport(origin))
    await rt.open()
    try:
        ids = {}
        for path in served:
            task, _ = await rt.ledger.create_task(
                NewTask(provider="simulated", prompt=f"a kite {path}", destination="local")
            )
            image = ResultImage(url=f"http://127.0.0.1:9{path}?sig=secret")
            await rt.ledger.record_outcome(
                task.id,
                Outcome(OutcomeStatus.SUCCEEDED, images=(image,), model="flux-2-pro"),
                provider="simulated",
                delivery_key=None,
                deadline=None,
            )
            ids[path] = task.id
        worker = Worker(rt)
        jobs = await rt.ledger.claim_jobs(rt.owner, 10, 60)
        assert len(jobs) == len(served)
        for job in jobs:
            await worker.process(job)

        blocks: dict[str, dict[str, Any]] = {}
        app = create_app(settings, runtime=rt, background=False)
        api = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://receiver.test",
            headers={"authorization": f"Bearer {API_KEY}"},
        )
        for path, task_id in ids.items():
            task = await rt.ledger.get_task(task_id)
            assert task is not None and task.status is Status.ARCHIVED, (path, task)
            # What the task API answers (GET /v1/tasks/{id}), as an application reads it.
            answer = await api.get(f"/v1/tasks/{task_id}")
            assert answer.status_code == 200, answer.text
            [obj] = answer.json()["objects"]
            image = Path(obj["uri"].removeprefix("file://"))
            assert image.read_bytes() == served[path]  # the provider's bytes, unchanged
            doc = json.loads(Path(obj["sidecar_uri"].removeprefix("file://")).read_bytes())
            assert obj["provenance"] == doc["provenance"]  # the task API shows it too
            blocks[path] = doc["provenance"]
            xmp = ET.parse(f"{image}.xmp").getroot()  # noqa: S314 (our own output)
            assert xmp.tag == "{adobe:ns:meta/}xmpmeta"
        await api.aclose()
    finally:
        await rt.close()

    good = blocks["/signed.png"]
    assert good["status"] == "valid" and good["validates"] is True
    assert good["signer"]["common_name"] == kit.SIGNER_CN
    assert good["digital_source_type"] == "trainedAlgorithmicMedia"
    bad = blocks["/tampered.png"]
    assert bad["status"] == "invalid" and bad["validates"] is False
    assert "assertion.dataHash.mismatch" in bad["failures"]
    assert blocks["/plain.png"]["status"] == "absent"
    assert blocks["/plain.png"]["present"] is False
    assert blocks["/truncated.png"]["status"] == "unreadable"


# --- the .xmp sidecar -------------------------------------------------------------------------

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "receiver": sidecar.NS_RECEIVER,
}


def _attr(el: ET.Element, qname: str) -> str | None:
    prefix, local = qname.split(":")
    return el.get(f"{{{NS[prefix]}}}{local}")


def test_xmp_packet_carries_source_type_prompt_agent_and_sha256() -> None:
    prompt = 'a "red" kite <over> the sea & hills\x00\x07 — ünïcode'
    doc = {
        "task_id": "tsk_1",
        "provider": "bfl",
        "provider_task_id": "p-1",
        "model": "flux-2-pro",
        "prompt": prompt,
        "content_type": "image/png",
        "sha256": "ab" * 32,
        "digital_source_type": "trainedAlgorithmicMedia",
        "completed_at": "2026-03-09T23:59:05Z",
        "provenance": {"status": "valid"},
    }
    packet = sidecar.xmp(doc)
    text = packet.decode()
    assert text.startswith("<?xpacket begin=") and text.rstrip().endswith('<?xpacket end="r"?>')
    root = ET.fromstring(packet)  # noqa: S314 (our own output)
    desc = root.find("rdf:RDF/rdf:Description", NS)
    assert desc is not None
    assert _attr(desc, "Iptc4xmpExt:DigitalSourceType") == IPTC + "trainedAlgorithmicMedia"
    assert _attr(desc, "xmp:CreatorTool") == "bfl flux-2-pro"
    assert _attr(desc, "Iptc4xmpExt:AISystemUsed") == "flux-2-pro"
    assert _attr(desc, "receiver:sha256") == "ab" * 32
    assert _attr(desc, "receiver:taskId") == "tsk_1"
    assert _attr(desc, "receiver:c2pa") == "valid"
    assert _attr(desc, "dc:format") == "image/png"
    clean = 'a "red" kite <over> the sea & hills — ünïcode'
    li = desc.find("dc:description/rdf:Alt/rdf:li", NS)
    assert li is not None and li.text == clean
    assert li.get("{http://www.w3.org/XML/1998/namespace}lang") == "x-default"
    assert desc.findtext("Iptc4xmpExt:AIPromptInformation", namespaces=NS) == clean


def test_xmp_sidecar_can_be_turned_off(tmp_path: Path) -> None:
    conf = base_config(tmp_path, provenance={"xmp_sidecar": False})
    assert load_settings(None, {}, conf).provenance.xmp_sidecar is False
    env = {"RECEIVER_PROVENANCE__XMP_SIDECAR": "false"}
    assert load_settings(None, env, base_config(tmp_path)).provenance.xmp_sidecar is False
    assert sidecar.xmp_key("2026/01/01/t/0.png") == "2026/01/01/t/0.png.xmp"


async def test_check_names_the_reader_and_fails_without_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from receiver.check import run_checks

    settings = load_settings(None, {}, base_config(tmp_path, ledger_url="memory://"))
    assert await run_checks(settings) == 0
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if "provenance:" in ln]
    assert line.startswith("ok") and "c2pa-python" in line

    monkeypatch.setattr(provenance, "reader_version", lambda: None)
    assert await run_checks(settings) == 1
    [line] = [ln for ln in capsys.readouterr().out.splitlines() if "provenance:" in ln]
    assert line.startswith("FAIL") and "provenance.read_c2pa = false" in line
    off = load_settings(
        None, {}, base_config(tmp_path, ledger_url="memory://", provenance={"read_c2pa": False})
    )
    assert await run_checks(off) == 0


# --- the console ------------------------------------------------------------------------------


async def test_console_shows_a_c2pa_badge_per_card_and_per_image(
    chain: kit.Chain, signed: bytes, tmp_path: Path
) -> None:
    """Issue 15's "the console shows it": the gallery card and each image of the task page
    carry a badge with the provenance status (class from a closed list, a title saying what it
    means), next to the fields; an image without a manifest says absent."""
    from receiver.testing import API_KEY as KEY
    from receiver.testing import PUBLIC_URL, memory_runtime
    from tests.console_kit import sign_in

    anchors = tmp_path / "anchors.pem"
    anchors.write_bytes(chain.root_pem)
    async with memory_runtime(provenance={"trust_anchors": str(anchors)}) as rt:
        plain = rt.origin.serve_image("https://cdn.example/plain.png", kit.png((1, 2, 3)))
        good = rt.origin.serve_image("https://cdn.example/signed.png", signed)
        bad = rt.origin.serve_image("https://cdn.example/tampered.png", kit.tamper(signed))
        unsigned = await rt.completed_task([plain], prompt="an unsigned kite")
        both = await rt.completed_task([good, bad], prompt="a signed kite and a tampered one")
        worker = Worker(rt)
        for job in await rt.ledger.claim_jobs(rt.owner, 10, 60):
            await worker.process(job)

        app = create_app(rt.settings, runtime=rt, background=False)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=PUBLIC_URL
        ) as client:
            await sign_in(client, PUBLIC_URL, KEY)
            gallery = (await client.get("/ui/")).text
            cards = {
                task_id: gallery.split(f'data-id="{task_id}"', 1)[1].split("</article>", 1)[0]
                for task_id in (unsigned.id, both.id)
            }
            assert _badges(cards[unsigned.id]) == [("absent", "no Content Credentials")]
            assert _badges(cards[both.id]) == [
                ("trusted", "signer is among the configured trust anchors"),
                ("invalid", "do not validate"),
            ]
            page = (await client.get(f"/ui/tasks/{both.id}")).text
            assert _badges(page) == _badges(cards[both.id])
            assert f"signed by {kit.SIGNER_CN}" in page
            page = (await client.get(f"/ui/tasks/{unsigned.id}")).text
            assert _badges(page) == [("absent", "no Content Credentials")]


def _badges(html: str) -> list[tuple[str, str]]:
    """(status, a phrase of the title) of every C2PA badge, checking the text matches the class."""
    import re

    found = []
    for cls, title, text in re.findall(
        r'<span class="badge c2pa c2pa-(\w+)" title="([^"]*)">([^<]*)</span>', html
    ):
        assert text == f"C2PA {cls}" and title.startswith("C2PA: ")
        phrase = {
            "trusted": "signer is among the configured trust anchors",
            "invalid": "do not validate",
            "absent": "no Content Credentials",
        }.get(cls, "")
        assert phrase in title
        found.append((cls, phrase))
    return found
