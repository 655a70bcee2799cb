"""The web console at ``/ui``: gallery, task pages, live updates, bulk actions, operations.

Server-rendered (Jinja2, autoescaped) with a small script of our own for live updates; every
page works without JavaScript. Mounted by :func:`receiver.app.create_app` unless
``console.enabled`` is false.
"""

from __future__ import annotations

from .views import Console, mount

__all__ = ["Console", "mount"]
