"""How each adapter family (ledger, destination, provider) finds its implementations.

Every family keeps a ``REGISTRY`` of key → ``"module:Class"`` (a URL scheme, a destination
``type``, a provider name) and each implementation builds itself with a classmethod:
``Ledger.from_url``, ``Destination.from_settings``, ``Provider.from_settings``, in the manner of
saq's ``Queue.from_url``. Modules are imported on first use, so a deployment without boto3's
S3 or psycopg's PostgreSQL never loads them.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def load_class(registry: Mapping[str, str], key: str) -> type[Any] | None:
    """The class ``registry`` names for ``key``, imported now; None for an unknown key."""
    target = registry.get(key)
    if target is None:
        return None
    module, _, name = target.partition(":")
    found: type[Any] = getattr(importlib.import_module(module), name)
    return found
