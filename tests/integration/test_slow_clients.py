"""Issue 12, finding 8: slow or oversized requests cannot hold a replica's connections.

The real application under uvicorn as ``receiver serve`` configures it (receiver.server), on a
loopback port, with raw sockets playing the slow client. Deadlines are set short so the test
waits for an event (the server closing the connection), not for a clock."""

from __future__ import annotations

import contextlib
import functools
import gc
import re
import socket
import threading
from collections.abc import Iterator

import pytest
import uvicorn

from receiver import server as server_mod
from receiver.app import create_app
from receiver.config import load_settings
from tests.helpers import free_port

SECRET = "slow-client-secret-0123456789"


@pytest.fixture(autouse=True, params=["httptools", "h11"])
def http_protocol(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test on both guarded protocols: httptools (what serve uses) and h11."""
    chosen = functools.partial(server_mod.protocol, h11=request.param == "h11")
    monkeypatch.setattr(server_mod, "protocol", chosen)
    return str(request.param)


@contextlib.contextmanager
def serving(**server: object) -> Iterator[int]:
    settings = load_settings(
        None,
        {},
        {
            "secret_keys": [SECRET],
            "api_keys": ["api-key-0123"],
            "ledger_url": "memory://",
            "server": server,
        },
    )
    port = free_port()
    sock = server_mod.listen("127.0.0.1", port)
    config = server_mod.config(
        create_app(settings, background=False),
        settings.server,
        log_config=None,
        access_log=False,
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(500):
        if srv.started:
            break
        threading.Event().wait(0.01)
    try:
        yield port
    finally:
        srv.should_exit = True
        thread.join(10)


def closed_by_server(conn: socket.socket) -> bool:
    """True once the server closes the connection (read returns EOF or a reset)."""
    conn.settimeout(20)
    try:
        while True:
            data = conn.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def answer_of(conn: socket.socket) -> bytes:
    """One whole HTTP answer: its headers and as many body bytes as Content-Length says. The
    server may write the head and the body separately, so one read can return the head alone."""
    conn.settimeout(20)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    while length is not None and len(body) < int(length.group(1)):
        chunk = conn.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_headers_that_never_finish_are_cut_off() -> None:
    with serving(header_timeout_seconds=0.3) as port:
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert closed_by_server(conn)
        # A normal request on a fresh connection is unaffected.
        ok = socket.create_connection(("127.0.0.1", port))
        ok.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert ok.recv(100).startswith(b"HTTP/1.1 200")


def test_a_body_that_stalls_is_408() -> None:
    with serving(body_read_timeout_seconds=0.3) as port:
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(
            b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
            b'Authorization: Bearer api-key-0123\r\nConnection: close\r\n\r\n{"id":'
        )
        answer = answer_of(conn)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"server.body_read_timeout_seconds" in answer


def test_the_body_deadline_is_per_piece_not_for_the_whole_body() -> None:
    """A body that keeps arriving, each piece well within the deadline, is read whole even
    though it takes longer than the deadline in all (the deadline moves with each piece)."""
    body = b'{"provider": "simulated", "prompt": "slow but steady"}'
    pieces = [body[i : i + 12] for i in range(0, len(body), 12)]
    with serving(body_read_timeout_seconds=1.0) as port:
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(
            b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\nAuthorization: Bearer api-key-0123\r\nConnection: close\r\n\r\n"
        )
        for piece in pieces:  # 5 pieces 0.4 s apart: 1.6 s in all, past the 1 s deadline
            threading.Event().wait(0.4)
            conn.sendall(piece)
        answer = answer_of(conn)
        # No provider is configured here: a 422 naming it means the whole body was parsed.
        assert answer.startswith(b"HTTP/1.1 422"), answer
        assert b"'simulated' is not configured" in answer


def test_an_oversized_header_block_is_refused() -> None:
    with serving(max_header_bytes=16384) as port:
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n")
        answer = answer_of(conn)
        assert answer.startswith(b"HTTP/1.1 431"), answer
        assert b"server.max_header_bytes" in answer
        # Just under the cap passes.
        ok = socket.create_connection(("127.0.0.1", port))
        ok.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 15_000 + b"\r\n\r\n")
        ok.settimeout(20)
        assert ok.recv(100).startswith(b"HTTP/1.1 200")


def test_keep_alive_connections_get_the_header_deadline_again() -> None:
    with serving(header_timeout_seconds=0.3, keepalive_seconds=30) as port:
        conn = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        conn.settimeout(20)
        assert conn.recv(4096).startswith(b"HTTP/1.1 200")
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # then nothing more
        assert closed_by_server(conn)


def test_the_header_deadline_is_per_request_on_a_busy_connection() -> None:
    """The deadline is one timer per connection, moved lazily: a connection serving request
    after request for longer than the deadline is not cut off, and a request on it whose
    headers then stall still is."""
    with serving(header_timeout_seconds=0.5, keepalive_seconds=30) as port:
        conn = socket.create_connection(("127.0.0.1", port))
        conn.settimeout(20)
        for _ in range(12):  # 0.1 s apart: 1.2 s in all, past the 0.5 s deadline
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
            threading.Event().wait(0.1)
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # then nothing more
        assert closed_by_server(conn)


@pytest.mark.anyio
async def test_serve_freezes_what_startup_made_out_of_the_collectors_sight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Full collections would otherwise walk every module, setting and client made at startup,
    on a callback's time; ``receiver serve`` freezes them once the app has started."""

    async def started(self: uvicorn.Server, sockets: object = None) -> None:
        return None

    monkeypatch.setattr(uvicorn.Server, "startup", started)
    server = server_mod.Server(uvicorn.Config("never.loaded:app"), on_exit=lambda: None)
    assert gc.get_freeze_count() == 0
    try:
        await server.startup()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
