"""``receiver check``: prove a configuration can run before deploying it."""

from __future__ import annotations

import asyncio
import sys

from .config import Settings
from .destinations import build_destination
from .errors import ReceiverError
from .ledger import open_ledger
from .providers import REGISTRY

TIMEOUT = 15.0


def _line(ok: bool, what: str, detail: str) -> None:
    print(f"{'ok  ' if ok else 'FAIL'}  {what}: {detail}", flush=True)


async def _attempt(what: str, coro: object) -> bool:
    try:
        detail: object = await asyncio.wait_for(coro, TIMEOUT)  # type: ignore[arg-type]
    except TimeoutError:
        _line(False, what, f"no answer within {TIMEOUT:.0f}s")
        return False
    except ReceiverError as exc:
        _line(False, what, exc.message or exc.code)
        return False
    except Exception as exc:  # a check must report, never crash with a traceback
        _line(False, what, f"{type(exc).__name__}: {exc}")
        return False
    _line(True, what, str(detail))
    return True


async def _ledger(settings: Settings) -> str:
    ledger = open_ledger(settings.ledger_url)
    try:
        await ledger.open()
        await ledger.ping()
    finally:
        await ledger.close()
    return f"{settings.ledger_url.split('@')[-1]} reachable, schema up to date"


async def _public_url(settings: Settings) -> bool:
    """Ask ``public_url`` to sign a nonce: providers call back there, so a wrong URL loses
    every callback until the reconciler polls. Unreachable is a warning (the server may not be
    started yet); reachable but not this configuration's server is a failure."""
    import secrets

    import httpx

    from .signatures import probe_matches

    nonce = secrets.token_hex(16)
    what = "public_url"
    try:
        async with httpx.AsyncClient(timeout=5.0, follow_redirects=True) as client:
            response = await client.get(f"{settings.public_url}/healthz", params={"probe": nonce})
    except httpx.HTTPError as exc:
        print(
            f"warn  {what}: {settings.public_url} not reachable from here "
            f"({type(exc).__name__}); start `receiver serve` and check again, or fix public_url",
            flush=True,
        )
        return True
    try:
        answer = response.json().get("probe")
    except (ValueError, AttributeError):
        answer = None
    if isinstance(answer, str) and probe_matches(settings.secret_keys, nonce, answer):
        _line(True, what, f"{settings.public_url} reaches a receiver with these secret_keys")
        return True
    _line(
        False,
        what,
        f"{settings.public_url} answers (HTTP {response.status_code}) but not as a receiver "
        "with these secret_keys: callbacks sent there would be lost; fix public_url",
    )
    return False


async def run_checks(settings: Settings) -> int:
    """One line per check; exit status 1 when any fails."""
    _line(
        True,
        "configuration",
        f"{len(settings.destinations)} destinations, {len(settings.secret_keys)} secret keys",
    )
    results = [await _attempt("ledger", _ledger(settings))]
    for name, conf in settings.destinations.items():
        store = build_destination(name, conf)
        try:
            results.append(await _attempt(f"destination {name} ({conf.type})", store.check()))
        finally:
            await store.close()
    for name, provider_conf in settings.providers.items():
        if name not in REGISTRY:
            _line(False, f"provider {name}", "unknown provider")
            results.append(False)
        elif not provider_conf.api_key and name != "simulated":
            _line(False, f"provider {name}", "api_key is missing")
            results.append(False)
        else:
            has_key = provider_conf.api_key
            _line(True, f"provider {name}", "api_key set" if has_key else "no key needed")
    results.append(await _public_url(settings))
    if settings.provenance.read_c2pa:
        from .provenance import reader_version

        reader = reader_version()
        detail = reader or (
            "c2pa-python cannot be loaded, so every sidecar would say skipped: install it, "
            "or set provenance.read_c2pa = false"
        )
        _line(reader is not None, "provenance", detail)
        results.append(reader is not None)
    if settings.notify.default_url and not settings.notify.secret:
        _line(False, "notify", "default_url is set but notify.secret (whsec_…) is missing")
        results.append(False)
    if not settings.api_keys:
        _line(False, "api_keys", "none configured: every /v1/tasks call will be refused")
        results.append(False)
    ok = all(results)
    print("all checks passed" if ok else "some checks failed", file=sys.stderr if not ok else None)
    return 0 if ok else 1
