"""Provider adapters by name; modules are imported on first use."""

from __future__ import annotations

import httpx

from ..config import ProviderSettings
from ..errors import NotFound
from ..registry import load_class
from .base import Callback, CallbackTarget, Provider, Submission

# name -> "module:Class"; the class builds itself with ``from_settings``.
REGISTRY: dict[str, str] = {
    "simulated": "receiver.providers.simulated:SimulatedProvider",
    "mynth": "receiver.providers.mynth:MynthProvider",
    "bfl": "receiver.providers.bfl:BflProvider",
    "vtrix": "receiver.providers.vtrix:VtrixProvider",
    "apimart": "receiver.providers.apimart:ApimartProvider",
    "eigenai": "receiver.providers.eigenai:EigenaiProvider",
    "replicate": "receiver.providers.replicate:ReplicateProvider",
    "fal": "receiver.providers.fal:FalProvider",
}


def provider_class(name: str) -> type[Provider]:
    cls = load_class(REGISTRY, name)
    if cls is None:
        raise NotFound(f"unknown provider {name!r} (known: {', '.join(sorted(REGISTRY))})")
    found: type[Provider] = cls
    return found


def build_provider(
    name: str, settings: ProviderSettings, http: httpx.AsyncClient, *, tolerance_seconds: int = 300
) -> Provider:
    """The adapter for ``name`` with its ``[providers.<name>]`` settings."""
    return provider_class(name).from_settings(settings, http, tolerance_seconds=tolerance_seconds)


__all__ = [
    "REGISTRY",
    "Callback",
    "CallbackTarget",
    "Provider",
    "Submission",
    "build_provider",
    "provider_class",
]
