from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from receiver import log, sidecar
from receiver.models import Outcome, OutcomeStatus, Status, Task
from receiver.simulator.images import render_png


def _task(**kw: object) -> Task:
    created = datetime(2026, 3, 9, 23, 59, tzinfo=UTC).timestamp()
    data: dict[str, object] = dict(
        id="tsk_1",
        provider="bfl",
        model="flux-2-pro",
        prompt="a kite",
        params={"seed": 7, "negative_prompt": "rain"},
        destination="d",
        metadata={"u": 1},
        notify_url=None,
        status=Status.COMPLETED,
        created_at=created,
        updated_at=created,
        provider_task_id="p1",
        completed_at=created + 5,
    )
    data.update(kw)
    return Task(**data)  # type: ignore[arg-type]


def test_keys_follow_the_contract_layout_dated_by_creation() -> None:
    key = sidecar.image_key(_task(), 2, "webp")
    assert key == "2026/03/09/tsk_1/2.webp"
    assert sidecar.sidecar_key(key) == "2026/03/09/tsk_1/2.webp.json"


def test_sidecar_fields() -> None:
    outcome = Outcome(OutcomeStatus.SUCCEEDED, seed=99, cost="0.04", model="flux-2-pro-v")
    doc = sidecar.build(
        _task(),
        outcome,
        index=0,
        content_type="image/png",
        size=10,
        sha256="ab",
        width=4,
        height=3,
        source_url="https://x/y.png",
        archived_at=1_800_000_000.0,
    )
    assert doc["schema"] == "receiver.sidecar/1"
    assert doc["seed"] == 99 and doc["cost"] == "0.04" and doc["model"] == "flux-2-pro-v"
    assert doc["negative_prompt"] == "rain" and doc["metadata"] == {"u": 1}
    assert doc["digital_source_type"] == "trainedAlgorithmicMedia"
    assert doc["completed_at"].endswith("Z") and doc["archived_at"].startswith("2027-01-15")
    json.loads(sidecar.dumps(doc))
    edit = sidecar.build(
        _task(params={"input_image": "https://x/in.png"}),
        outcome,
        index=0,
        content_type="image/png",
        size=1,
        sha256="a",
        width=None,
        height=None,
        source_url=None,
        archived_at=0.0,
    )
    assert edit["digital_source_type"] == "compositeWithTrainedAlgorithmicMedia"


def test_logs_never_carry_secrets_tokens_or_signed_queries() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log.JsonFormatter())
    logger = logging.getLogger("receiver.test-scrub")
    logger.addHandler(handler)
    logger.warning(
        "fetch https://cdn.example/x.png?X-Amz-Signature=abc&sig=def failed; "
        "hook /v1/hooks/bfl/WyJ0c2tfMSJd.c2lnbmF0dXJl with whsec_c2VjcmV0 and Bearer key123",
        extra={"task_id": "tsk_1", "provider": "bfl"},
    )
    line = json.loads(stream.getvalue())
    text = line["msg"]
    for secret in ("X-Amz-Signature", "def", "WyJ0c2tfMSJd", "c2VjcmV0", "key123"):
        assert secret not in text
    assert line["task_id"] == "tsk_1" and line["provider"] == "bfl"


# Pieces that come near what the scrubber looks for (whole secrets and their fragments), so
# generated lines exercise each pattern and the literals that gate it.
_NEAR = st.sampled_from(
    [
        "https://cdn.example/a.png?X-Amz-Signature=abc",
        "http://h/p?q",
        "HTTP://h/p?q",
        "http:/",
        "://",
        "?q=1&x",
        "/v1/hooks/bfl/WyJ0c2tfMSJd.c2ln",
        "/v1/hooks/",
        "/v1/hook/bfl/x",
        "bfl/",
        "whsec_c2VjcmV0==",
        "wbs_key",
        "Bearer key123",
        "bearer key",
        "whsec",
        "access_token=s3cr3t",
        "access_token=x",
        " ",
        '"',
        "&",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_NEAR, _NEAR, _NEAR, st.text(max_size=4)), max_size=10))
def test_scrub_skips_only_regexes_that_cannot_match(parts: list[str]) -> None:
    """Each pattern is run only when the line holds a literal every match of it contains;
    the answer is always what running every pattern gives."""
    text = "".join(parts)
    expected = text
    for _, pattern, repl in log._SCRUB:
        expected = pattern.sub(repl, expected)
    assert log.scrub(text) == expected


def test_simulator_images_are_real_and_unique_per_task() -> None:
    a, b = render_png("task-a:0"), render_png("task-b:0")
    assert a != b
    img = Image.open(io.BytesIO(a))
    assert img.format == "PNG" and img.size == (64, 64)
    big = render_png("big", target_bytes=300_000)
    assert len(big) >= 300_000
    Image.open(io.BytesIO(big)).load()  # decodes: a valid PNG, not just a header
