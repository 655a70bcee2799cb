"""Destinations by ``type``: filesystem, s3, bunny."""

from __future__ import annotations

from ..config import DestinationSettings
from ..errors import ConfigError
from ..registry import load_class
from .base import Destination

__all__ = ["REGISTRY", "Destination", "build_destination"]

# ``type`` -> "module:Class"; the class builds itself with ``from_settings``.
REGISTRY: dict[str, str] = {
    "filesystem": "receiver.destinations.filesystem:FilesystemStore",
    "s3": "receiver.destinations.s3:S3Store",
    "bunny": "receiver.destinations.bunny:BunnyStore",
}


def build_destination(name: str, settings: DestinationSettings) -> Destination:
    """The destination ``[destinations.<name>]`` configures (not yet reached)."""
    cls = load_class(REGISTRY, settings.type)
    if cls is None:
        raise ConfigError(f"destinations.{name}.type: unknown destination type")
    store: Destination = cls.from_settings(name, settings)
    return store
