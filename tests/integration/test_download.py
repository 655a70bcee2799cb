"""The fetcher's wires against a real HTTP server on loopback: what reaches the socket.

The server is scripted at the byte level (keep-alive, chunked bodies, unasked-for gzip, short
bodies, stalls, idle closes, TLS) so each test pins one behaviour of :mod:`receiver.download`
as the production fetcher runs it. Both wires run every common case: ``SocketWire`` (what
``receiver serve`` uses) and ``HttpxWire`` over httpx's real transport (what a transport
plugged into the fetcher goes through)."""

from __future__ import annotations

import datetime
import gzip
import hashlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from receiver.config import FetchSettings
from receiver.download import HttpxWire, SocketWire
from receiver.errors import FetchError, FetchRefused
from receiver.fetch import MEMORY_BODY_BYTES, Fetcher
from receiver.simulator.images import render_png

pytestmark = pytest.mark.anyio

PNG = render_png("download", width=5, height=4)
BIG = PNG + bytes(range(256)) * (MEMORY_BODY_BYTES // 256 + 10)  # spooled, not held whole

Handler = Callable[["Conn", "Request"], None]


@dataclass
class Request:
    path: str
    headers: dict[str, str]


@dataclass
class Conn:
    sock: socket.socket
    closed_by_peer: threading.Event = field(default_factory=threading.Event)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)


class Server:
    """Answers each request on a connection by its path's handler; keeps connections open
    unless the handler closes them."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.tls = tls
        self.routes: dict[str, Handler] = {}
        self.requests: list[Request] = []
        self.conns: list[Conn] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            if self.tls is not None:
                try:
                    sock = self.tls.wrap_socket(sock, server_side=True)
                except (OSError, ssl.SSLError):
                    sock.close()
                    continue
            conn = Conn(sock)
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: Conn) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.sock.recv(65536)
                    if not data:
                        conn.closed_by_peer.set()
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, v in (line.split(":", 1) for line in lines[1:])
                }
                request = Request(path, headers)
                self.requests.append(request)
                self.routes[path.split("?")[0]](conn, request)
        except OSError:
            conn.closed_by_peer.set()

    def url(self, path: str, host: str = "images.example") -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.listener.close()
        for conn in self.conns:
            conn.sock.close()


def ok(body: bytes, *extra: str) -> Handler:
    def handle(conn: Conn, request: Request) -> None:
        head = "\r\n".join(
            ["HTTP/1.1 200 OK", "Content-Type: image/png", f"Content-Length: {len(body)}", *extra]
        )
        conn.send(head.encode() + b"\r\n\r\n" + body)

    return handle


def chunked(body: bytes) -> Handler:
    def handle(conn: Conn, request: Request) -> None:
        conn.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for i in range(0, len(body), 300_000):
            piece = body[i : i + 300_000]
            conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        conn.send(b"0\r\n\r\n")

    return handle


def closing(handler: Handler) -> Handler:
    """The handler's answer, then the server closes the connection (an idle keep-alive end)."""

    def handle(conn: Conn, request: Request) -> None:
        handler(conn, request)
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.sock.close()

    return handle


async def resolver(host: str, port: int) -> list[str]:
    return {"images.example": ["127.0.0.1"], "inside.example": ["10.1.2.3"]}[host]


WIRES = ["socket", "httpx"]


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.close()


def fetcher(wire: str, context: ssl.SSLContext | None = None, **settings: object) -> Fetcher:
    conf = FetchSettings(allowed_networks=["127.0.0.0/8"], **settings)  # type: ignore[arg-type]
    f = Fetcher(conf, resolver=resolver)
    if wire == "httpx":
        f.wire.close()
        f.wire = HttpxWire(httpx.HTTPTransport(verify=context or True))
    elif context is not None:
        f.wire.close()
        f.wire = SocketWire(context)
    return f


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize(
    ("handler", "body"),
    [(ok(PNG), PNG), (chunked(BIG), BIG), (ok(BIG), BIG), (chunked(PNG), PNG)],
    ids=["length-small", "chunked-big", "length-big", "chunked-small"],
)
async def test_image_reaches_the_checked_address_with_its_host(
    server: Server, wire: str, handler: Handler, body: bytes
) -> None:
    server.routes["/a.png"] = handler
    f = fetcher(wire)
    got = await f.fetch(server.url("/a.png?sig=s3cret"))
    try:
        assert got.size == len(body) and got.sha256 == hashlib.sha256(body).hexdigest()
        assert got.file.read() == body
        assert (got.content_type, got.width, got.height) == ("image/png", 5, 4)
        assert "s3cret" not in got.source_url
    finally:
        got.close()
        await f.aclose()
    [request] = server.requests
    assert request.headers["host"] == f"images.example:{server.port}"
    assert request.path == "/a.png?sig=s3cret"


@pytest.mark.parametrize("wire", WIRES)
async def test_unasked_gzip_is_decoded_before_hashing(server: Server, wire: str) -> None:
    packed = gzip.compress(PNG)
    server.routes["/g.png"] = ok(packed, "Content-Encoding: gzip")
    f = fetcher(wire)
    got = await f.fetch(server.url("/g.png"))
    assert got.sha256 == hashlib.sha256(PNG).hexdigest() and got.file.read() == PNG
    got.close()
    await f.aclose()


@pytest.mark.parametrize("wire", WIRES)
async def test_a_body_shorter_than_declared_is_a_fetch_error(server: Server, wire: str) -> None:
    def short(conn: Conn, request: Request) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + PNG)
        conn.sock.shutdown(socket.SHUT_RDWR)

    server.routes["/short.png"] = short
    f = fetcher(wire)
    with pytest.raises(FetchError) as caught:
        await f.fetch(server.url("/short.png"))
    assert not isinstance(caught.value, FetchRefused)  # retryable
    await f.aclose()


@pytest.mark.parametrize("wire", WIRES)
async def test_each_redirect_is_checked_again(server: Server, wire: str) -> None:
    def moved(conn: Conn, request: Request) -> None:
        location = f"http://inside.example:{server.port}/x.png"
        conn.send(
            f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode()
        )

    server.routes["/moved.png"] = moved
    f = fetcher(wire)
    with pytest.raises(FetchRefused, match=r"10\.1\.2\.3"):
        await f.fetch(server.url("/moved.png"))
    await f.aclose()
    assert [r.path for r in server.requests] == ["/moved.png"]


async def test_keep_alive_connections_are_reused_and_a_closed_one_replaced(
    server: Server,
) -> None:
    server.routes["/a.png"] = ok(PNG)
    server.routes["/last.png"] = closing(ok(PNG))
    f = fetcher("socket")
    for path in ("/a.png", "/a.png", "/last.png", "/a.png"):
        got = await f.fetch(server.url(path))
        assert got.file.read() == PNG
        got.close()
    await f.aclose()
    # One connection for the first three; the server closed it, the fourth made a new one
    # (the stale one was detected and the request sent again, not failed).
    assert len(server.conns) == 2
    assert len(server.requests) == 4


async def test_giving_up_shuts_the_socket_under_a_blocked_read(server: Server) -> None:
    stalled = threading.Event()

    def stall(conn: Conn, request: Request) -> None:
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + PNG)
        stalled.set()  # and never sends the rest

    server.routes["/stall.png"] = stall
    # The read timeout alone would keep the download thread for a minute.
    f = fetcher("socket", read_timeout=60.0, total_timeout=0.5)
    with pytest.raises(FetchError, match="not finished within"):
        await f.fetch(server.url("/stall.png"))
    assert stalled.is_set()
    # The download thread's socket was shut down: the server sees the end of the connection.
    assert server.conns[0].closed_by_peer.wait(20)
    await f.aclose()


def _certificate(tmp: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context for ``name``, client context trusting only its self-signed cert)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    client = ssl.create_default_context(cafile=str(cert_path))
    return server, client


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("named", ["images.example", "someone-else.example"])
async def test_tls_is_verified_for_the_url_host_on_the_checked_address(
    tmp_path: Path, wire: str, named: str
) -> None:
    server_ctx, client_ctx = _certificate(tmp_path, named)
    server = Server(tls=server_ctx)
    server.routes["/t.png"] = ok(PNG)
    f = fetcher(wire, client_ctx)
    try:
        if named == "images.example":
            got = await f.fetch(server.url("/t.png"))
            assert got.file.read() == PNG
            got.close()
            assert server.requests[0].headers["host"] == f"images.example:{server.port}"
        else:
            with pytest.raises(FetchError):
                await f.fetch(server.url("/t.png"))
            assert server.requests == []
    finally:
        await f.aclose()
        server.close()


async def test_a_gzip_bomb_comes_out_in_bounded_pieces_and_stops_at_the_cap(
    server: Server,
) -> None:
    """64 MiB of zeros gzip to ~64 KiB: the decoder hands it over a piece of at most
    READ_BYTES at a time, so the cap stops it long before it is all in memory."""
    from receiver.download import READ_BYTES, Target, Timeouts
    from receiver.download import Abort as AbortHandle

    packed = gzip.compress(PNG + bytes(64 * 1024 * 1024), compresslevel=9)
    assert len(packed) < READ_BYTES
    server.routes["/bomb.png"] = ok(packed, "Content-Encoding: gzip")
    wire = SocketWire()
    url = httpx.URL(server.url("/bomb.png"))
    reply = wire.open(Target(url, "127.0.0.1", str(url)), Timeouts(5, 5), AbortHandle())
    try:
        pieces = reply.chunks()
        largest = max(len(next(pieces)) for _ in range(20))
    finally:
        pieces.close()
        reply.close()
        wire.close()
    assert largest <= READ_BYTES
    f = fetcher("socket", max_bytes=2 * 1024 * 1024)
    with pytest.raises(FetchRefused, match=r"larger than the fetch\.max_bytes cap"):
        await f.fetch(server.url("/bomb.png"))
    await f.aclose()
