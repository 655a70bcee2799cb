"""The safe fetcher against an httpx.MockTransport origin and a stub resolver, so every
address check is exercised without the network."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest

from receiver.config import FetchSettings
from receiver.errors import FetchError, FetchExpired, FetchRefused
from receiver.fetch import Fetcher, redact_url, sniff_image
from receiver.simulator.images import render_png

pytestmark = pytest.mark.anyio

PNG = render_png("fetch", width=3, height=2)
DNS = {
    "cdn.example": ["93.184.216.34"],
    "internal.example": ["10.0.0.8"],
    "meta.example": ["169.254.169.254"],
    "mixed.example": ["93.184.216.34", "127.0.0.1"],
    "v6.example": ["fd00::1"],
    "mapped.example": ["::ffff:127.0.0.1"],
}


async def resolver(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError("name not known")
    return DNS[host]


def make(handler: object, **settings: object) -> tuple[Fetcher, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def route(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)  # type: ignore[operator, no-any-return]

    fetcher = Fetcher(
        FetchSettings(**settings),  # type: ignore[arg-type]
        transport=httpx.MockTransport(route),
        resolver=resolver,
    )
    return fetcher, seen


def test_sniffing() -> None:
    assert sniff_image(PNG) == ("image/png", "png")
    assert sniff_image(b"\xff\xd8\xff\xe0rest") == ("image/jpeg", "jpg")
    assert sniff_image(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == ("image/webp", "webp")
    assert sniff_image(b"GIF89a....") == ("image/gif", "gif")
    assert sniff_image(b"\x00\x00\x00\x1cftypavif\x00\x00") == ("image/avif", "avif")
    assert sniff_image(b"<html><body>") is None
    assert sniff_image(b"") is None


def test_redaction_drops_query_and_credentials() -> None:
    shown = redact_url("https://user:pw@cdn.example/a.png?X-Amz-Signature=secret#frag")
    assert "secret" not in shown and "pw" not in shown and shown.endswith("/a.png")


async def test_fetches_to_the_checked_address_with_the_host_header() -> None:
    fetcher, seen = make(lambda r: httpx.Response(200, content=PNG))
    got = await fetcher.fetch("https://cdn.example/x/0.png?sig=abc")
    assert got.sha256 == hashlib.sha256(PNG).hexdigest() and got.size == len(PNG)
    assert (got.content_type, got.ext, got.width, got.height) == ("image/png", "png", 3, 2)
    assert got.file.read() == PNG
    got.close()
    assert seen[0].url.host == "93.184.216.34"
    assert seen[0].headers["host"] == "cdn.example"
    assert seen[0].extensions["sni_hostname"] == "cdn.example"
    await fetcher.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.png",
        "http://localhost.invalid/a.png",
        "http://internal.example/a.png",
        "http://meta.example/latest/meta-data",
        "http://mixed.example/a.png",
        "http://v6.example/a.png",
        "http://mapped.example/a.png",
        "http://[::1]/a.png",
        "http://0.0.0.0/a.png",
    ],
)
async def test_non_public_addresses_are_refused_before_connecting(url: str) -> None:
    fetcher, seen = make(lambda r: httpx.Response(200, content=PNG))
    with pytest.raises((FetchRefused, FetchError)) as info:
        await fetcher.fetch(url)
    assert seen == []
    if "invalid" not in url:
        assert isinstance(info.value, FetchRefused) and "address" in str(info.value)


async def test_allow_list_admits_a_private_network() -> None:
    fetcher, seen = make(
        lambda r: httpx.Response(200, content=PNG), allowed_networks=["10.0.0.0/8"]
    )
    got = await fetcher.fetch("http://internal.example/a.png")
    got.close()
    assert seen[0].url.host == "10.0.0.8"


async def test_each_redirect_is_checked() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/start":
            return httpx.Response(302, headers={"location": "http://meta.example/latest"})
        return httpx.Response(200, content=PNG)

    fetcher, seen = make(handler)
    with pytest.raises(FetchRefused, match="address"):
        await fetcher.fetch("http://cdn.example/start")
    assert [r.url.path for r in seen] == ["/start"]


async def test_redirects_are_followed_to_public_hosts_and_capped() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        n = int(request.url.path.strip("/") or 0)
        if n < 3:
            return httpx.Response(302, headers={"location": f"/{n + 1}"})
        return httpx.Response(200, content=PNG)

    fetcher, _ = make(handler)
    (await fetcher.fetch("http://cdn.example/0")).close()
    capped, _ = make(handler, max_redirects=2)
    with pytest.raises(FetchRefused, match="redirects"):
        await capped.fetch("http://cdn.example/0")


@pytest.mark.parametrize("scheme", ["file:///etc/passwd", "ftp://cdn.example/a.png", "gopher://x"])
async def test_only_http_schemes(scheme: str) -> None:
    fetcher, seen = make(lambda r: httpx.Response(200, content=PNG))
    with pytest.raises(FetchRefused, match="http"):
        await fetcher.fetch(scheme)
    assert seen == []


async def test_html_is_not_an_image() -> None:
    page = b"<!doctype html><html><body>" + b"x" * 100
    fetcher, _ = make(
        lambda r: httpx.Response(200, content=page, headers={"content-type": "image/png"})
    )
    with pytest.raises(FetchRefused, match="not an image"):
        await fetcher.fetch("http://cdn.example/a.png")


async def test_size_cap_on_declared_and_streamed_bodies() -> None:
    big = PNG + b"\0" * 5000
    fetcher, _ = make(lambda r: httpx.Response(200, content=big), max_bytes=1000)
    with pytest.raises(FetchRefused, match="1000"):
        await fetcher.fetch("http://cdn.example/a.png")

    def stream() -> Iterator[bytes]:  # the download runs in a thread with a sync client
        yield PNG
        for _ in range(10):
            yield b"\0" * 500

    chunked, _ = make(lambda r: httpx.Response(200, content=stream()), max_bytes=1000)
    with pytest.raises(FetchRefused, match="1000"):
        await chunked.fetch("http://cdn.example/a.png")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (404, FetchExpired),
        (403, FetchExpired),
        (410, FetchExpired),
        (503, FetchError),
        (429, FetchError),
        (400, FetchRefused),
    ],
)
async def test_status_classes(status: int, error: type[Exception]) -> None:
    fetcher, _ = make(lambda r: httpx.Response(status))
    with pytest.raises(error):
        await fetcher.fetch("http://cdn.example/a.png")


async def test_network_errors_are_transient() -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    fetcher, _ = make(boom)
    with pytest.raises(FetchError) as info:
        await fetcher.fetch("http://cdn.example/a.png")
    assert not isinstance(info.value, (FetchRefused, FetchExpired))


async def test_inline_bytes_get_the_same_checks() -> None:
    fetcher, _ = make(lambda r: httpx.Response(500))
    got = await fetcher.fetch_bytes(PNG, "inline:eigenai")
    assert got.sha256 == hashlib.sha256(PNG).hexdigest() and got.width == 3
    got.close()
    with pytest.raises(FetchRefused, match="not an image"):
        await fetcher.fetch_bytes(b"{}", "inline:eigenai")


async def test_bodies_of_known_length_stay_in_memory_within_the_budget() -> None:
    fetcher, _ = make(lambda r: httpx.Response(200, content=PNG))
    held = await fetcher.fetch("https://cdn.example/a.png")
    assert fetcher.budget.used == len(PNG) and held.body() == PNG
    fetcher.budget.limit = len(PNG) + 1  # room for no second body in memory
    spooled = await fetcher.fetch("https://cdn.example/b.png")
    assert fetcher.budget.used == len(PNG)
    assert not isinstance(spooled.body(), bytes) and spooled.file.read() == PNG
    assert spooled.sha256 == held.sha256 == hashlib.sha256(PNG).hexdigest()
    held.close()
    spooled.close()
    assert fetcher.budget.used == 0
    await fetcher.aclose()


async def test_a_refused_body_gives_its_memory_back() -> None:
    fetcher, _ = make(lambda r: httpx.Response(200, content=b"<html>" + bytes(100)))
    with pytest.raises(FetchRefused):
        await fetcher.fetch("https://cdn.example/a.png")
    assert fetcher.budget.used == 0
    await fetcher.aclose()


async def test_total_timeout_stops_the_download_thread() -> None:
    import asyncio
    import threading

    released = threading.Event()

    def trickle() -> Iterator[bytes]:
        yield PNG
        while not released.wait(0.01):  # never ends on its own
            yield b"\0"

    fetcher, _ = make(lambda r: httpx.Response(200, content=trickle()), total_timeout=0.2)
    try:
        with pytest.raises(FetchError, match="not finished within"):
            await fetcher.fetch("https://cdn.example/slow.png")
        # The download thread noticed and quit: its pool drains although the body never ends.
        await asyncio.wait_for(asyncio.to_thread(fetcher._threads.shutdown, True), 10)
        assert fetcher.budget.used == 0
    finally:
        released.set()
        await fetcher.aclose()


@pytest.mark.parametrize("size", [(1, 1), (3, 2), (1024, 768), (70000, 1)])
def test_png_dimensions_are_read_from_its_header_as_pillow_reads_them(
    size: tuple[int, int],
) -> None:
    import io

    from PIL import Image

    from receiver.fetch import SNIFF_BYTES, _dimensions

    buf = io.BytesIO()
    Image.new("L", size).save(buf, "PNG")
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as img:
        assert img.size == size
    assert _dimensions(io.BytesIO(data), data[:SNIFF_BYTES]) == size
    jpeg = io.BytesIO()
    Image.new("RGB", (7, 5)).save(jpeg, "JPEG")
    assert _dimensions(jpeg, jpeg.getvalue()[:SNIFF_BYTES]) == (7, 5)  # Pillow's path
