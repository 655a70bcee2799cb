"""What has been failing, for ``/readyz``: a destination or provider failing for a while makes
the replica *degraded* (still 200, so it keeps its traffic, with the reason to act on).

Each process keeps its own view, from its own attempts; nothing here is shared or durable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Failing this long, with no success in between, is worth an operator's attention.
DEGRADED_AFTER_SECONDS = 60.0


@dataclass
class _Trouble:
    since: float
    last_error: str


class Troubles:
    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._open: dict[tuple[str, str], _Trouble] = {}

    def failed(self, kind: str, name: str, error: str) -> None:
        """``kind`` is ``destination`` or ``provider``; the first failure starts the clock."""
        found = self._open.get((kind, name))
        if found is None:
            self._open[(kind, name)] = _Trouble(self._now(), error[:300])
        else:
            found.last_error = error[:300]

    def succeeded(self, kind: str, name: str) -> None:
        self._open.pop((kind, name), None)

    def reasons(self, after: float = DEGRADED_AFTER_SECONDS) -> list[str]:
        now = self._now()
        return [
            f"{kind} {name} failing for {now - t.since:.0f}s: {t.last_error}"
            for (kind, name), t in sorted(self._open.items())
            if now - t.since >= after
        ]
