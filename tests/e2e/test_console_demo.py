"""`receiver demo` ends by saying where the console is; with --serve it keeps serving it,
signed in with the key it prints, until Ctrl-C."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import Proc, free_port

from ..console_kit import sign_in


def test_demo_last_line_names_the_console(tmp_path: Path) -> None:
    demo = Proc(["demo", "--dir", str(tmp_path / "out")], tmp_path / "demo.log").start()
    assert demo.proc is not None
    assert demo.proc.wait(120) == 0, demo.output()
    last = demo.output().strip().splitlines()[-1]
    assert last.startswith("console: ") and "http://127.0.0.1:8000/ui/" in last
    assert "receiver demo --serve" in last


@pytest.mark.anyio
async def test_demo_serve_keeps_the_console_open_until_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    demo = Proc(
        ["demo", "--dir", str(tmp_path / "out"), "--serve", "--port", str(port)],
        tmp_path / "demo.log",
    ).start()
    assert demo.proc is not None
    try:
        deadline = time.monotonic() + 120
        while "console: " not in demo.output():
            assert demo.proc.poll() is None, demo.output()
            assert time.monotonic() < deadline, demo.output()
            time.sleep(0.2)
        lines = demo.output().strip().splitlines()
        assert lines[-1] == f"console: http://127.0.0.1:{port}/ui/"
        key = re.search(r"API key (\S+);", demo.output())
        assert key
        async with httpx.AsyncClient(timeout=30) as client:
            await sign_in(client, f"http://127.0.0.1:{port}", key.group(1))
            gallery = await client.get(f"http://127.0.0.1:{port}/ui/?status=archived")
            assert gallery.text.count('<article class="card') == 3
        assert demo.proc.poll() is None  # still serving
        demo.proc.send_signal(signal.SIGINT)
        assert demo.proc.wait(30) in (0, 130)
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
