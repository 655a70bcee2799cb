"""Unit tests run in one process with no server: PostgreSQL, moto's S3 server, nginx and
browsers belong to tests/integration and tests/e2e. The shared fixtures that start or need
them are refused here, so a unit test cannot come to depend on one by accident."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from receiver.testing import MemoryRuntime, memory_runtime


def _refuse(name: str) -> None:
    pytest.fail(f"{name} needs a real server; move the test to tests/integration or tests/e2e")


@pytest.fixture
def pg_dsn() -> str:
    _refuse("pg_dsn")
    raise AssertionError


@pytest.fixture
def moto_endpoint() -> str:
    _refuse("moto_endpoint")
    raise AssertionError


@pytest.fixture
def s3_bucket() -> str:
    _refuse("s3_bucket")
    raise AssertionError


@pytest.fixture
async def rt() -> AsyncIterator[MemoryRuntime]:
    """An open in-memory runtime (receiver.testing): ledger, store, origin, provider, inbox."""
    async with memory_runtime() as runtime:
        yield runtime
