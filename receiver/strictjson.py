"""Strict JSON for everything we read from outside: the task API and provider bodies.

Python's ``json`` accepts ``NaN``, ``Infinity``, numbers that overflow to infinity, lone
surrogates and nesting deep enough to raise RecursionError. Each of those is valid Python but
not valid JSON for anything downstream (PostgreSQL, our own responses, sidecars), so a value
that got in once would fail every later read. :func:`loads` refuses them at the door, naming
the field, and :func:`dumps` refuses them on the way out.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import BadRequest, ValidationFailed

MAX_DEPTH = 32
# Numbers outside a signed 64-bit integer do not survive most JSON readers (or PostgreSQL).
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


class _Constant:
    """What ``NaN``/``Infinity`` parse to, so the walk can name the field holding it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _path(parts: tuple[str | int, ...], prefix: str) -> str:
    out = prefix
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            if not part.isprintable() or _bad_string(part, True):
                part = json.dumps(part)[1:-1]  # escaped, so the message itself stays clean
            out = f"{out}.{part}" if out else part
    return out or "body"


# One decoder for every parse: ``json.loads`` with ``parse_constant`` builds a new decoder and
# scanner on each call.
_DECODER = json.JSONDecoder(parse_constant=_Constant)


def problem(value: Any, *, max_depth: int = MAX_DEPTH, nul: bool = True) -> tuple[str, str] | None:
    """The first (path, what is wrong) in an already parsed value, or None when it is clean.

    A clean value (nearly all of them) is recognised without building a path for each item;
    anything else is walked again to name what is wrong."""
    if _clean(value, 0, max_depth, nul):
        return None
    return _walk(value, max_depth, nul)


def _clean(item: Any, depth: int, max_depth: int, nul: bool) -> bool:
    """True only when :func:`_walk` would find nothing; False whenever in doubt (a subclass of
    a JSON type, too deep), leaving the walk to decide and to name the field. Recursion stops
    past ``max_depth``, so it stays shallow."""
    if depth > max_depth:
        return False
    kind = type(item)
    if kind is str:
        return _clean_text(item, nul)
    if kind is dict:
        for key, child in item.items():
            if (
                type(key) is not str
                or not _clean_text(key, nul)
                or not _clean(child, depth + 1, max_depth, nul)
            ):
                return False
        return True
    if kind is list or kind is tuple:
        return all(_clean(child, depth + 1, max_depth, nul) for child in item)
    if kind is int:
        return bool(INT_MIN <= item <= INT_MAX)
    if kind is float:
        return math.isfinite(item)
    return item is None or kind is bool


def _clean_text(text: str, nul: bool) -> bool:
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return False
    return not (nul and "\x00" in text)


def _walk(value: Any, max_depth: int, nul: bool) -> tuple[str, str] | None:
    """Walks without recursion, so a deeply nested value cannot raise RecursionError here."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if len(path) > max_depth:
            return _path(path[:max_depth], ""), f"nested deeper than {max_depth} levels"
        if isinstance(item, _Constant):
            return _path(path, ""), f"{item.text} is not a JSON number"
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return _path(path, ""), "number out of range"
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                return _path(path, ""), "integer outside the signed 64-bit range"
        elif isinstance(item, str):
            bad = _bad_string(item, nul)
            if bad:
                return _path(path, ""), bad
        elif isinstance(item, dict):
            for key, child in item.items():
                bad = _bad_string(key, nul) if isinstance(key, str) else "keys must be strings"
                if bad:
                    return _path((*path, key if isinstance(key, str) else "?"), ""), ("key " + bad)
                stack.append((child, (*path, key)))
        elif isinstance(item, list | tuple):
            stack.extend((child, (*path, i)) for i, child in enumerate(item))
        else:
            return _path(path, ""), f"{type(item).__name__} is not a JSON value"
    return None


def _bad_string(text: str, nul: bool) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode)"
    if nul and "\x00" in text:
        return "contains a NUL character"
    return None


def loads(
    raw: bytes | str,
    *,
    max_depth: int = MAX_DEPTH,
    prefix: str = "",
    field_error: type[BadRequest] | None = None,
) -> Any:
    """Parse ``raw`` strictly. Syntax errors are BadRequest; a bad value is ValidationFailed
    naming its field (``prefix`` is put before the path), or ``field_error`` when given."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8") from None
    try:
        data = _DECODER.decode(text)
    except RecursionError:
        raise BadRequest(f"body is nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise BadRequest(f"body is not valid JSON: {_short(exc)}") from None
    found = problem(data, max_depth=max_depth)
    if found is not None:
        field = _join(prefix, found[0])
        if field_error is not None:
            raise field_error(f"{field}: {found[1]}")
        raise ValidationFailed(field, found[1])
    return data


def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    if path == "body":
        return prefix
    return f"{prefix}{path}" if path.startswith("[") else f"{prefix}.{path}"


def _short(exc: ValueError) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that refuses NaN and Infinity instead of writing invalid JSON."""
    return json.dumps(value, allow_nan=False, **kwargs)


def scrub(value: Any) -> Any:
    """A copy that any JSON writer accepts: non-finite numbers become null, lone surrogates
    ``?``. For showing values recorded before strict parsing, never for storing new ones."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        if _bad_string(value, False):
            return value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value
