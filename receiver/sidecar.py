"""The archive layout and the JSON sidecar written beside every image (the contract)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from . import __version__
from .models import Outcome, Task

SCHEMA = "receiver.sidecar/1"
IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
_EDIT_KEYS = ("input_image", "image_urls", "inputs", "image_path", "image")


def image_key(task: Task, index: int, ext: str) -> str:
    """``{yyyy}/{mm}/{dd}/{task_id}/{n}.{ext}``, dated by the task's creation so every retry
    and every replica computes the same key."""
    day = datetime.fromtimestamp(task.created_at, UTC)
    return f"{day:%Y}/{day:%m}/{day:%d}/{task.id}/{index}.{ext}"


def sidecar_key(image: str) -> str:
    return f"{image}.json"


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
) -> dict[str, Any]:
    edited = any(key.startswith(_EDIT_KEYS) and task.params.get(key) for key in task.params)
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
        "metadata": task.metadata,
        "digital_source_type": source_type,
        "digital_source_type_uri": IPTC + source_type,
        "submitted_at": _iso(task.submitted_at or task.created_at),
        "completed_at": _iso(task.completed_at),
        "archived_at": _iso(archived_at),
        "receiver_version": __version__,
    }


def dumps(sidecar: dict[str, Any]) -> bytes:
    return json.dumps(sidecar, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"
