"""Provider adapters by name; modules are imported on first use."""

from __future__ import annotations

import importlib

import httpx

from ..config import ProviderSettings
from ..errors import NotFound
from .base import Callback, CallbackTarget, Provider, Submission

# name -> "module:Class"
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
    target = REGISTRY.get(name)
    if target is None:
        raise NotFound(f"unknown provider {name!r} (known: {', '.join(sorted(REGISTRY))})")
    module, _, cls = target.partition(":")
    found: type[Provider] = getattr(importlib.import_module(module), cls)
    return found


def build_provider(
    name: str, settings: ProviderSettings, http: httpx.AsyncClient, *, tolerance_seconds: int = 300
) -> Provider:
    return provider_class(name)(settings, http, tolerance_seconds=tolerance_seconds)


__all__ = [
    "REGISTRY",
    "Callback",
    "CallbackTarget",
    "Provider",
    "Submission",
    "build_provider",
    "provider_class",
]
