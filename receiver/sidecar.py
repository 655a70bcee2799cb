"""The archive layout and the JSON sidecar written beside every image (the contract)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from . import __version__
from .errors import StoreError
from .models import Outcome, Task

SCHEMA = "receiver.sidecar/1"
IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
# Parameters that carry source images (an edit, not a pure generation). Matched exactly, except
# BFL's numbered input_image_N: a prefix match would also take fal's image_size.
_EDIT_KEYS = ("image_urls", "image_url", "inputs", "image_path", "image", "image_file")


def image_key(task: Task, index: int, ext: str) -> str:
    """``{yyyy}/{mm}/{dd}/{task_id}/{n}.{ext}``, dated by the task's creation so every retry
    and every replica computes the same key."""
    day = datetime.fromtimestamp(task.created_at, UTC)
    return f"{day:%Y}/{day:%m}/{day:%d}/{task.id}/{index}.{ext}"


def sidecar_key(image: str) -> str:
    return f"{image}.json"


def xmp_key(image: str) -> str:
    return f"{image}.xmp"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


def build(
    task: Task,
    outcome: Outcome,
    *,
    index: int,
    content_type: str,
    size: int,
    sha256: str,
    width: int | None,
    height: int | None,
    source_url: str | None,
    archived_at: float,
    default_model: str | None = None,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    edited = any(
        (key in _EDIT_KEYS or key.startswith("input_image")) and task.params.get(key)
        for key in task.params
    )
    source_type = "compositeWithTrainedAlgorithmicMedia" if edited else "trainedAlgorithmicMedia"
    return {
        "schema": SCHEMA,
        "task_id": task.id,
        "provider": task.provider,
        "provider_task_id": task.provider_task_id or outcome.provider_task_id,
        "model": outcome.model or task.model or default_model,
        "prompt": task.prompt,
        "negative_prompt": task.params.get("negative_prompt"),
        "seed": outcome.seed if outcome.seed is not None else task.params.get("seed"),
        "params": task.params,
        "index": index,
        "content_type": content_type,
        "bytes": size,
        "sha256": sha256,
        "width": width,
        "height": height,
        "source_url": source_url,
        "cost": outcome.cost,
        "usage": outcome.usage,
        "metadata": task.metadata,
        "digital_source_type": source_type,
        "digital_source_type_uri": IPTC + source_type,
        "submitted_at": _iso(task.submitted_at or task.created_at),
        "completed_at": _iso(task.completed_at),
        "archived_at": _iso(archived_at),
        "receiver_version": __version__,
        "provenance": provenance,
    }


def dumps(sidecar: dict[str, Any]) -> bytes:
    """Always valid JSON: a value that is not (NaN, a lone surrogate) fails the write for
    good, with the reason, instead of landing in the archive or being retried forever."""
    try:
        text = json.dumps(sidecar, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
        return text.encode() + b"\n"
    except (ValueError, TypeError) as exc:  # UnicodeEncodeError is a ValueError
        raise StoreError(f"the sidecar would not be valid JSON: {exc}", permanent=True) from None


# --- XMP sidecar ---------------------------------------------------------------------------------
# Asset-management tools read ``name.ext.xmp`` beside an image without touching its bytes. The
# IPTC properties are those of the IPTC Photo Metadata Standard (DigitalSourceType; AISystemUsed
# and AIPromptInformation since 2025.1); the sha256 and task id are ours, in a namespace of ours.
NS_RECEIVER = "urn:flux-receiver:xmp:1.0/"
_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(value: Any) -> str:
    """Text an XML 1.0 parser accepts: characters it forbids are dropped, then escaped."""
    return escape(_XML_UNSAFE.sub("", str(value)))


def xmp(doc: dict[str, Any]) -> bytes:
    """A small XMP packet for the image ``doc`` (a sidecar) describes."""
    agent = " ".join(str(part) for part in (doc.get("provider"), doc.get("model")) if part)
    attrs = {
        "Iptc4xmpExt:DigitalSourceType": IPTC + str(doc["digital_source_type"]),
        "xmp:CreatorTool": agent,
        "Iptc4xmpExt:AISystemUsed": doc.get("model") or doc.get("provider"),
        "dc:format": doc.get("content_type"),
        "xmp:CreateDate": doc.get("completed_at") or doc.get("archived_at"),
        "receiver:sha256": doc.get("sha256"),
        "receiver:taskId": doc.get("task_id"),
        "receiver:provider": doc.get("provider"),
        "receiver:providerTaskId": doc.get("provider_task_id"),
        "receiver:c2pa": (doc.get("provenance") or {}).get("status"),
    }
    attr_text = "".join(
        f"\n    {name}={quoteattr(_XML_UNSAFE.sub('', str(value)))}"
        for name, value in attrs.items()
        if value is not None and value != ""
    )
    prompt = _xml_text(doc.get("prompt") or "")
    return f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
    xmlns:receiver="{NS_RECEIVER}"{attr_text}>
   <dc:description>
    <rdf:Alt><rdf:li xml:lang="x-default">{prompt}</rdf:li></rdf:Alt>
   </dc:description>
   <Iptc4xmpExt:AIPromptInformation>{prompt}</Iptc4xmpExt:AIPromptInformation>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="r"?>
""".encode()
