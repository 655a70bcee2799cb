"""Simulated providers speaking each provider's wire format, for tests and the demo."""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from .core import Faults, Simulator

# provider name -> module exposing ``routes(sim) -> list[Route]``
SIMULATORS: dict[str, str] = {
    "simulated": "receiver.simulator.generic",
    "mynth": "receiver.simulator.mynth",
    "bfl": "receiver.simulator.bfl",
    "vtrix": "receiver.simulator.vtrix",
    "apimart": "receiver.simulator.apimart",
    "eigenai": "receiver.simulator.eigenai",
    "replicate": "receiver.simulator.replicate",
    "fal": "receiver.simulator.fal",
}


def build_simulator(
    public_url: str, faults: Faults | None = None, providers: list[str] | None = None
) -> tuple[Starlette, Simulator]:
    """One app serving the named providers' endpoints and the result files."""
    sim = Simulator(public_url, faults)
    routes = sim.routes()
    for name in providers or ["simulated"]:
        if name not in SIMULATORS:
            raise KeyError(name)
        module = importlib.import_module(SIMULATORS[name])
        routes.extend(module.routes(sim))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await sim.aclose()

    return Starlette(routes=routes, lifespan=lifespan), sim


__all__ = ["SIMULATORS", "Faults", "Simulator", "build_simulator"]
