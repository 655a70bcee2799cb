"""Ledger backends chosen by ``ledger_url``: ``sqlite:///path``, ``memory://``, ``postgresql://``."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Ledger, Listener

__all__ = ["Ledger", "Listener", "open_ledger"]


def open_ledger(url: str) -> Ledger:
    """Build (not yet open) the ledger ``url`` names."""
    if url.startswith("sqlite:///"):
        from .sqlite import SqliteLedger

        path = url.removeprefix("sqlite:///")
        if not path:
            raise ConfigError("ledger_url: sqlite:/// needs a file path")
        return SqliteLedger(path)
    if url in ("memory://", "sqlite://", "sqlite:///:memory:"):
        from .sqlite import MemoryLedger

        return MemoryLedger()
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresLedger

        return PostgresLedger(url)
    raise ConfigError(
        f"ledger_url: unsupported scheme in {url.split('://')[0]!r}; "
        "use sqlite:///path, memory:// or postgresql://"
    )
