"""Bookings: availability, booking creation and the race for one slot, each against a bare baseline.

One clinic in Europe/London with 20 practitioners, all offering one 30-minute service and all
working Mon–Sat 08:00–18:00, on the default 15-minute grid. The auth and bookings services run
as one process each (the bookings service verifies tokens against auth's JWKS and fetches the
clinic from auth's internal API); every figure sits next to a baseline measured in the same run.

(a) ``GET …/availability`` over the next 14 days with 2,000 bookings in them, sequential requests
    on one keep-alive connection, against a bare aiohttp handler (a process of its own) running
    the service's calendar query (working hours, published days and busy periods in one round
    trip) and returning its rows as JSON: the I/O without the rules. Target: p99 ≤ 20 ms.
(b) ``POST …/bookings`` from 50 concurrent clients, every request on a slot of its own, against
    a bare asyncpg loop writing the same rows (the booking, its outbox event and the relay's
    NOTIFY in one transaction) from 50 tasks on a pool of the service's size. Targets:
    ≥ 1,000 bookings/s and ≥ 40 % of the bare loop.
(c) 200 concurrent ``POST …/bookings`` for one slot: exactly one may win. Beside it, the same race
    written straight into the table after the service's per-practitioner advisory lock. (Without
    that lock, 200 inserts racing on the exclusion constraint deadlock in Postgres, and a run
    takes anything from 15 s to minutes, so that is not a baseline worth waiting for.)
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import shutil
import statistics
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as wall_time
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
from aiohttp import web
from asyncpg import Range

from bench.harness import (
    bench_database,
    bench_platform,
    bench_tenant,
    free_port,
    server_process,
    table,
    wait_http,
)
from bench.load import LoadResult, post_each_once
from services.bookings import store
from services.bookings.settings import BookingsSettings
from shared import events
from shared.db import create_pool
from shared.outbox import notify_channel

LONDON = ZoneInfo("Europe/London")
PRACTITIONERS = 20
WORKDAYS = range(6)  # Monday … Saturday
OPENS, CLOSES = wall_time(8), wall_time(18)
DURATION = timedelta(minutes=30)
# Bookings sit on half hours, so a practitioner's day holds 20 of them without overlap.
POSITIONS = 20
WINDOW_DAYS = 14
EXISTING = int(os.environ.get("BENCH_EXISTING_BOOKINGS", "2000"))
AVAILABILITY_REQUESTS = int(os.environ.get("BENCH_AVAILABILITY_REQUESTS", "500"))
BOOKINGS = int(os.environ.get("BENCH_BOOKINGS", "3000"))
CLIENTS = 50
RACERS = 200
WARM_UP = 100
BLOCKS = 3  # the creation rows take turns, each writing a third of its bookings at a time

AVAILABILITY = "GET availability, days kept"
AVAILABILITY_ONE = "GET availability, one schedule changed"
AVAILABILITY_COLD = "GET availability, all 20 schedules changed"
AVAILABILITY_BARE = "bare: the calendar query, rows as JSON"
CREATE_KEYED = "POST bookings, Idempotency-Key"
CREATE_PLAIN = "POST bookings, no Idempotency-Key"
CREATE_BARE = "bare asyncpg: booking + outbox + NOTIFY"
RACE = "200 × POST bookings, one slot"
RACE_BARE = "200 × bare asyncpg lock + insert, one slot"


@dataclass(frozen=True)
class Slot:
    practitioner_id: uuid.UUID
    start: datetime  # aware, clinic zone


@dataclass(frozen=True)
class Creation:
    """Fixed-count write load: every request or transaction on a slot of its own."""

    name: str
    count: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


@dataclass(frozen=True)
class Contention:
    name: str
    won: int
    refused: int
    others: dict[str, int]  # any other outcome (status or error) by how often it came
    wall_ms: float

    @property
    def other(self) -> int:
        return sum(self.others.values())


@dataclass(frozen=True)
class Figures:
    availability: list[LoadResult]
    creation: list[Creation]
    contention: list[Contention]


@dataclass(frozen=True)
class Clinic:
    base: str  # …/v1/clinics/{id}
    clinic_id: uuid.UUID
    app_id: uuid.UUID
    service_id: uuid.UUID
    practitioners: list[uuid.UUID]
    headers: dict[str, str]


# --- the clinic -------------------------------------------------------------------------------


def _workdays(first: date, count: int) -> list[date]:
    """The working days among ``count`` calendar days from ``first``."""
    days = (first + timedelta(days=i) for i in range(count))
    return [d for d in days if d.weekday() in WORKDAYS]


def _start(day: date, position: int) -> datetime:
    return datetime.combine(day, OPENS, LONDON) + position * DURATION


def _slots(practitioners: Sequence[uuid.UUID], days: Sequence[date]) -> list[Slot]:
    """Every half-hour slot of these practitioners on these days."""
    return [Slot(p, _start(d, k)) for d in days for k in range(POSITIONS) for p in practitioners]


async def _call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    body: Any,
    expect: int,
) -> Any:
    async with session.request(method, url, json=body, headers=headers) as response:
        data = await response.json(content_type=None)
        if response.status != expect:
            raise RuntimeError(f"{method} {url}: {response.status} {data}")
        return data


async def _token(
    session: aiohttp.ClientSession, auth_url: str, tenant: tuple[str, str, str]
) -> str:
    client_id, secret, clinic_id = tenant
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    async with session.post(
        f"{auth_url}/oauth/token",
        data={"grant_type": "client_credentials", "clinic_id": clinic_id},
        headers={"Authorization": f"Basic {credentials}"},
    ) as response:
        body = await response.json()
        if response.status != 200:
            raise RuntimeError(f"token: {response.status} {body}")
    return str(body["access_token"])


def _app_id(token: str) -> uuid.UUID:
    """The application id a token names (read, not verified: the bench issued it)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return uuid.UUID(claims["app_id"])


async def partner_clinic(
    session: aiohttp.ClientSession,
    base_url: str,
    clinic_id: uuid.UUID,
    token: str,
    today: date,
    *,
    practitioners_count: int = PRACTITIONERS,
) -> Clinic:
    """Practitioners, the service and working hours, through the API as a partner would
    (``base_url``: the bookings service or a gateway in front of it)."""
    base = f"{base_url}/v1/clinics/{clinic_id}"
    headers = {"Authorization": f"Bearer {token}"}
    practitioners = []
    for i in range(practitioners_count):
        vet = await _call(
            session, "POST", f"{base}/practitioners", headers, {"name": f"Vet {i:02d}"}, 201
        )
        practitioners.append(uuid.UUID(vet["id"]))
    service = await _call(
        session,
        "POST",
        f"{base}/services",
        headers,
        {
            "name": "Check-up",
            "duration_minutes": DURATION // timedelta(minutes=1),
            "practitioner_ids": [str(p) for p in practitioners],
        },
        201,
    )
    rules = [
        {
            "weekday": weekday,
            "start": OPENS.isoformat(),
            "end": CLOSES.isoformat(),
            "effective_from": today.isoformat(),
        }
        for weekday in WORKDAYS
    ]
    for p in practitioners:
        await _call(
            session,
            "PUT",
            f"{base}/practitioners/{p}/working-hours",
            headers,
            {"rules": rules},
            200,
        )
    return Clinic(
        base=base,
        clinic_id=clinic_id,
        app_id=_app_id(token),
        service_id=uuid.UUID(service["id"]),
        practitioners=practitioners,
        headers=headers,
    )


PROSPECT = {
    "owner": {"first_name": "Ann", "last_name": "Lee", "email": "ann@example.com"},
    "pet": {"name": "Rex", "species": "dog"},
}


def _row(clinic: Clinic, slot: Slot) -> dict[str, Any]:
    """A booking as the service writes it for a partner's prospect."""
    return {
        "clinic_id": clinic.clinic_id,
        "practitioner_id": slot.practitioner_id,
        "service_id": clinic.service_id,
        "start": slot.start,
        "end": slot.start + DURATION,
        "source": "partner",
        "pushed": False,
        "client_id": None,
        "patient_id": None,
        "prospect": PROSPECT,
        "insurance_id": None,
        "notes": None,
        "application_id": clinic.app_id,
    }


async def _seed(pool: asyncpg.Pool, clinic: Clinic, slots: Sequence[Slot]) -> None:
    """Existing bookings, written straight into the table."""
    async with pool.acquire() as conn, conn.transaction():
        for slot in slots:
            await store.insert_booking(conn, uuid.uuid4(), _row(clinic, slot))
        await conn.execute("ANALYZE bookings")


Position = tuple[uuid.UUID, date, int]  # practitioner, day, half hour after opening


def _expected_starts(
    practitioners: Sequence[uuid.UUID], days: Sequence[date], booked: set[Position]
) -> int:
    """Starts on the quarter-hour grid whose half hour touches no booking (on half hours)."""
    quarters = (datetime.combine(date.min, CLOSES) - datetime.combine(date.min, OPENS)) // (
        DURATION / 2
    )
    return sum(
        1
        for p in practitioners
        for d in days
        for j in range(quarters - 1)
        if (p, d, j // 2) not in booked and (p, d, (j + 1) // 2) not in booked
    )


# --- (a) availability -------------------------------------------------------------------------


async def _sequential(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    count: int,
    before: Callable[[], Awaitable[object]] | None = None,
) -> tuple[list[float], int, int]:
    """Latencies (s), errors and the last body's size of ``count`` GETs one after another;
    ``before`` runs ahead of each one, untimed."""
    latencies = []
    errors = size = 0
    for _ in range(count):
        if before is not None:
            await before()
        started = time.perf_counter()
        async with session.get(url, headers=headers) as response:
            body = await response.read()
            if response.status != 200:
                errors += 1
        latencies.append(time.perf_counter() - started)
        size = len(body)
    return latencies, errors, size


def _load_result(name: str, latencies: list[float], errors: int, generator: str) -> LoadResult:
    ordered = sorted(latencies)
    return LoadResult(
        name,
        len(ordered) / sum(ordered),
        statistics.median(ordered) * 1000,
        _percentile(ordered, 0.99) * 1000,
        errors,
        generator,
    )


def _percentile(ordered: Sequence[float], share: float) -> float:
    return ordered[max(0, int(len(ordered) * share + 0.5) - 1)] if ordered else float("nan")


async def _availability(
    session: aiohttp.ClientSession,
    pool: asyncpg.Pool,
    clinic: Clinic,
    window: tuple[datetime, datetime],
    port: int,
) -> tuple[list[LoadResult], int, int]:
    """Service and baseline in alternating blocks, so that drift on the machine hits both.

    The service keeps whole days rendered until a practitioner's schedule changes; the cold row
    moves every practitioner's schedule version before each request (what a change does), so
    that every day of it is computed afresh."""

    changed = iter(range(10**9))

    async def change(practitioners: list[uuid.UUID]) -> None:
        await pool.execute(
            """
            INSERT INTO schedule_versions (practitioner_id, version)
            SELECT unnest($1::uuid[]), 1
            ON CONFLICT (practitioner_id) DO UPDATE SET version = schedule_versions.version + 1
            """,
            practitioners,
        )

    async def change_one_schedule() -> None:
        """What a booking, a break or a published day does: one practitioner's version moves."""
        ps = clinic.practitioners
        await change([ps[next(changed) % len(ps)]])

    async def change_every_schedule() -> None:
        await change(clinic.practitioners)

    query = urlencode(
        {
            "service_id": str(clinic.service_id),
            "from": window[0].isoformat(),
            "to": window[1].isoformat(),
        }
    )
    path = clinic.base.split("/v1/", 1)[1]
    service_url = f"{clinic.base}/availability?{query}"
    bare_url = f"http://127.0.0.1:{port}/v1/{path}/availability?{query}"
    async with session.get(service_url, headers=clinic.headers) as response:
        answer = await response.json()
        if response.status != 200:
            raise RuntimeError(f"availability: {response.status} {answer}")
    for url in (service_url, bare_url):
        await _sequential(session, url, clinic.headers, 50)
    service: list[float] = []
    one: list[float] = []
    cold: list[float] = []
    bare: list[float] = []
    service_errors = one_errors = cold_errors = bare_errors = size = 0
    block = max(1, AVAILABILITY_REQUESTS // 5)
    done = 0
    while done < AVAILABILITY_REQUESTS:
        n = min(block, AVAILABILITY_REQUESTS - done)
        latencies, errors, _ = await _sequential(session, bare_url, clinic.headers, n)
        bare += latencies
        bare_errors += errors
        latencies, errors, size = await _sequential(session, service_url, clinic.headers, n)
        service += latencies
        service_errors += errors
        latencies, errors, _ = await _sequential(
            session, service_url, clinic.headers, n, change_one_schedule
        )
        one += latencies
        one_errors += errors
        latencies, errors, _ = await _sequential(
            session, service_url, clinic.headers, n, change_every_schedule
        )
        cold += latencies
        cold_errors += errors
        done += n
    generator = "aiohttp client, one keep-alive connection, requests one after another"
    rows = [
        _load_result(AVAILABILITY, service, service_errors, generator),
        _load_result(AVAILABILITY_ONE, one, one_errors, generator),
        _load_result(AVAILABILITY_COLD, cold, cold_errors, generator),
        _load_result(AVAILABILITY_BARE, bare, bare_errors, generator),
    ]
    return rows, len(answer["slots"]), size


def baseline_app(dsn: str, service_id: uuid.UUID) -> web.Application:
    """Working hours, published days and busy periods of the service's practitioners (the
    service's one calendar query), as JSON."""
    app = web.Application()
    pool_key = web.AppKey("pool", asyncpg.Pool)
    offering: list[uuid.UUID] = []

    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(
            dsn, schema="bookings", min_size=2, max_size=BookingsSettings().db_pool_max
        )
        async with pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT practitioner_id FROM service_practitioners WHERE service_id = $1 "
                "ORDER BY practitioner_id",
                service_id,
            )
        offering.extend(r["practitioner_id"] for r in rows)
        app[pool_key] = pool
        yield
        await pool.close()

    async def handler(request: web.Request) -> web.Response:
        start = datetime.fromisoformat(request.query["from"])
        end = datetime.fromisoformat(request.query["to"])
        first = start.astimezone(LONDON).date() - timedelta(days=1)
        last = end.astimezone(LONDON).date() + timedelta(days=1)
        async with request.app[pool_key].acquire() as conn:
            rows = await store.calendar_rows(
                conn,
                offering,
                first=first,
                last=last,
                start=start - timedelta(days=1),
                end=end + timedelta(days=1),
            )
        body = {"rows": [dict(r) for r in rows]}
        return web.Response(text=json.dumps(body, default=str), content_type="application/json")

    app.cleanup_ctx.append(pool_ctx)
    app.router.add_get("/v1/clinics/{clinic_id}/availability", handler)
    return app


# --- (b) creation -----------------------------------------------------------------------------


def _booking_body(clinic: Clinic, slot: Slot) -> bytes:
    return json.dumps(
        {
            "practitioner_id": str(slot.practitioner_id),
            "service_id": str(clinic.service_id),
            "start": slot.start.isoformat(),
            "prospect": PROSPECT,
        }
    ).encode()


async def _post_all(
    session: aiohttp.ClientSession,
    clinic: Clinic,
    slots: Sequence[Slot],
    *,
    clients: int,
    keyed: bool,
) -> tuple[list[float], list[int], float]:
    """POST one booking per slot from ``clients`` concurrent clients: latencies, statuses, wall.

    wrk sends them when it is installed (it leaves the machine's CPU to the service), else an
    aiohttp client does."""
    url = f"{clinic.base}/bookings"
    if shutil.which("wrk"):
        block = await post_each_once(
            url,
            clinic.headers,
            [(uuid.uuid4().hex, _booking_body(clinic, s).decode()) for s in slots],
            connections=min(clients, len(slots)),
            threads=2,
            keyed=keyed,
        )
        codes = [
            int(code.split()[0]) if code.split()[0].isdigit() else 0
            for code, n in block.statuses.items()
            for _ in range(n)
        ]
        return block.latencies, codes, block.seconds
    bodies = deque(_booking_body(clinic, s) for s in slots)
    base_headers = {**clinic.headers, "Content-Type": "application/json"}
    latencies: list[float] = []
    statuses: list[int] = []

    async def client() -> None:
        while bodies:
            body = bodies.popleft()
            headers = (
                {**base_headers, "Idempotency-Key": uuid.uuid4().hex} if keyed else base_headers
            )
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    statuses.append(response.status)
            except aiohttp.ClientError:
                statuses.append(0)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(clients, len(slots)))))
    return latencies, statuses, time.perf_counter() - started


def _creation(name: str, latencies: list[float], errors: int, seconds: float) -> Creation:
    """``seconds`` is the wall time of all the row's blocks together."""
    ordered = sorted(latencies)
    return Creation(
        name,
        len(ordered),
        seconds,
        statistics.median(ordered) * 1000,
        _percentile(ordered, 0.99) * 1000,
        errors,
    )


def _event(clinic: Clinic, booking_id: uuid.UUID, slot: Slot) -> dict[str, Any]:
    """A ``booking.created`` envelope of the size the service writes."""
    now = datetime.now(UTC)
    data = {
        "id": str(booking_id),
        "clinic_id": str(clinic.clinic_id),
        "practitioner_id": str(slot.practitioner_id),
        "service_id": str(clinic.service_id),
        "start": slot.start.isoformat(),
        "end": (slot.start + DURATION).isoformat(),
        "status": "booked",
        "source": "partner",
        "pushed": False,
        "client_id": None,
        "patient_id": None,
        "prospect": PROSPECT,
        "insurance_id": None,
        "notes": None,
        "cancel_reason": None,
        "version": 1,
        "created_at": now.isoformat(),
        "updated_at": now.isoformat(),
    }
    event = events.Event(type=events.BOOKING_CREATED, clinic_id=clinic.clinic_id, data=data)
    return event.model_dump(mode="json")


async def _bare_write(
    conn: Any,
    clinic: Clinic,
    slot: Slot,
    booking_id: uuid.UUID,
    event: dict[str, Any],
    *,
    lock: bool,
) -> None:
    async with conn.transaction():
        if lock:
            await store.lock_practitioner(conn, slot.practitioner_id)
        await store.insert_booking(conn, booking_id, _row(clinic, slot))
        # The outbox row and its wake-up in one statement, as the service's emit writes them.
        await conn.execute(
            "INSERT INTO outbox (event_id, event_type, payload) VALUES ($1, $2, $3) "
            "RETURNING pg_notify($4, '')",
            uuid.UUID(event["id"]),
            event["type"],
            event,
            notify_channel("bookings"),
        )


async def _bare_all(
    pool: asyncpg.Pool, clinic: Clinic, slots: Sequence[Slot], *, tasks: int, lock: bool = False
) -> tuple[list[float], list[str], float]:
    """The same writes from ``tasks`` concurrent tasks: latencies, outcomes, wall time."""
    work = deque((s, uuid.uuid4()) for s in slots)
    prepared = {booking_id: _event(clinic, booking_id, s) for s, booking_id in work}
    latencies: list[float] = []
    outcomes: list[str] = []

    async def task() -> None:
        while work:
            slot, booking_id = work.popleft()
            started = time.perf_counter()
            try:
                async with pool.acquire() as conn:
                    await _bare_write(
                        conn, clinic, slot, booking_id, prepared[booking_id], lock=lock
                    )
                outcomes.append("ok")
            except asyncpg.ExclusionViolationError:
                outcomes.append("conflict")
            except asyncpg.PostgresError as exc:
                outcomes.append(type(exc).__name__)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(min(tasks, len(slots)))))
    return latencies, outcomes, time.perf_counter() - started


# --- (c) contention ---------------------------------------------------------------------------


async def _race(session: aiohttp.ClientSession, clinic: Clinic, slot: Slot) -> Contention:
    # Open every connection first, so that the race measures booking, not TCP handshakes.
    health = clinic.base.split("/v1/", 1)[0] + "/healthz"

    async def touch() -> None:
        async with session.get(health) as response:
            await response.read()

    await asyncio.gather(*(touch() for _ in range(RACERS)))
    _, statuses, wall = await _post_all(
        session, clinic, [slot] * RACERS, clients=RACERS, keyed=True
    )
    others = Counter(str(s) for s in statuses if s not in (201, 409))
    return Contention(RACE, statuses.count(201), statuses.count(409), dict(others), wall * 1000)


async def _bare_race(pool: asyncpg.Pool, clinic: Clinic, slot: Slot) -> Contention:
    """The same race straight into the table, behind the service's practitioner lock."""
    _, outcomes, wall = await _bare_all(pool, clinic, [slot] * RACERS, tasks=RACERS, lock=True)
    others = Counter(o for o in outcomes if o not in ("ok", "conflict"))
    return Contention(
        RACE_BARE,
        outcomes.count("ok"),
        outcomes.count("conflict"),
        dict(others),
        wall * 1000,
    )


# --- tables -----------------------------------------------------------------------------------


def _markdown(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], foot: str) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        padded = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        return "| " + " | ".join(padded) + " |"

    out = [title, "", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join([*out, "", foot])


def _generator() -> str:
    return "wrk (2 threads, Lua, each request timed)" if shutil.which("wrk") else "aiohttp client"


def _creation_table(rows: list[Creation]) -> str:
    bare = next(r for r in rows if r.name == CREATE_BARE).per_second
    return _markdown(
        f"Booking creation — {BOOKINGS} bookings per row, {CLIENTS} concurrent clients, "
        "each on a slot of its own",
        ["case", "bookings", "bookings/s", "vs bare", "p50 ms", "p99 ms", "errors"],
        [
            [
                r.name,
                str(r.count),
                f"{r.per_second:.0f}",
                f"{r.per_second / bare:.2f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                str(r.errors),
            ]
            for r in rows
        ],
        f"HTTP rows: {_generator()}, {CLIENTS} keep-alive connections, JSON bodies with a "
        f"prospect, each sent once; bare row: {CLIENTS} tasks on a pool of "
        f"{BookingsSettings().db_pool_max} (the service's size); the rows took turns in "
        f"{BLOCKS} blocks, every row measured in this run",
    )


def _contention_table(rows: list[Contention]) -> str:
    return _markdown(
        f"Contention — {RACERS} concurrent requests for the same practitioner and start",
        ["case", "201 / ok", "409 / conflict", "other", "wall ms"],
        [[r.name, str(r.won), str(r.refused), str(r.other), f"{r.wall_ms:.0f}"] for r in rows],
        "HTTP row: aiohttp client, connections opened beforehand; bare row: the service's "
        "advisory lock, then the booking and outbox writes, from 200 tasks on a pool of the "
        "service's size; both measured in this run",
    )


# --- the run ----------------------------------------------------------------------------------


async def run() -> tuple[str, Figures]:
    today = datetime.now(LONDON).date()
    async with bench_database() as dsn:
        made = await bench_tenant(dsn, scopes=["bookings:read", "bookings:write"])
        tenant = (made.client_id, made.secret, str(made.clinic_id))
        async with bench_platform(dsn, "bookings", queues=("bookings.projections",)) as platform:
            auth_url, bookings_url = platform.auth_url, str(platform.service_url)
            pool = await create_pool(
                dsn, schema="bookings", min_size=2, max_size=BookingsSettings().db_pool_max
            )
            connector = aiohttp.TCPConnector(limit=RACERS)
            try:
                async with aiohttp.ClientSession(connector=connector) as session:
                    token = await _token(session, auth_url, tenant)
                    clinic = await partner_clinic(
                        session, bookings_url, uuid.UUID(tenant[2]), token, today
                    )
                    availability, notes = await _measure_availability(session, pool, dsn, clinic)
                    creation, contention, more = await _measure_writes(session, pool, clinic)
            finally:
                await pool.close()
    figures = Figures(availability, creation, contention)
    report = "\n\n".join(
        [
            table(
                f"Availability — {AVAILABILITY_REQUESTS} requests each, one service over "
                f"{WINDOW_DAYS} days, {PRACTITIONERS} practitioners, {EXISTING} bookings",
                availability,
                baseline=AVAILABILITY_BARE,
            ),
            _creation_table(creation),
            _contention_table(contention),
            "\n".join(f"- {n}" for n in [*notes, *more]),
        ]
    )
    return report, figures


async def _measure_availability(
    session: aiohttp.ClientSession, pool: asyncpg.Pool, dsn: str, clinic: Clinic
) -> tuple[list[LoadResult], list[str]]:
    """(a): seed the next 14 days with bookings, then time the search and its baseline."""
    first = datetime.now(LONDON).date() + timedelta(days=1)
    window = (
        datetime.combine(first, wall_time(0), LONDON).astimezone(UTC),
        datetime.combine(first + timedelta(days=WINDOW_DAYS), wall_time(0), LONDON).astimezone(UTC),
    )
    days = _workdays(first, WINDOW_DAYS)
    positions = [(p, d, k) for d in days for k in range(POSITIONS) for p in clinic.practitioners]
    booked = set(random.Random(20).sample(positions, EXISTING))
    await _seed(pool, clinic, [Slot(p, _start(d, k)) for p, d, k in booked])
    expected = _expected_starts(clinic.practitioners, days, booked)
    port = free_port()
    with server_process(
        ["-m", "bench.bookings", str(port), str(clinic.service_id)], {"DATABASE_URL": dsn}
    ):
        await wait_http(f"http://127.0.0.1:{port}/")
        rows, offered, size = await _availability(session, pool, clinic, window, port)
    note = (
        f"availability answer: {offered} slots in {size} bytes of JSON; {expected} expected "
        "from the seeded bookings"
    )
    return rows, [note]


async def _measure_writes(
    session: aiohttp.ClientSession, pool: asyncpg.Pool, clinic: Clinic
) -> tuple[list[Creation], list[Contention], list[str]]:
    """(b) and (c), in the weeks after the availability window."""
    first = datetime.now(LONDON).date() + timedelta(days=WINDOW_DAYS + 1)
    free = _slots(clinic.practitioners, _workdays(first, 7 * 8))
    random.Random(21).shuffle(free)
    need = WARM_UP + 2 * BOOKINGS + 1
    if len(free) < need:
        raise RuntimeError(f"{len(free)} free slots for {need} bookings")
    warm, keyed, plain = (
        free[:WARM_UP],
        free[WARM_UP : WARM_UP + BOOKINGS],
        free[WARM_UP + BOOKINGS : WARM_UP + 2 * BOOKINGS],
    )
    contested = free[need - 1]
    # The bare loop writes the same slots, for practitioners of its own.
    shadows = {p: uuid.uuid4() for p in clinic.practitioners}
    await pool.executemany(
        "INSERT INTO practitioners (id, clinic_id, name, role) VALUES ($1, $2, 'Bare', 'vet')",
        [(s, clinic.clinic_id) for s in shadows.values()],
    )

    def shadow(slots: Sequence[Slot]) -> list[Slot]:
        return [Slot(shadows[s.practitioner_id], s.start) for s in slots]

    await _post_all(session, clinic, warm, clients=CLIENTS, keyed=True)
    await _bare_all(pool, clinic, shadow(warm), tasks=CLIENTS)

    # The three rows take turns in blocks, so that drift on the machine hits all of them.
    latencies: dict[str, list[float]] = {n: [] for n in (CREATE_KEYED, CREATE_PLAIN, CREATE_BARE)}
    seconds = dict.fromkeys(latencies, 0.0)
    errors: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    for block in range(BLOCKS):
        part = slice(block * BOOKINGS // BLOCKS, (block + 1) * BOOKINGS // BLOCKS)
        lat, outcomes, wall = await _bare_all(pool, clinic, shadow(keyed[part]), tasks=CLIENTS)
        latencies[CREATE_BARE] += lat
        seconds[CREATE_BARE] += wall
        errors[CREATE_BARE] += len(outcomes) - outcomes.count("ok")
        unexpected.update(o for o in outcomes if o != "ok")
        for name, slots, with_key in ((CREATE_KEYED, keyed, True), (CREATE_PLAIN, plain, False)):
            lat, statuses, wall = await _post_all(
                session, clinic, slots[part], clients=CLIENTS, keyed=with_key
            )
            latencies[name] += lat
            seconds[name] += wall
            errors[name] += len(statuses) - statuses.count(201)
            unexpected.update(str(s) for s in statuses if s != 201)
    creation = [_creation(n, lat, errors[n], seconds[n]) for n, lat in latencies.items()]
    created = EXISTING + WARM_UP + sum(r.count - r.errors for r in creation[:2])
    stored = await pool.fetchval(
        "SELECT count(*) FROM bookings WHERE practitioner_id = ANY($1::uuid[])",
        clinic.practitioners,
    )

    contention = [
        await _race(session, clinic, contested),
        await _bare_race(pool, clinic, shadow([contested])[0]),
    ]
    live = await pool.fetchval(
        "SELECT count(*) FROM bookings WHERE practitioner_id = $1 AND period && $2 "
        "AND status IN ('booked', 'confirmed', 'arrived')",
        contested.practitioner_id,
        Range(contested.start, contested.start + DURATION),
    )
    notes = [
        f"bookings of the clinic's practitioners before the race: {stored}, expected {created}; "
        f"outcomes other than 201 / ok: {dict(unexpected) or 'none'}",
        f"live bookings on the contested slot after the race: {live}",
        *(f"other outcomes of {r.name}: {r.others}" for r in contention if r.others),
    ]
    return creation, contention, notes


if __name__ == "__main__":
    port, service = int(sys.argv[1]), uuid.UUID(sys.argv[2])
    web.run_app(
        baseline_app(os.environ["DATABASE_URL"], service),
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
    )
