"""What an archived image's C2PA Content Credentials claim, and whether they validate.

The archive keeps the provider's bytes unchanged, so the manifest store embedded in them can be
read and validated against those very bytes at archive time. The result goes into the sidecar's
``provenance`` block and the task API.

Reading is evidence-gathering, never a gate: a missing, malformed or hostile manifest is recorded
as such and the image is archived all the same. The native reader (``c2pa-python``, the Content
Authenticity Initiative's own bindings over c2pa-rs: the specification's reference validator,
which a hand-written JUMBF/COSE parser could not match) runs in daemon threads under a time
budget, on at most ``max_bytes`` of input; remote manifests are never fetched, so a result URL
cannot make the archiver reach another host. When the library cannot be imported (a platform
without its native wheel), the block says so and archiving goes on.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import threading
import weakref
from datetime import datetime
from typing import IO, Any, Literal

from .config import ProvenanceSettings

log = logging.getLogger(__name__)

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
MAX_ITEMS = 32  # actions / ingredients / failure codes kept per manifest (hostile lists are cut)
MAX_TEXT = 512  # characters kept of any string taken from a manifest
MANIFEST_LABEL = b"c2pa"  # the JUMBF label of a C2PA manifest store
# A manifest store's JUMBF description box: its type, then the store's UUID
# (6332706100110010800000AA00389B71, whose first bytes spell "c2pa"). Every format C2PA embeds
# in holds it whole; a 20-byte needle is searched in a quarter of the time "c2pa" takes.
MANIFEST_STORE_BOX = b"jumd" + bytes.fromhex("6332706100110010800000AA00389B71")

# Statuses, one word each, for a badge: the manifest validated against the configured trust
# anchors; validated but its signer is not anchored; failed validation; no manifest at all;
# a manifest (or asset) that could not be parsed; not read (too large, too slow, disabled, no
# library).
TRUSTED, VALID, INVALID, ABSENT, UNREADABLE, SKIPPED = (
    "trusted",
    "valid",
    "invalid",
    "absent",
    "unreadable",
    "skipped",
)

# At most this many reads run at once, each in a daemon thread of its own: the default executor
# (the ledger and the stores use it) is never tied up, and a thread wedged in native code on a
# hostile manifest keeps neither the process from exiting nor more than its one slot. Once every
# slot is wedged, later reads wait, run out of their budget and are recorded as skipped.
READERS = 4
_copying: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def skipped(reason: str) -> dict[str, Any]:
    return _block(SKIPPED, present=None, reason=reason)


def _block(status: str, *, present: bool | None, **fields: Any) -> dict[str, Any]:
    block: dict[str, Any] = {
        "status": status,
        "present": present,
        "validation_state": None,
        "validates": None,
        "failures": [],
        "manifest": None,
        "title": None,
        "claim_generator": None,
        "signer": None,
        "signed_at": None,
        "digital_source_type": None,
        "actions": [],
        "ingredients": [],
        "reason": None,
        "reader": reader_version(),
    }
    block.update(fields)
    return block


@functools.cache
def reader_version() -> str | None:
    """``c2pa-python X (c2pa-rs Y)``, or None when the library cannot be loaded."""
    try:
        from importlib.metadata import version

        import c2pa

        return f"c2pa-python {version('c2pa-python')} (c2pa-rs {c2pa.sdk_version()})"
    except Exception:  # ImportError, or a native library that fails to load
        return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text[:MAX_TEXT]


def short_source_type(uri: Any) -> str | None:
    """``http://cv.iptc.org/…/trainedAlgorithmicMedia`` → ``trainedAlgorithmicMedia``; other
    vocabularies are kept whole."""
    if not isinstance(uri, str):
        return None
    return uri.removeprefix(IPTC)[:MAX_TEXT] if uri.startswith(IPTC) else uri[:MAX_TEXT]


def _claim_generator(manifest: dict[str, Any]) -> str | None:
    infos = manifest.get("claim_generator_info")
    if isinstance(infos, list) and infos and isinstance(infos[0], dict):
        name, version = infos[0].get("name"), infos[0].get("version")
        if isinstance(name, str):
            return _text(f"{name} {version}" if isinstance(version, str) else name)
    return _text(manifest.get("claim_generator"))


def _signer(manifest: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    info = manifest.get("signature_info")
    if not isinstance(info, dict):
        return None, None
    signer = {
        "common_name": _text(info.get("common_name")),
        "issuer": _text(info.get("issuer")),
        "alg": _text(info.get("alg")),
        "cert_serial_number": _text(info.get("cert_serial_number")),
    }
    # A time appears only where the claim carries a trusted timestamp (RFC 3161).
    when = info.get("time")
    return signer, _iso(when)


def _iso(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).isoformat()
    except ValueError:
        return _text(value)


def _actions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for assertion in manifest.get("assertions") or ():
        if not isinstance(assertion, dict):
            continue
        label = assertion.get("label")
        if not (isinstance(label, str) and label.startswith("c2pa.actions")):
            continue
        data = assertion.get("data")
        for action in (data.get("actions") if isinstance(data, dict) else None) or ():
            if not isinstance(action, dict) or len(out) >= MAX_ITEMS:
                continue
            agent = action.get("softwareAgent")
            if isinstance(agent, dict):
                agent = agent.get("name")
            out.append(
                {
                    "action": _text(action.get("action")),
                    "digital_source_type": _text(action.get("digitalSourceType")),
                    "software_agent": _text(agent),
                    "when": _text(action.get("when")),
                }
            )
    return out


def _ingredients(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for ing in (manifest.get("ingredients") or ())[:MAX_ITEMS]:
        if not isinstance(ing, dict):
            continue
        out.append(
            {
                "title": _text(ing.get("title")),
                "format": _text(ing.get("format")),
                "relationship": _text(ing.get("relationship")),
                "manifest": _text(ing.get("active_manifest")),
            }
        )
    return out


def _failures(store: dict[str, Any]) -> list[str]:
    codes: list[str] = []
    results = store.get("validation_results")
    if isinstance(results, dict):
        active = results.get("activeManifest")
        groups = [active.get("failure") if isinstance(active, dict) else None]
        for delta in results.get("ingredientDeltas") or ():
            if isinstance(delta, dict) and isinstance(delta.get("validationDeltas"), dict):
                groups.append(delta["validationDeltas"].get("failure"))
    else:
        groups = [store.get("validation_status")]
    for group in groups:
        for item in group or ():
            code = item.get("code") if isinstance(item, dict) else None
            if isinstance(code, str) and code not in codes and len(codes) < MAX_ITEMS:
                codes.append(code[:MAX_TEXT])
    return codes


def summarize(store: dict[str, Any]) -> dict[str, Any]:
    """The sidecar block from the reader's manifest-store JSON."""
    label = store.get("active_manifest")
    manifests = store.get("manifests")
    manifest = None
    if isinstance(manifests, dict) and isinstance(label, str):
        manifest = manifests.get(label)
    state = store.get("validation_state")
    state = state if isinstance(state, str) else None
    failures = _failures(store)
    if not isinstance(manifest, dict):
        return _block(
            INVALID,
            present=True,
            validation_state=state,
            validates=False,
            failures=failures,
            reason="manifest store has no active manifest",
        )
    if state == "Trusted":
        status = TRUSTED
    elif state == "Valid":
        status = VALID
    else:
        status = INVALID
    actions = _actions(manifest)
    created = [a for a in actions if a["digital_source_type"]]
    signer, signed_at = _signer(manifest)
    return _block(
        status,
        present=True,
        validation_state=state,
        validates=status in (TRUSTED, VALID),
        failures=failures,
        manifest=_text(label),
        title=_text(manifest.get("title")),
        claim_generator=_claim_generator(manifest),
        signer=signer,
        signed_at=signed_at,
        digital_source_type=short_source_type(created[0]["digital_source_type"])
        if created
        else None,
        actions=actions,
        ingredients=_ingredients(manifest),
        reason=None if status != INVALID else ", ".join(failures) or "validation failed",
    )


@functools.cache
def _settings_json(trust_anchors: str | None) -> str:
    settings: dict[str, Any] = {
        # Never fetch: the manifest of a remote-manifest asset names a URL of its author's
        # choosing; reading it would be a request the fetcher's address checks never saw.
        "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
    }
    if trust_anchors:
        with open(trust_anchors, encoding="utf-8") as fh:
            settings["trust"] = {"user_anchors": fh.read()}
    return json.dumps(settings)


def read_bytes(data: bytes, content_type: str, trust_anchors: str | None = None) -> dict[str, Any]:
    """Read and validate the manifest store of ``data`` (blocking; native code)."""
    try:
        import c2pa
    except Exception as exc:
        return _block(SKIPPED, present=None, reason=f"c2pa-python unavailable: {exc}"[:MAX_TEXT])
    try:
        context = c2pa.Context.from_json(_settings_json(trust_anchors))
        try:
            reader = c2pa.Reader.try_create(content_type, io.BytesIO(data), None, context)
            if reader is None:
                return _block(ABSENT, present=False)
            with reader:
                store = json.loads(reader.json())
        finally:
            context.close()
    except (c2pa.C2paError, ValueError, TypeError, UnicodeError) as exc:
        # The asset or its manifest store would not parse: truncated, malformed or hostile.
        # Whether a store was there at all is told by its JUMBF label, looked for plainly.
        return _block(
            UNREADABLE, present=MANIFEST_LABEL in data, validates=False, reason=_text(str(exc))
        )
    if not isinstance(store, dict):
        return _block(UNREADABLE, present=True, validates=False, reason="manifest is not JSON")
    return summarize(store)


def _chunks_hold(data: bytes, pos: int, box: bytes, end_box: bytes, little: bool) -> bool | None:
    """Walk a PNG's (big-endian lengths, CRC after each chunk) or RIFF's (little-endian, padded
    to even) chunk list for ``box``: True if found, False if the list ends cleanly without it,
    None if the structure does not hold together (the caller then searches the bytes)."""
    size = len(data)
    order: Literal["big", "little"] = "little" if little else "big"
    kind_at, length_at = (0, 4) if little else (4, 0)  # RIFF: id then size; PNG: the reverse
    while pos + 8 <= size:
        kind = data[pos + kind_at : pos + kind_at + 4]
        length = int.from_bytes(data[pos + length_at : pos + length_at + 4], order)
        if kind == box:
            return True
        pos += 8 + length + ((length & 1) if little else 4)
        if kind == end_box:
            break
    if pos == size:
        return False
    if pos > size:
        return None
    return MANIFEST_STORE_BOX in data[pos:]  # bytes after the end: searched like any others


def may_hold_manifest(data: bytes) -> bool:
    """False only where no C2PA manifest store can be: a PNG without a ``caBX`` chunk, a WebP
    without a ``C2PA`` chunk (their chunk lists are walked, a handful of steps), or any other
    bytes without a manifest store's description box (searched: ~0.5 ms per 2 MiB)."""
    found: bool | None = None
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        found = _chunks_hold(data, 8, b"caBX", b"IEND", little=False)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        found = _chunks_hold(data, 12, b"C2PA", b"", little=True)
    if found is None:
        found = MANIFEST_STORE_BOX in data
    return found


def _copy(file: IO[bytes], limit: int) -> bytes:
    file.seek(0)
    try:
        return file.read(limit)
    finally:
        file.seek(0)


async def _in_thread(data: bytes, content_type: str, anchors: str | None) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = asyncio.Semaphore(READERS)
    await slots.acquire()
    done: asyncio.Future[dict[str, Any]] = loop.create_future()

    def settle(result: dict[str, Any] | None, error: BaseException | None) -> None:
        slots.release()  # by the thread's end, not by the awaiting task: it may have given up
        if done.done():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result or {})

    def work() -> None:
        result, error = None, None
        try:
            result = read_bytes(data, content_type, anchors)
        except BaseException as exc:
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop has closed meanwhile: nobody is waiting
            pass

    try:
        threading.Thread(target=work, name="receiver-c2pa", daemon=True).start()
    except BaseException:
        slots.release()
        raise
    return await done


async def read(file: IO[bytes], content_type: str, settings: ProvenanceSettings) -> dict[str, Any]:
    """The provenance block of an archived image, within the time budget; never raises."""
    if not settings.read_c2pa:
        return skipped("provenance.read_c2pa is off")
    try:
        loop = asyncio.get_running_loop()
        copying = _copying.get(loop)
        if copying is None:
            copying = _copying[loop] = asyncio.Semaphore(READERS)
        # As many images copied into memory at once as there are readers: with 64 jobs in
        # flight, copies made before waiting for a reader added 54 MiB to the peak (bench/).
        async with copying:
            # Plain file I/O, no parsing: the reader thread gets bytes of its own, so a read
            # that outlives its budget never touches the worker's file after it is closed.
            if isinstance(file, io.BytesIO):
                data = file.getvalue()  # the immutable bytes the fetcher read: not a copy
            else:
                data = await asyncio.to_thread(_copy, file, settings.max_bytes + 1)
            if len(data) > settings.max_bytes:
                return skipped(f"image larger than provenance.max_bytes ({settings.max_bytes})")
            if not may_hold_manifest(data):
                # Without a manifest store's description box there is no store, and the reader
                # (a thread and ~2 ms of CPU per 2 MiB image) has nothing to find.
                return _block(ABSENT, present=False)
            return await asyncio.wait_for(
                _in_thread(data, content_type, settings.trust_anchors), settings.timeout_seconds
            )
    except TimeoutError:
        limit = settings.timeout_seconds
        log.warning("C2PA read took longer than %.1fs; recorded as skipped", limit)
        return skipped(f"reading took longer than provenance.timeout_seconds ({limit:g})")
    except Exception as exc:  # the reader must never fail an archive job
        log.warning("C2PA read failed: %r", exc)
        return _block(UNREADABLE, present=None, reason=_text(repr(exc)))
