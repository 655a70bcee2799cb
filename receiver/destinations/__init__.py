"""Destinations by ``type``: filesystem, s3, bunny."""

from __future__ import annotations

from ..config import BunnyDestination, FilesystemDestination, S3Destination
from ..config import Destination as DestinationSettings
from ..errors import ConfigError
from .base import Destination

__all__ = ["Destination", "build_destination"]


def build_destination(name: str, settings: DestinationSettings) -> Destination:
    if isinstance(settings, FilesystemDestination):
        from .filesystem import FilesystemStore

        return FilesystemStore(name, settings)
    if isinstance(settings, S3Destination):
        from .s3 import S3Store

        return S3Store(name, settings)
    if isinstance(settings, BunnyDestination):
        from .bunny import BunnyStore

        return BunnyStore(name, settings)
    raise ConfigError(f"destinations.{name}.type: unknown destination type")
