"""The PULL feed on a platform with many clinics: an application that sees one clinic pages
through its events while 1,000 other clinics' events share the table.

Auth and callbacks run as one process each. The callbacks service's tables are filled in bulk
(BENCH_FEED_EVENTS events over 30 days, one in 1,000 of the application's clinic; the events
table's trigger writes their feed entries, as for every event kept), then the application reads
its whole feed, page after page of 100, over HTTP with an ``events:read`` token. Beside it in
the same run:

- bare asyncpg reading the same pages' rows by primary key: the I/O no feed can avoid;
- the query the feed ran before it had entries of its own (every event in order, the grant
  rule asked of each), on the same data, for the first page.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import aiohttp
import asyncpg

from bench.bookings import _app_id, _markdown, _percentile
from bench.callbacks import _projected, app_token
from bench.harness import bench_database, bench_platform, bench_tenant
from shared.db import create_pool

EVENTS = int(os.environ.get("BENCH_FEED_EVENTS", "200000"))
CLINICS = 1000
PAGE = 100
ROUNDS = int(os.environ.get("BENCH_FEED_ROUNDS", "20"))
SCOPES = ["bookings:read"]

FEED = "GET /v1/events, 100 a page, over HTTP"
BARE = "bare asyncpg: the same rows by primary key"
BEFORE = "the feed's earlier query: every event, the rule asked of each"

# What the feed read before it had entries per application (first page, no cursor).
_EARLIER_FEED = """
    SELECT ev.seq, ev.body FROM events ev
    WHERE ev.txid < pg_snapshot_xmin(pg_current_snapshot())
      AND ev.received_at > now() - interval '30 days'
      AND (ev.application_id = $1
           OR (ev.application_id IS NULL AND ev.clinic_id IS NOT NULL
               AND may_see($1, ev.clinic_id, ev.event_type)))
    ORDER BY ev.txid, ev.seq
    LIMIT 101
"""


async def _fill(pool: asyncpg.Pool, own_clinic: uuid.UUID, group_id: uuid.UUID) -> int:
    """Clinics and events in bulk (their feed entries come from the events table's trigger).
    Returns how many events the application may read."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO clinics SELECT gen_random_uuid(), $1, true, now() "
            "FROM generate_series(1, $2)",
            group_id,
            CLINICS,
        )
        others = [
            r["clinic_id"]
            for r in await conn.fetch(
                "SELECT clinic_id FROM clinics WHERE clinic_id <> $1", own_clinic
            )
        ]
        clinics = [own_clinic, *others[: CLINICS - 1]]
        await conn.execute(
            """
            INSERT INTO events (event_id, event_type, clinic_id, aggregate, sequence,
                                occurred_at, received_at, body)
            SELECT id, 'booking.created', clinic, 'booking:' || g, 1, at, at,
                   json_build_object('id', id, 'type', 'booking.created', 'clinic_id', clinic,
                                     'occurred_at', at, 'data', repeat('x', 700))::text
            FROM generate_series(1, $2) g,
                 LATERAL (SELECT gen_random_uuid(), ($1::uuid[])[1 + g % $3],
                                 now() - make_interval(secs => ($2 - g) * 86400.0 * 29 / $2))
                     AS t (id, clinic, at)
            """,
            clinics,
            EVENTS,
            len(clinics),
        )
        await conn.execute("ANALYZE")
        count: int = await conn.fetchval(
            "SELECT count(*) FROM events WHERE clinic_id = $1", own_clinic
        )
    return count


async def _read_feed(
    session: aiohttp.ClientSession, url: str, token: str
) -> tuple[list[float], list[list[str]]]:
    """The whole feed, page by page: each page's time, and the ids on it."""
    times: list[float] = []
    pages: list[list[str]] = []
    params: dict[str, str] = {"limit": str(PAGE)}
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        started = time.perf_counter()
        async with session.get(url, params=params, headers=headers) as response:
            body: dict[str, Any] = await response.json()
            assert response.status == 200, body
        times.append(time.perf_counter() - started)
        pages.append([item["id"] for item in body["items"]])
        if not body["has_more"]:
            return times, pages
        params["after"] = body["next_cursor"]


async def run() -> tuple[str, dict[str, list[float]]]:
    async with bench_database() as dsn:
        tenant = await bench_tenant(dsn, scopes=SCOPES)
        async with (
            bench_platform(dsn, "callbacks", queues=("callbacks.intake",)) as platform,
            aiohttp.ClientSession() as session,
        ):
            pool = await create_pool(dsn, schema="callbacks", min_size=1, max_size=2)
            try:
                token = await app_token(session, platform.auth_url, tenant, scope="events:read")
                await _projected(pool, _app_id(token), [tenant.clinic_id])
                readable = await _fill(pool, tenant.clinic_id, tenant.group_id)
                url = f"{platform.service_url}/v1/events"
                figures = await _measure(pool, session, url, token, _app_id(token))
            finally:
                await pool.close()
    return _report(figures, readable), figures


async def _measure(
    pool: asyncpg.Pool, session: aiohttp.ClientSession, url: str, token: str, app_id: uuid.UUID
) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {FEED: [], BARE: [], BEFORE: []}
    _, pages = await _read_feed(session, url, token)  # warm-up, and the pages' contents
    async with pool.acquire() as conn:
        seqs = [
            [
                r["seq"]
                for r in await conn.fetch(
                    "SELECT seq FROM events WHERE event_id = ANY ($1::uuid[])", page
                )
            ]
            for page in pages
        ]
        for _ in range(ROUNDS):
            times, _ = await _read_feed(session, url, token)
            figures[FEED] += times
            for page in seqs:
                started = time.perf_counter()
                await conn.fetch("SELECT body FROM events WHERE seq = ANY ($1::bigint[])", page)
                figures[BARE].append(time.perf_counter() - started)
        for _ in range(3):
            started = time.perf_counter()
            await conn.fetch(_EARLIER_FEED, app_id)
            figures[BEFORE].append(time.perf_counter() - started)
    return figures


def _report(figures: dict[str, list[float]], readable: int) -> str:
    rows = []
    for name, times in figures.items():
        ordered = sorted(t * 1000 for t in times)
        rows.append(
            [
                name,
                str(len(ordered)),
                f"{_percentile(ordered, 0.5):.2f}",
                f"{_percentile(ordered, 0.99):.2f}",
            ]
        )
    return _markdown(
        f"The PULL feed — {EVENTS:,} events of {CLINICS:,} clinics in 30 days, the application "
        f"sees one ({readable} events, {PAGE} a page)",
        ["case", "pages", "p50 ms", "p99 ms"],
        rows,
        "feed row: the whole feed read page after page, "
        f"{ROUNDS} times, each request timed from the bench; bare row: the same pages' rows by "
        "primary key on one connection; earlier-query row: its first page only, 3 times",
    )
