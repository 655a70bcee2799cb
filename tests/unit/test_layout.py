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
