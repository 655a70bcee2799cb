"""Bulk filters' times: every accepted form gives a finite moment; anything else is a 422
naming the field, never a filter that silently matches nothing."""

from __future__ import annotations

import pytest

from receiver.errors import ValidationFailed
from receiver.replay import parse_time

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1h", NOW - 3600),
        ("30m", NOW - 1800),
        ("1.5d", NOW - 1.5 * 86400),
        ("1700000000", 1_700_000_000.0),
        ("2026-11-30T10:00:00Z", 1_796_032_800.0),
        ("2026-11-30", 1_795_996_800.0),
    ],
)
def test_accepted_forms(raw: str, expected: float) -> None:
    assert parse_time("since", raw, NOW) == expected


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf", "1e999", "1e308w", "0x10", "yesterday"])
def test_non_finite_and_unknown_times_are_refused_naming_the_field(raw: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_time("until", raw, NOW)
    assert "until" in str(caught.value)
