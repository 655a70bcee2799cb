"""uvicorn as we run it: slow clients cannot hold connections, headers are capped.

uvicorn closes idle keep-alive connections but gives a client any time it likes to finish a
request's headers (slowloris), and with httptools it has no header size cap. So each
connection measures its request's header block itself (refused with 431 past
``server.max_header_bytes``) and gives it a deadline; the body's per-read deadline is in
:func:`receiver.api.common.read_body`. The guard sits on uvicorn's httptools protocol (a
quarter less CPU per request than h11); ``protocol(h11=True)`` puts it on h11 instead.
Behind nginx, nginx's own timeouts come first (README).
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .config import ServerSettings
from .timers import LazyDeadline


class _HeaderGuard:
    """A deadline and a size cap for the headers of each request, on either of uvicorn's
    HTTP/1.1 protocols (mixed in before it).

    The deadline is a LazyDeadline per connection (receiver.timers): a request's start only
    restarts it, rather than making and cancelling a timer per request."""

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    header_timeout: float = 10.0
    max_header_bytes: int = 16 * 1024
    _deadline: LazyDeadline | None = None
    _head: bytes = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm()

    def data_received(self, data: bytes) -> None:
        # h11 checks its size cap only while a header block is incomplete: a large block that
        # arrives at once would pass. So the block is measured here, up to its blank line.
        if self._deadline is not None and self._deadline.running:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if (end if end >= 0 else len(self._head)) > self.max_header_bytes:
                self._refuse_headers()
                return
            if end >= 0:
                self._head = b""
        super().data_received(data)  # type: ignore[misc]

    def _refuse_headers(self) -> None:
        self._stop()
        body = (
            b'{"error":{"code":"headers_too_large","message":"request headers over '
            + str(self.max_header_bytes).encode()
            + b' bytes (server.max_header_bytes)"}}'
        )
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            + b"content-length: "
            + str(len(body)).encode()
            + b"\r\nconnection: close\r\n\r\n"
            + body
        )
        self.transport.close()

    def on_response_complete(self) -> None:
        self._arm()  # the next request on this connection gets the same deadline
        super().on_response_complete()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        """Headers are due from now."""
        self._head = b""
        if self._deadline is None:
            self._deadline = LazyDeadline(self.loop, self.header_timeout, self._too_slow)
        self._deadline.restart()

    def _disarm(self) -> None:
        """A request's headers are complete."""
        if self._deadline is not None:
            self._deadline.pause()

    def _stop(self) -> None:
        if self._deadline is not None:
            self._deadline.stop()

    def _too_slow(self) -> None:
        waiting_for_headers = self.cycle is None or self.cycle.response_complete
        if waiting_for_headers and not self.transport.is_closing():
            self.transport.close()


class GuardedH11Protocol(_HeaderGuard, H11Protocol):
    """uvicorn's h11 protocol with the header guard."""

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not None and self.cycle is not before:
            self._disarm()  # a request's headers are complete


class GuardedHttpToolsProtocol(_HeaderGuard, HttpToolsProtocol):  # type: ignore[misc]
    """uvicorn's httptools protocol with the header guard."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._disarm()  # a request's headers are complete


class Server(uvicorn.Server):
    """uvicorn's server, telling the app the moment shutdown begins: uvicorn waits for open
    connections before the lifespan's drain, and a server-sent event stream never finishes by
    itself, so without this one open stream held the drain back by the whole graceful timeout."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What exists once the app has started (modules, settings, the app, the runtime and
        # its clients) lives as long as the process. Frozen out of the collector's sight, a
        # full collection walks only what requests made (a tenth of the objects): ~10 us less
        # CPU per callback, measured.
        gc.collect()
        gc.freeze()


def protocol(header_timeout: float, max_header_bytes: int, *, h11: bool = False) -> type[Any]:
    """The guarded protocol with these limits: httptools (a dependency), or h11 if asked."""
    limits = {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes}
    if not h11:
        return type("ReceiverHttpToolsProtocol", (GuardedHttpToolsProtocol,), limits)
    return type("ReceiverH11Protocol", (GuardedH11Protocol,), limits)


def config(app: ASGIApp, server: ServerSettings, **kwargs: Any) -> uvicorn.Config:
    """A uvicorn configuration with our limits (``server.*`` settings)."""
    return uvicorn.Config(
        app,
        http=protocol(server.header_timeout_seconds, server.max_header_bytes),
        h11_max_incomplete_event_size=server.max_header_bytes,
        timeout_keep_alive=int(server.keepalive_seconds),
        **kwargs,
    )


def listen(host: str, port: int) -> socket.socket:
    """Bind before announcing or starting anything, so a port in use is one clear line."""
    from .errors import ReceiverError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ReceiverError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock
