"""Property-based tests (hypothesis): whatever arrives, the answer is never a 5xx or a crash,
and whatever is recorded can be read back and shown.

- The task API: random and hostile request bodies (NaN, Infinity, huge numbers, lone
  surrogates, NUL, deep nesting, wrong types, truncation) to ``POST /v1/tasks``.
- Every provider's callback parser, poll reader and submit-answer reader: each provider's own
  fixtures (tests/fixtures/<provider>, shapes from the providers' documents) with one value
  swapped for a hostile one, then recorded into a real (in-memory SQLite) ledger.
"""

from __future__ import annotations

import asyncio
import enum
import json
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from receiver import strictjson
from receiver.config import ProviderSettings, load_settings
from receiver.errors import ReceiverError
from receiver.ledger.sqlite import MemoryLedger
from receiver.models import NewTask, Status
from receiver.providers import REGISTRY, Provider, build_provider
from receiver.runtime import Runtime
from receiver.submit import submit
from tests.unit.hostile_kit import AUTH, harness
from tests.unit.provider_kit import make_task

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# How many examples, the deadline and derandomizing come from the Hypothesis profile that
# tests/conftest.py loads (HYPOTHESIS_PROFILE=dev|ci|deep).
FUZZ = settings()

# Tokens json.dumps cannot write, spliced into the text after dumping.
RAW_TOKENS = {
    "@NAN@": "NaN",
    "@INF@": "-Infinity",
    "@BIG@": "9" * 400,
    "@HUGEEXP@": "1e400",
    "@DEEP@": "[" * 3000 + "]" * 3000,
    "@SURROGATE@": '"\\ud800x"',
    "@NUL@": '"a\\u0000b"',
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(sorted(RAW_TOKENS)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


class _Level(enum.IntEnum):
    LOW = 1


# Parsed values as strictjson.problem meets them, hostile items included (what the parser
# would give for NaN, 1e400, 400 digits, "\ud800"), with types JSON never gives (tuples,
# subclasses, non-string keys, bytes).
clean_scalars = scalars.filter(lambda v: v not in RAW_TOKENS)
hostile_scalars = st.one_of(
    clean_scalars,  # mostly clean, so one hostile item is often the only thing wrong
    clean_scalars,
    clean_scalars,
    clean_scalars,
    st.sampled_from(
        [
            float("nan"),
            float("inf"),
            -(2**63) - 1,
            2**63,
            2**63 - 1,
            "\ud800",
            "a\x00b",
            "é\x00",
            "ok é",
            strictjson._Constant("NaN"),
            _Level.LOW,
            b"raw",
            True,
        ]
    ),
)
parsed_values = st.recursive(
    hostile_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(
            st.one_of(st.text(max_size=4), st.sampled_from(["\ud800", "\x00"])), inner, max_size=3
        ),
        st.dictionaries(st.integers(0, 3), inner, max_size=2),
    ),
    max_leaves=10,
)


ONE_THING_WRONG = [
    float("nan"),
    float("-inf"),
    2**63,
    -(2**63) - 1,
    "\ud800",
    "a\x00b",
    "é\x00",
    strictjson._Constant("Infinity"),
    b"raw",
    _Level.LOW,  # not wrong, but not a type the quick path knows
    {1: "int key"},
    {"\ud800": 1},
    {"a\x00": 1},
    [[[[[1]]]]],  # past a depth limit of 4
]


@pytest.mark.parametrize("bad", ONE_THING_WRONG, ids=repr)
def test_strict_check_names_a_single_problem_wherever_it_sits(bad: Any) -> None:
    """Each kind of problem alone, at the top and nested in an otherwise clean value."""
    for value in (bad, {"a": [1, "x", {"b": bad}]}, [None, True, 1.5, (bad,)]):
        for nul in (True, False):
            expected = strictjson._walk(value, 4, nul)
            assert strictjson.problem(value, max_depth=4, nul=nul) == expected
            if nul and bad is not _Level.LOW:  # an int subclass is an int to the walk
                assert expected is not None


@settings(max_examples=400)
@given(parsed_values, st.integers(min_value=0, max_value=6), st.booleans())
def test_strict_check_takes_the_quick_path_only_for_clean_values(
    value: Any, max_depth: int, nul: bool
) -> None:
    """strictjson.problem answers clean values without walking them: its answer is always
    the full walk's (which names the field), for every depth limit and NUL setting."""
    expected = strictjson._walk(value, max_depth, nul)
    assert strictjson.problem(value, max_depth=max_depth, nul=nul) == expected


def render(value: Any) -> str:
    text = json.dumps(value)
    for token, raw in RAW_TOKENS.items():
        text = text.replace(f'"{token}"', raw)
    return text


def run_in(loop: asyncio.AbstractEventLoop) -> Callable[[Any], Any]:
    return loop.run_until_complete


# --- the task API --------------------------------------------------------------------------------

task_bodies = st.fixed_dictionaries(
    {"provider": st.sampled_from(["simulated", "@NAN@", "nope", ""]), "prompt": values},
    optional={
        "params": st.one_of(
            values, st.dictionaries(st.sampled_from(["count", "seed", "width"]), values, max_size=3)
        ),
        "metadata": values,
        "model": values,
        "destination": values,
        "notify_url": st.one_of(values, st.sampled_from(["http://127.0.0.1/", "ftp://x", "@NUL@"])),
        "extra": values,
    },
)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def test_task_api_never_answers_5xx_and_what_it_records_reads_back(
    loop: asyncio.AbstractEventLoop,
) -> None:
    run = run_in(loop)
    manager = harness()
    h = run(manager.__aenter__())
    try:

        @FUZZ
        @given(body=task_bodies, cut=st.one_of(st.none(), st.integers(0, 200)))
        def check(body: dict[str, Any], cut: int | None) -> None:
            raw = render(body)
            if cut is not None:
                raw = raw[:cut]
            answer = run(h.client.post("/v1/tasks", content=raw.encode(), headers=AUTH))
            assert answer.status_code in (200, 202, 400, 413, 422), answer.text
            error_or_task = strictjson.loads(answer.content)
            if answer.status_code >= 400:
                assert error_or_task["error"]["code"] and error_or_task["error"]["message"]
                return
            shown = run(h.client.get(f"/v1/tasks/{error_or_task['id']}", headers=AUTH))
            assert shown.status_code == 200
            strictjson.loads(shown.content)

        check()
        listed = run(h.client.get("/v1/tasks?limit=200", headers=AUTH))
        assert listed.status_code == 200
        strictjson.loads(listed.content)
    finally:
        run(manager.__aexit__(None, None, None))


# --- every provider's parsers --------------------------------------------------------------------

SIMULATED_BODY = {
    "id": "sim-1",
    "status": "succeeded",
    "images": [{"url": "https://img.example/a.png", "expires_at": 1.9e9}],
    "seed": 7,
    "cost": "0.01",
    "model": "sim-flux-1",
    "error": None,
}


def fixture_bodies(name: str) -> list[Any]:
    folder = FIXTURES / name
    bodies = [SIMULATED_BODY] if name == "simulated" else []
    for path in sorted(folder.glob("*.json")) if folder.exists() else []:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "valid" in data and "_source" in data:
            continue  # request examples, not provider answers
        bodies.append(
            data.get("body", data) if isinstance(data, dict) and "secret" in data else data
        )
    return bodies


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from paths(child, (*prefix, i))


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    copy = list(value)
    copy[head] = replaced(copy[head], rest, new)
    return copy


HOSTILE = st.one_of(
    values,
    st.sampled_from(
        [
            [],
            {},
            3,
            "",
            "x" * 5000,
            ["a", 1],
            {"code": {"x": 1}},
            -1,
            0,
            True,
            "2026-01-01T00:00:00Z",
            [{"url": 5}],
            [{"url": "https://img.example/b.png", "expires_at": "soon"}] * 20,
        ]
    ),
)


def mutated_bodies(name: str) -> st.SearchStrategy[bytes]:
    bodies = fixture_bodies(name)

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        base = draw(st.sampled_from(bodies))
        options = list(paths(base))
        where = draw(st.sampled_from(options))
        return render(replaced(base, where, draw(HOSTILE))).encode()

    return build() if bodies else st.just(b"{}")


PROVIDER_SETTINGS: dict[str, dict[str, Any]] = {
    "fal": {"base_url": "https://queue.fal.test", "api_key": "k:s"},
    "mynth": {
        "api_key": "k",
        "webhook_secret": "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=",
    },
}


def adapter(name: str, answer: Callable[[], bytes]) -> Provider:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            200, content=answer(), headers={"content-type": "application/json"}
        )
    )
    conf = ProviderSettings(**{"api_key": "k", **PROVIDER_SETTINGS.get(name, {})})
    return build_provider(name, conf, httpx.AsyncClient(transport=transport))


def allowed(exc: BaseException) -> bool:
    return isinstance(exc, ReceiverError) and exc.status < 500


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_provider_reads_any_body_without_crashing_and_records_it_cleanly(
    name: str, loop: asyncio.AbstractEventLoop
) -> None:
    run = run_in(loop)
    current: dict[str, bytes] = {"body": b"{}"}
    provider = adapter(name, lambda: current["body"])
    ledger = MemoryLedger()
    run(ledger.open())
    headers = {"content-type": "application/json", "webhook-id": "msg_1"}
    counter = iter(range(10**9))

    async def record(outcome: Any) -> None:
        task, _ = await ledger.create_task(
            NewTask(provider=name, prompt="p", destination="local", id=f"tsk_{next(counter)}")
        )
        await ledger.mark_submitted(task.id, outcome.provider_task_id or "pid", next_poll_at=None)
        await ledger.record_outcome(
            task.id,
            outcome,
            provider=name,
            delivery_key="k",
            deadline=provider.deadline_for(outcome, time.time()),
        )
        got = await ledger.get_task(task.id)
        assert got is not None
        strictjson.dumps(got.public())

    try:

        @FUZZ
        @given(body=mutated_bodies(name))
        def check(body: bytes) -> None:
            current["body"] = body
            try:
                callback = provider.read_callback(headers, body)
            except Exception as exc:
                assert allowed(exc), repr(exc)
            else:
                run(record(callback.outcome))
            if provider.can_poll:
                task = make_task(name, provider_task_id="pid-1", model=provider.default_model)
                try:
                    outcome = run(provider.checked_poll(task))
                except Exception as exc:
                    assert isinstance(exc, ReceiverError) and exc.status < 600, repr(exc)
                else:
                    run(record(outcome))

        check()
    finally:
        run(ledger.close())
        run(provider.http.aclose())


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_provider_submit_answer_ends_submitted_or_failed(
    name: str, loop: asyncio.AbstractEventLoop
) -> None:
    """Whatever the provider answers a submission with, the task ends ``submitted`` (with an
    id) or ``failed`` with a reason: never an exception out of submit, never stuck."""
    run = run_in(loop)
    current: dict[str, bytes] = {"body": b"{}"}
    conf = load_settings(
        None,
        {},
        {
            "secret_keys": ["fuzz-secret-key-0123456789"],
            "ledger_url": "memory://",
            "providers": {name: {"api_key": "k", **PROVIDER_SETTINGS.get(name, {})}},
        },
    )
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            200, content=current["body"], headers={"content-type": "application/json"}
        )
    )
    rt = Runtime(conf, ledger=MemoryLedger(), provider_transport=transport)
    run(rt.open())
    rng = random.Random(12)
    try:

        @FUZZ
        @given(body=mutated_bodies(name))
        def check(body: bytes) -> None:
            current["body"] = body
            new = NewTask(
                provider=name,
                prompt="a fox",
                destination="local",
                model=rt.provider(name).default_model,
                id=f"tsk_{rng.getrandbits(64):016x}",
            )
            task, _ = run(rt.ledger.create_task(new))
            done = run(submit(rt, task))
            assert done.status in (Status.SUBMITTED, Status.COMPLETED, Status.FAILED)
            if done.status is Status.FAILED:
                assert done.failure_reason and done.failure_message
            strictjson.dumps(done.public())

        check()
    finally:
        run(rt.close())
