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
