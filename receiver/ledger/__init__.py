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
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError:
            # The drivers are an extra: SQLite-only installs do not carry them.
            raise ConfigError(
                "ledger_url: postgresql:// needs the PostgreSQL driver; "
                "install it with: pip install 'flux-receiver[postgres]'"
            ) from None
        from .postgres import PostgresLedger

        return PostgresLedger(url)
    raise ConfigError(
        f"ledger_url: unsupported scheme in {url.split('://')[0]!r}; "
        "use sqlite:///path, memory:// or postgresql://"
    )
