"""The console at scale: gallery first page and prompt search with 100,000 tasks.

``python -m bench --only console`` (or part of a full run). A ledger is filled with 100,000
tasks shaped like real ones (prompts of 6 to 18 words from a 400-word vocabulary, 90%
archived with a sidecar-sized ``objects`` column, failures with reasons, seven providers,
thirty days of creation times), then the console app is asked for pages in process through
httpx's ASGI transport, signed in as a browser would be. "Server time" is request in to last
byte out inside the process: the ledger query plus rendering 48 cards, without a network.
Results go into their own section of docs/benchmarks.md, between markers, so the other
scenarios' report and this one can be refreshed apart.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from receiver.app import create_app
from receiver.config import Settings
from receiver.ledger.postgres import PostgresLedger
from receiver.ledger.sqlite import SqliteLedger

from .common import API_KEY, SECRET, median, percentile

START = "<!-- console:start -->"
END = "<!-- console:end -->"
TASKS = 100_000
TARGET_MS = 300.0
PROVIDERS = ("bfl", "mynth", "vtrix", "apimart", "eigenai", "replicate", "fal")
REASONS = ("fetch_failed", "expired", "provider_error", "moderated", "store_failed")
_WORDS = (
    "lighthouse cliff dawn film grain paper crane subway map greenhouse moon studio light fox "
    "autumn leaves macro photograph harbour zeppelin glass orchard rain kitchen lamplight "
    "portrait desert canyon river bridge tower forest meadow mountain valley ocean wave storm "
    "cloud sunset sunrise night city street market alley rooftop window door garden flower "
    "rose tulip lily cactus fern moss stone brick marble wood copper brass silver gold iron "
    "velvet silk linen wool cotton leather ceramic porcelain crystal amber jade coral pearl "
    "owl raven sparrow heron swan whale dolphin octopus jellyfish turtle tiger lion wolf bear "
    "deer horse rabbit cat dog mouse dragon phoenix robot astronaut knight wizard dancer "
    "painter sailor farmer baker child elder monk queen king soldier pilot diver climber "
    "red orange yellow green blue indigo violet black white grey pastel neon muted vivid "
    "soft hard sharp blurry grainy glossy matte rough smooth warm cold bright dark misty "
    "foggy snowy sunny cloudy stormy quiet busy empty crowded ancient modern futuristic "
    "retro vintage baroque gothic minimal ornate rustic industrial cozy grand tiny giant "
    "watercolor oil charcoal pencil ink gouache pastel fresco mosaic collage woodcut "
    "etching lithograph photograph cinematic isometric aerial closeup wide telephoto "
    "portrait landscape still life interior exterior architecture sculpture illustration "
    "poster postcard stamp map diagram blueprint sketch study render model miniature "
    "train tram bicycle boat ship submarine balloon kite umbrella lantern candle clock "
    "mirror book letter bottle cup teapot bowl basket chair table bed staircase library "
    "museum theatre cinema station airport harbor pier lighthouse windmill barn cottage "
    "castle palace temple cathedral ruin tunnel cave island volcano glacier waterfall "
    "spring summer autumn winter morning noon evening midnight twilight eclipse comet "
    "galaxy nebula planet asteroid satellite rocket aurora rainbow lightning thunder"
).split()


def _objects(rng: random.Random, task_id: str, day: str, prompt: str) -> str:
    """An objects column as the worker writes it: one image with its sidecar."""
    sha = f"{rng.getrandbits(256):064x}"
    key = f"{day}/{task_id}/0.png"
    sidecar = {
        "schema": "receiver.sidecar/1",
        "task_id": task_id,
        "prompt": prompt,
        "model": "flux-2-pro",
        "seed": rng.randrange(2**31),
        "sha256": sha,
        "bytes": 1_482_113,
        "width": 1024,
        "height": 1024,
        "content_type": "image/png",
        "cost": "0.0400",
        "source_url": "https://delivery.example/results/abc/sample.png",
        "digital_source_type": "trainedAlgorithmicMedia",
        "archived_at": "2026-11-30T10:00:00Z",
        "params": {"width": 1024, "height": 1024, "steps": 28},
        "metadata": {"user": f"u{rng.randrange(5000)}"},
    }
    obj = {
        "index": 0,
        "uri": f"s3://bench/{key}",
        "sidecar_uri": f"s3://bench/{key}.json",
        "key": key,
        "sha256": sha,
        "bytes": 1_482_113,
        "content_type": "image/png",
        "width": 1024,
        "height": 1024,
        "sidecar": sidecar,
    }
    return json.dumps([obj], separators=(",", ":"))


def rows(count: int, seed: int = 7) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    now = time.time()
    start = now - 30 * 86400
    out = []
    for i in range(count):
        created = start + (now - start) * i / count
        task_id = f"tsk_{int(created * 1000):012x}{rng.getrandbits(64):016x}"
        prompt = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 18)))
        roll = rng.random()
        status, reason, message, objects = "archived", None, None, "[]"
        day = time.strftime("%Y/%m/%d", time.gmtime(created))
        if roll < 0.90:
            objects = _objects(rng, task_id, day, prompt)
        elif roll < 0.97:
            status, reason = "failed", rng.choice(REASONS)
            message = f"{reason}: the origin answered 503 (after 12 attempts)"
        else:
            status = "submitted"
        out.append(
            (
                task_id,
                PROVIDERS[i % len(PROVIDERS)],
                "flux-2-pro" if i % 3 else "flux-dev",
                prompt,
                '{"width":1024,"height":1024}',
                "archive" if i % 5 else "cold",
                '{"user":"u1"}',
                status,
                created,
                created + 20,
                f"p-{i}",
                reason,
                message,
                objects,
            )
        )
    return out


COLUMNS = (
    "id, provider, model, prompt, params, destination, metadata, status, created_at, "
    "updated_at, provider_task_id, failure_reason, failure_message, objects"
)


async def fill_sqlite(path: Path, data: list[tuple[Any, ...]]) -> None:
    ledger = SqliteLedger(str(path))
    await ledger.open()  # migrations, including the search table and its triggers
    await ledger.close()
    conn = sqlite3.connect(path)
    marks = ", ".join("?" * len(data[0]))
    with conn:
        conn.executemany(f"INSERT INTO tasks ({COLUMNS}) VALUES ({marks})", data)
    conn.execute("ANALYZE")
    conn.close()


async def fill_postgres(url: str, data: list[tuple[Any, ...]]) -> None:
    import psycopg

    ledger = PostgresLedger(url)
    await ledger.open()
    await ledger.close()
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY tasks ({COLUMNS}) FROM STDIN") as copy:
            for row in data:
                copy.write_row(row)
        conn.commit()
        conn.execute("ANALYZE tasks")


def scratch(dsn: str, name: str, *, create: bool) -> str:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')
    return f"{dsn.rsplit('/', 1)[0]}/{name}"


def pages(data: list[tuple[Any, ...]]) -> list[tuple[str, str]]:
    """(label, path): the first page, filters, and searches of a common, a rare and a
    two-word query, picked from the data so the counts are known."""
    counts: dict[str, int] = {}
    for row in data:
        for word in set(row[3].split()):
            counts[word] = counts.get(word, 0) + 1
    common = max(counts, key=lambda w: counts[w])
    rare = min((w for w in counts if counts[w] >= 20), key=lambda w: counts[w])
    return [
        ("gallery, first page", "/ui/"),
        ("gallery, status = failed", "/ui/?status=failed"),
        ("gallery, provider + model", "/ui/?provider=bfl&model=flux-dev"),
        ("gallery, second page (cursor)", "CURSOR"),
        (f"search, common word ({counts[common]:,} tasks)", f"/ui/?q={common}"),
        (f"search, least common word ({counts[rare]:,} tasks)", f"/ui/?q={rare}"),
        ("search, two words", f"/ui/?q={common}+{rare}"),
        ("search, word prefix", f"/ui/?q={common[:4]}"),
        ("search + status = failed", f"/ui/?q={common}&status=failed"),
    ]


async def measure(ledger_url: str, data: list[tuple[Any, ...]], runs: int) -> list[dict[str, Any]]:
    settings = Settings.model_validate(
        {
            "secret_keys": [SECRET],
            "api_keys": [API_KEY],
            "ledger_url": ledger_url,
            "destinations": {
                "archive": {"type": "filesystem", "path": "/tmp/receiver-bench-archive"},
                "cold": {"type": "filesystem", "path": "/tmp/receiver-bench-cold"},
            },
            "default_destination": "archive",
            "log_level": "warning",
        }
    )
    app = create_app(settings, background=False)
    results = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            form = await client.get("/ui/login")
            token = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert token
            await client.post(
                "/ui/login", data={"csrf": token.group(1), "api_key": API_KEY, "next": "/ui/"}
            )
            first = await client.get("/ui/")
            cursor = re.search(r'rel="next" href="([^"]+)"', first.text)
            assert cursor, "no second page"
            for label, path in pages(data):
                if path == "CURSOR":
                    path = cursor.group(1).replace("&amp;", "&")
                times, query = [], []
                cards = 0
                for i in range(runs + 2):
                    started = time.perf_counter()
                    response = await client.get(path)
                    elapsed = (time.perf_counter() - started) * 1000
                    assert response.status_code == 200, (path, response.status_code)
                    if i >= 2:  # two warm-up requests
                        times.append(elapsed)
                        found = re.search(r"([\d.]+) ms</span>", response.text)
                        query.append(float(found.group(1)) if found else float("nan"))
                    cards = response.text.count('<article class="card')
                results.append(
                    {
                        "page": label,
                        "path": path,
                        "cards": cards,
                        "median_ms": median(times),
                        "p95_ms": percentile(times, 95),
                        "query_ms": median(query),
                    }
                )
    return results


async def run_all(tmp: Path, pg: str | None, tasks: int, runs: int) -> dict[str, Any]:
    data = rows(tasks)
    found: dict[str, Any] = {"tasks": tasks, "runs": runs, "backends": {}}
    started = time.perf_counter()
    await fill_sqlite(tmp / "console.db", data)
    found["fill_sqlite_s"] = time.perf_counter() - started
    found["backends"]["SQLite"] = await measure(f"sqlite:///{tmp / 'console.db'}", data, runs)
    if pg:
        url = scratch(pg, "receiver_bench_console", create=True)
        try:
            started = time.perf_counter()
            await fill_postgres(url, data)
            found["fill_postgres_s"] = time.perf_counter() - started
            found["backends"]["PostgreSQL"] = await measure(url, data, runs)
        finally:
            scratch(pg, "receiver_bench_console", create=False)
    return found


def run(tmp: Path, pg: str | None, *, tasks: int = TASKS, runs: int = 15) -> dict[str, Any]:
    return asyncio.run(run_all(tmp, pg, tasks, runs))


def section(r: dict[str, Any], command: str) -> str:
    lines = [
        START,
        "## Console: gallery and prompt search at 100,000 tasks",
        "",
        f"`{command}` fills a ledger with {r['tasks']:,} tasks (prompts of 6 to 18 words from "
        "a 400-word vocabulary; 90% archived with a sidecar-sized `objects` column, 7% "
        "failed, 3% in flight; seven providers; thirty days of creation times; "
        "bench/console.py) and asks the console for each page through httpx's ASGI transport, "
        "signed in. Server time is request in to last byte out inside the process: the ledger "
        "query (SQLite FTS5 / PostgreSQL full text, migration 003) plus rendering 48 cards. "
        f"{r['runs']} requests per page after two warm-up requests; the ledger column is the "
        "query alone, as the page reports it.",
        "",
        "| Ledger | Page | Cards | Server time, median | p95 | Ledger query, median |",
        "|---|---|---:|---:|---:|---:|",
    ]
    worst = 0.0
    for backend, results in r["backends"].items():
        for row in results:
            worst = max(worst, row["p95_ms"])
            lines.append(
                f"| {backend} | {row['page']} | {row['cards']} | {row['median_ms']:.1f} ms "
                f"| {row['p95_ms']:.1f} ms | {row['query_ms']:.1f} ms |"
            )
    verdict = "met" if worst < TARGET_MS else "**missed**"
    lines += [
        "",
        f"Target: gallery first page and prompt search under {TARGET_MS:.0f} ms server time "
        f"with {r['tasks']:,} tasks, SQLite and PostgreSQL: {verdict} (slowest p95 "
        f"{worst:.1f} ms). Filling the ledgers took {r.get('fill_sqlite_s', 0):.0f} s "
        f"(SQLite) and {r.get('fill_postgres_s', 0):.0f} s (PostgreSQL, COPY) on the machine "
        "described above.",
        END,
        "",
    ]
    return "\n".join(lines)


def splice(path: Path, text: str | None, previous: str | None = None) -> None:
    """Put the console section into ``path``: the new one, else the one it had before."""
    doc = path.read_text() if path.exists() else "# Benchmarks\n\n"
    doc = re.sub(rf"\n?{re.escape(START)}.*?{re.escape(END)}\n?", "\n", doc, flags=re.S)
    body = text or previous
    if body:
        doc = doc.rstrip("\n") + "\n\n" + body.strip("\n") + "\n"
    path.write_text(doc)


def existing(path: Path) -> str | None:
    if not path.exists():
        return None
    found = re.search(rf"{re.escape(START)}.*?{re.escape(END)}", path.read_text(), re.S)
    return found.group(0) if found else None
