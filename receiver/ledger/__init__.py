"""Ledger backends chosen by ``ledger_url``: ``sqlite:///path``, ``memory://``, ``postgresql://``."""

from __future__ import annotations

from ..errors import ConfigError
from ..registry import load_class
from .base import Ledger, Listener

__all__ = ["REGISTRY", "Ledger", "Listener", "open_ledger"]

# URL scheme -> "module:Class"; the class builds itself with ``from_url``.
REGISTRY: dict[str, str] = {
    "sqlite": "receiver.ledger.sqlite:SqliteLedger",
    "memory": "receiver.ledger.sqlite:MemoryLedger",
    "postgresql": "receiver.ledger.postgres:PostgresLedger",
    "postgres": "receiver.ledger.postgres:PostgresLedger",
}


def open_ledger(url: str) -> Ledger:
    """Build (not yet open) the ledger ``url`` names."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    try:
        cls = load_class(REGISTRY, scheme)
        if cls is None:
            raise ConfigError(
                f"ledger_url: unsupported scheme in {scheme!r}; "
                "use sqlite:///path, memory:// or postgresql://"
            )
        ledger: Ledger = cls.from_url(url)
    except ImportError:
        # The PostgreSQL drivers are an extra: SQLite-only installs do not carry them.
        raise ConfigError(
            f"ledger_url: {scheme}:// needs the PostgreSQL driver; "
            "install it with: pip install 'flux-receiver[postgres]'"
        ) from None
    return ledger
