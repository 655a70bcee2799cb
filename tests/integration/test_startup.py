"""Issue 12, finding 12: every startup failure is one clear line on stderr and a non-zero exit,
never a traceback; a reader closing the pipe is not an error."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import base_config, free_port, write_config


def run(*argv: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin"},
    )


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def test_serve_on_a_port_in_use(tmp_path: Path, taken_port: int) -> None:
    config = write_config(tmp_path, base_config(tmp_path))
    line = one_line(run("serve", "--config", str(config), "--port", str(taken_port), cwd=tmp_path))
    assert line.startswith(f"receiver: cannot listen on 127.0.0.1:{taken_port}")


def test_simulate_does_not_announce_a_url_it_cannot_bind(tmp_path: Path, taken_port: int) -> None:
    done = run("simulate", "--port", str(taken_port), cwd=tmp_path)
    assert one_line(done).startswith(f"receiver: cannot listen on 127.0.0.1:{taken_port}")
    assert done.stdout == ""


def test_serve_with_postgresql_down(tmp_path: Path) -> None:
    conf = base_config(tmp_path, ledger_url=f"postgresql://user:pw@127.0.0.1:{free_port()}/db")
    config = write_config(tmp_path, conf)
    line = one_line(run("serve", "--config", str(config), "--port", str(free_port()), cwd=tmp_path))
    assert line.startswith("receiver: cannot open the ledger (postgresql://user:***@127.0.0.1")
    assert "pw" not in line


def test_scheme_less_endpoint_url(tmp_path: Path) -> None:
    conf = base_config(
        tmp_path,
        default_destination="m",
        destinations={"m": {"type": "s3", "bucket": "bkt", "endpoint_url": "minio:9000"}},
    )
    config = write_config(tmp_path, conf)
    for command in ("serve", "check"):
        line = one_line(run(command, "--config", str(config), cwd=tmp_path))
        assert "destinations.m.endpoint_url: must be an http(s) URL" in line
        assert line.endswith(f"[{config}]")


class _Task(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"id": "t1", "status": "submitted", "pad": "x" * 500_000}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


def test_status_json_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Task)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "receiver",
                "status",
                "--json",
                "t1",
                "--url",
                url,
                "--api-key",
                "k",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.read(10)  # like `head -c 10`: read a little, then hang up
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0, err
        assert "Traceback" not in err and "BrokenPipe" not in err
    finally:
        server.shutdown()


# --- finding 13: `check` proves public_url reaches this server ---------------------------------


def _check(tmp_path: Path, public_url: str) -> subprocess.CompletedProcess[str]:
    config = write_config(tmp_path, base_config(tmp_path, public_url=public_url), "check.toml")
    return run("check", "--config", str(config), cwd=tmp_path)


def test_check_signs_a_probe_through_public_url(tmp_path: Path) -> None:
    from tests.helpers import Proc, wait_http

    port = free_port()
    config = write_config(tmp_path, base_config(tmp_path, public_url=f"http://127.0.0.1:{port}"))
    server = Proc(["serve", "--port", str(port), "--config", str(config)], tmp_path / "s.log")
    server.start()
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=server.proc)
        done = _check(tmp_path, f"http://127.0.0.1:{port}")
        assert done.returncode == 0, done.stdout + done.stderr
        assert any(
            line.startswith("ok") and "public_url" in line and "these secret_keys" in line
            for line in done.stdout.splitlines()
        ), done.stdout
        # Another configuration's keys: the same server is not "this" server.
        other = base_config(
            tmp_path, public_url=f"http://127.0.0.1:{port}", secret_keys=["another-key-0123456789"]
        )
        done = run("check", "--config", str(write_config(tmp_path, other, "o.toml")), cwd=tmp_path)
        assert done.returncode == 1
        [line] = [ln for ln in done.stdout.splitlines() if "public_url" in ln]
        assert line.startswith("FAIL") and "callbacks sent there would be lost" in line
    finally:
        server.stop()


def test_check_fails_when_public_url_is_some_other_server(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Task)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = _check(tmp_path, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
    assert done.returncode == 1
    [line] = [ln for ln in done.stdout.splitlines() if "public_url" in ln]
    assert line.startswith("FAIL") and "fix public_url" in line


def test_check_only_warns_when_public_url_is_not_up_yet(tmp_path: Path) -> None:
    done = _check(tmp_path, f"http://127.0.0.1:{free_port()}")
    [line] = [ln for ln in done.stdout.splitlines() if "public_url" in ln]
    assert line.startswith("warn") and "not reachable" in line
    assert done.returncode == 0, done.stdout + done.stderr
