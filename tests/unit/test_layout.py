"""The module layout the README promises: which parts import which."""

from __future__ import annotations

import subprocess
import sys


def test_worker_command_does_not_import_starlette() -> None:
    """``receiver worker`` runs the background loops only; the HTTP app stays unloaded."""
    code = (
        "import sys, receiver.cli, receiver.background\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('starlette', 'uvicorn'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backoff_testing_mode_restores_the_previous_mode() -> None:
    from receiver import backoff

    with backoff.testing_mode():  # the suite already runs in testing mode
        assert backoff.delay(10, 1.0, 60.0) <= 0.05
        with backoff.testing_mode(False):
            assert backoff.delay(10, 1.0, 60.0) >= 30.0  # full jitter, at least half the cap
        assert backoff.delay(10, 1.0, 60.0) <= 0.05
    try:
        with backoff.testing_mode(False):
            raise RuntimeError("a failing block")
    except RuntimeError:
        pass
    assert backoff.delay(10, 1.0, 60.0) <= 0.05  # restored even after an exception


def test_loggers_are_named_by_their_module() -> None:
    """``logging.getLogger(__name__)`` everywhere, so a logger's name says where it logs from;
    ``receiver.access`` is the one named channel (the README documents it)."""
    import re
    from pathlib import Path

    package = Path(__file__).parents[2] / "receiver"
    named = []
    for path in package.rglob("*.py"):
        for match in re.finditer(r"getLogger\((\"[^\"]*\")\)", path.read_text()):
            if match.group(1) not in ('"receiver.access"', '"receiver"'):
                named.append(f"{path.relative_to(package)}: {match.group(1)}")
    assert named == []


def test_handlers_raise_and_the_app_answers() -> None:
    """No API handler maps errors to responses itself: they raise, app.py's handlers answer."""
    from pathlib import Path

    api = Path(__file__).parents[2] / "receiver" / "api"
    offenders = [
        p.name
        for p in api.glob("*.py")
        if p.name != "common.py"
        and ("except ReceiverError" in p.read_text() or "from_error(" in p.read_text())
    ]
    assert offenders == []


def test_only_the_ledger_announces_changes() -> None:
    """Wake-ups come from the ledger after commit (Runtime relays them); nothing else sends
    its own, so no caller can wake anyone before its change is durable."""
    from pathlib import Path

    package = Path(__file__).parents[2] / "receiver"
    senders = [
        str(p.relative_to(package))
        for p in package.rglob("*.py")
        if ".changes.notify(" in p.read_text()
    ]
    assert senders == ["runtime.py"]
