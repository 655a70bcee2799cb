"""The ledger contract on SQLite (a WAL file) and on the in-memory variant."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from receiver.errors import ConfigError
from receiver.ledger import Ledger, open_ledger
from receiver.ledger.sqlite import MemoryLedger, SqliteLedger

from .ledger_contract import LedgerContract, new

pytestmark = pytest.mark.anyio


class TestSqliteLedger(LedgerContract):
    @pytest.fixture
    async def ledger(self, tmp_path: Path) -> AsyncIterator[Ledger]:
        ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
        await ledger.open()
        yield ledger
        await ledger.close()


class TestMemoryLedger(LedgerContract):
    @pytest.fixture
    async def ledger(self) -> AsyncIterator[Ledger]:
        ledger = open_ledger("memory://")
        assert isinstance(ledger, MemoryLedger)
        await ledger.open()
        yield ledger
        await ledger.close()


async def test_two_connections_share_one_file_and_migrate_once(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    a, b = SqliteLedger(path), SqliteLedger(path)
    await a.open()
    await b.open()
    try:
        task, _ = await a.create_task(new())
        seen = await b.get_task(task.id)
        assert seen is not None and seen.id == task.id
    finally:
        await a.close()
        await b.close()


def test_unknown_scheme_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="ledger_url"):
        open_ledger("mysql://x")
