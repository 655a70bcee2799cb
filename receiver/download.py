"""How the fetcher's threads talk HTTP: one GET to an address the fetcher already checked.

Two wires behind one small interface. ``SocketWire`` (production) speaks HTTP/1.1 through the
standard library's ``http.client`` on a connection pinned to the checked address, with TLS
verified against the URL's host name, and reads the body in reads of up to a mebibyte: about
a third of the CPU per downloaded image that httpx's streaming (64 KiB reads through h11)
costs in a thread. ``HttpxWire`` sends the same request through any httpx transport, which is
what :mod:`receiver.testing` and the unit tests plug in (``httpx.MockTransport``).

Neither follows redirects nor decides what a status means; the fetcher does both, checking
every hop's address. Neither uses a proxy: a proxy would pick the address itself.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import httpx

from .errors import FetchError

# Streamed bodies (no declared length, or past the in-memory limit) are read into one buffer
# of this size per download, reused for every read: no allocation per read, and 64 downloads
# at once hold 16 MiB of buffers.
READ_BYTES = 256 * 1024
IDLE_PER_ORIGIN = 8  # keep-alive connections kept per (scheme, address, port, host)
DRAIN_BYTES = 64 * 1024  # a redirect's or error's body read to keep its connection
USER_AGENT = "receiver"
ACCEPT = "image/*"


@dataclass(frozen=True)
class Target:
    """One hop: the URL as given, and the checked address to connect to instead of its host."""

    url: httpx.URL
    address: str
    shown: str  # the URL as errors may show it (no credentials, query or fragment)

    @property
    def port(self) -> int:
        return self.url.port or (443 if self.url.scheme == "https" else 80)

    @property
    def host_header(self) -> str:
        return self.url.netloc.decode("ascii")


class Reply(Protocol):
    status: int

    def header(self, name: str) -> str | None:
        """A response header by lower-case name."""

    def chunks(self) -> Iterator[bytes | memoryview]:
        """The body, decoded of any content coding, in pieces; a piece may be a view of a
        buffer the next piece reuses, so each is consumed before asking for the next."""

    def whole(self, size: int) -> bytes | None:
        """The body of declared length ``size`` in one buffer (one allocation the socket reads
        fill, no copies), or None where only ``chunks`` can read it (a content coding)."""

    def drain(self) -> None:
        """Read a short body (a redirect's) to its end, so its connection can be kept."""

    def close(self) -> None:
        """Done with it: the connection is kept when the body was read to its end."""


class Wire(Protocol):
    def open(self, target: Target, timeouts: Timeouts, abort: Abort) -> Reply:
        """Send the GET and read the status and headers; FetchError for any transport failure."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Timeouts:
    connect: float
    read: float


class Abort:
    """Set by the waiting side when it gives up (deadline, shutdown): the download stops at
    once, even inside a blocking read, because its socket is shut down under it."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None

    def is_set(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()
        with self._lock:
            conn = self._conn
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)

    def watch(self, conn: http.client.HTTPConnection | None) -> None:
        with self._lock:
            self._conn = conn
        if conn is not None and self._event.is_set():
            self.set()


def _failed(url: str, exc: BaseException) -> FetchError:
    return FetchError(f"{url}: {type(exc).__name__}: {exc}")


# --- the standard library's HTTP/1.1, pinned to the checked address ---------------------


class _Pinned(http.client.HTTPConnection):
    """Connects to the checked address with the connect timeout, then reads with the read one."""

    def __init__(self, address: str, port: int, timeouts: Timeouts) -> None:
        super().__init__(address, port, timeout=timeouts.connect)
        self.read_timeout = timeouts.read

    def connect(self) -> None:
        super().connect()
        assert self.sock is not None
        self.sock.settimeout(self.read_timeout)


class _PinnedTLS(http.client.HTTPSConnection):
    """TLS to the checked address, the certificate verified for the URL's host (SNI too)."""

    def __init__(
        self, address: str, port: int, timeouts: Timeouts, sni: str, context: ssl.SSLContext
    ) -> None:
        super().__init__(address, port, timeout=timeouts.connect, context=context)
        self.read_timeout = timeouts.read
        self.sni = sni
        self.tls = context

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        assert self.sock is not None
        self.sock = self.tls.wrap_socket(self.sock, server_hostname=self.sni)
        self.sock.settimeout(self.read_timeout)


def tls_context() -> ssl.SSLContext:
    """Verified TLS with certifi's roots, as httpx (the fetcher's earlier client) used."""
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:  # pragma: no cover - certifi comes with httpx
        return ssl.create_default_context()


Key = tuple[str, str, int, str]


class _SocketReply:
    def __init__(
        self,
        wire: SocketWire,
        key: Key,
        conn: http.client.HTTPConnection,
        url: str,
        abort: Abort,
    ) -> None:
        self.wire = wire
        self.abort = abort
        self.key = key
        self.conn: http.client.HTTPConnection | None = conn
        self.url = url
        self.response = conn.getresponse()
        self.status = self.response.status
        self.finished = False

    def header(self, name: str) -> str | None:
        return self.response.getheader(name)

    def chunks(self) -> Iterator[bytes | memoryview]:
        coding = (self.header("content-encoding") or "identity").strip().lower()
        decoder = None
        if coding in ("gzip", "x-gzip", "deflate"):
            # Never asked for; decoded as httpx did, so the hash is of the image's own bytes.
            decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)
        elif coding != "identity":
            raise FetchError(f"{self.url}: unsupported Content-Encoding {coding!r}")
        buffer = memoryview(bytearray(READ_BYTES))
        try:
            while True:
                got = self.response.readinto(buffer)
                if not got:
                    break
                # A view of the reused buffer: valid until the next read, so used at once.
                chunk: bytes | memoryview = buffer[:got]
                if decoder is None:
                    yield chunk
                    continue
                # At most READ_BYTES out per step: a few KiB of gzip can expand to gigabytes,
                # and the caller checks the size cap between pieces.
                while chunk:
                    piece = decoder.decompress(chunk, READ_BYTES)
                    if piece:
                        yield piece
                    chunk = decoder.unconsumed_tail
            if decoder is not None:
                tail = decoder.flush()
                if tail:
                    yield tail
        except (OSError, http.client.HTTPException, zlib.error) as exc:
            raise _failed(self.url, exc) from exc
        self.finished = True

    def whole(self, size: int) -> bytes | None:
        if (self.header("content-encoding") or "identity").strip().lower() != "identity":
            return None
        try:
            data = self.response.read(size)
        except (OSError, http.client.HTTPException) as exc:
            raise _failed(self.url, exc) from exc
        if len(data) != size:
            raise FetchError(f"{self.url}: connection closed after {len(data)} of {size} bytes")
        self.finished = self.response.length == 0
        return data

    def drain(self) -> None:
        """Read a small body to its end so the connection can be kept."""
        with contextlib.suppress(OSError, http.client.HTTPException):
            length = self.response.length
            if length is not None and length <= DRAIN_BYTES:
                self.response.read()
                self.finished = True

    def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        self.abort.watch(None)
        if self.finished and not self.response.will_close:
            self.response.close()
            self.wire.keep(self.key, conn)
        else:
            self.response.close()
            conn.close()


class SocketWire:
    """``http.client`` connections kept alive per origin and checked address."""

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        self.context = context or tls_context()
        self._idle: dict[Key, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _take(self, key: Key) -> http.client.HTTPConnection | None:
        with self._lock:
            idle = self._idle.get(key)
            return idle.pop() if idle else None

    def keep(self, key: Key, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if not self._closed and len(idle) < IDLE_PER_ORIGIN:
                idle.append(conn)
                return
        conn.close()

    def _new(self, target: Target, timeouts: Timeouts) -> http.client.HTTPConnection:
        if target.url.scheme == "https":
            return _PinnedTLS(target.address, target.port, timeouts, target.url.host, self.context)
        return _Pinned(target.address, target.port, timeouts)

    def open(self, target: Target, timeouts: Timeouts, abort: Abort) -> Reply:
        key: Key = (target.url.scheme, target.address, target.port, target.host_header)
        shown = target.shown
        conn = self._take(key)
        if conn is not None:
            conn.timeout = timeouts.connect
            if conn.sock is not None:
                conn.sock.settimeout(timeouts.read)
            try:
                return self._send(conn, key, target, shown, abort)
            except (ConnectionError, http.client.BadStatusLine):
                abort.watch(None)
                conn.close()  # the server closed the idle connection: a fresh one, once
            except (OSError, http.client.HTTPException) as exc:
                abort.watch(None)
                conn.close()
                raise _failed(shown, exc) from exc
        conn = self._new(target, timeouts)
        try:
            return self._send(conn, key, target, shown, abort)
        except (OSError, http.client.HTTPException) as exc:
            abort.watch(None)
            conn.close()
            raise _failed(shown, exc) from exc

    def _send(
        self,
        conn: http.client.HTTPConnection,
        key: Key,
        target: Target,
        shown: str,
        abort: Abort,
    ) -> _SocketReply:
        if conn.sock is None:
            conn.connect()
        abort.watch(conn)
        conn.putrequest(
            "GET",
            target.url.raw_path.decode("ascii"),
            skip_host=True,
            skip_accept_encoding=True,
        )
        conn.putheader("Host", target.host_header)
        conn.putheader("User-Agent", USER_AGENT)
        conn.putheader("Accept", ACCEPT)
        conn.endheaders()
        return _SocketReply(self, key, conn, shown, abort)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [c for conns in self._idle.values() for c in conns]
            self._idle.clear()
        for conn in idle:
            conn.close()


# --- any httpx transport (the testing kit's Origin, MockTransport) -------------------------


class _HttpxReply:
    def __init__(self, response: httpx.Response, url: str) -> None:
        self.response = response
        self.status = response.status_code
        self.url = url

    def header(self, name: str) -> str | None:
        value: str | None = self.response.headers.get(name)
        return value

    def chunks(self) -> Iterator[bytes | memoryview]:
        try:
            yield from self.response.iter_bytes()
        except httpx.TransportError as exc:
            raise _failed(self.url, exc) from exc

    def whole(self, size: int) -> bytes | None:
        if (self.header("content-encoding") or "identity").strip().lower() != "identity":
            return None
        try:
            data = self.response.read()
        except httpx.TransportError as exc:
            raise _failed(self.url, exc) from exc
        if len(data) != size:
            raise FetchError(f"{self.url}: {len(data)} bytes where {size} were declared")
        return data

    def drain(self) -> None:
        return None

    def close(self) -> None:
        self.response.close()


class HttpxWire:
    def __init__(self, transport: httpx.BaseTransport) -> None:
        self.client = httpx.Client(
            transport=transport,
            follow_redirects=False,
            headers={"user-agent": USER_AGENT, "accept": ACCEPT},
        )

    def open(self, target: Target, timeouts: Timeouts, abort: Abort) -> Reply:
        extensions = {"sni_hostname": target.url.host} if target.url.scheme == "https" else {}
        request = self.client.build_request(
            "GET",
            target.url.copy_with(host=target.address),
            headers={"host": target.host_header},
            extensions=extensions,
            timeout=httpx.Timeout(
                connect=timeouts.connect,
                read=timeouts.read,
                write=timeouts.read,
                pool=timeouts.connect,
            ),
        )
        shown = target.shown
        try:
            response = self.client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _failed(shown, exc) from exc
        return _HttpxReply(response, shown)

    def close(self) -> None:
        self.client.close()
