"""Callbacks: webhook delivery throughput, latency, and a hanging endpoint, each beside a baseline.

The auth and callbacks services run as one process each (callbacks loads its access projection
from auth and verifies application tokens against auth's JWKS); the partner's receiver is a
third process (``bench.receiver``) that answers ``200`` at once and remembers every delivery by
path and ``webhook-id``. One application holds ``bookings:read`` on 22 clinics of one group and
has 41 endpoints on the receiver, made through the API as a partner makes them:

- ``/fan/00`` … ``/fan/19``: every event of clinic A; ``/fan/00`` … ``/fan/18`` also those of C;
- ``/hang/00``: the events of clinic C, on a path the receiver never answers;
- ``/one/00`` … ``/one/19``: the events of one clinic of their own each.

Events are ``booking.created`` envelopes of the size the bookings service emits, published on
the run's exchange with the broker client the services' outbox relays use, as a relay does.

(a) N events of clinic A, 20 deliveries each, in 3 blocks of N/3 published at once by 32
    concurrent publishers; the time from a block's first publish to its last delivery
    received. Beside it, a bare aiohttp client POSTing as many bodies of the same size to the
    same receiver (20 paths, no signature) with as many requests in flight as the service
    allows itself (its delivery concurrency, or 20 × its per-endpoint cap if that is lower).
    The two take turns block by block. Targets: ≥ 1,500 deliveries/s and ≥ half the bare loop.
(b) 300 events/s for BENCH_SECONDS, each for one of the 20 ``/one/`` endpoints in turn; latency
    from the event's ``occurred_at`` (stamped as it is published) to its receipt. Beside it, a
    bare relay in the bench process: the same events on a private exchange and a quorum queue
    like the service's intake, consumed and POSTed to the receiver straight away (the broker hop
    and HTTP without the database). Targets: p50 ≤ 50 ms, p99 ≤ 250 ms.
(c) (a) again on clinic C, where one of the 20 endpoints hangs until the attempt timeout (the
    default, 15 s): the other 19 should keep ≥ 90 % of their per-endpoint rate in (a). Its
    blocks take turns with (a)'s, so that both meet the same machine and the same growing
    tables (the service's claim gets slower as they grow); the hanging endpoint's stuck
    attempts and backlog are there during (a)'s later blocks too. The bare loop runs before
    each (c) block as well, to show whether the machine was as busy as during (a).

BENCH_WEBHOOK_EVENTS (default 1,500) sets N for (a) and (c); BENCH_SECONDS (default 10) the
length of (b) and BENCH_WEBHOOK_RATE (default 300) its rate. With BENCH_PYSPY set to a
directory, py-spy (when installed) records the callbacks process during (a) and (c) into a raw
collapsed-stack file there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aio_pika.abc import AbstractIncomingMessage

from bench.bookings import _app_id, _markdown, _percentile
from bench.harness import (
    BenchPlatform,
    BenchTenant,
    _remove_broker_objects,
    bench_database,
    bench_platform,
    bench_tenant,
    free_port,
    server_process,
    wait_http,
)
from services.auth import service as auth_service
from services.auth.schemas import ClinicCreate, GrantCreate
from services.callbacks.settings import CallbacksSettings
from shared import events
from shared.broker import Broker
from shared.db import create_pool
from shared.events import Event
from shared.settings import ServiceSettings

ENDPOINTS = 20
EVENTS = int(os.environ.get("BENCH_WEBHOOK_EVENTS", "1500"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
RATE = float(os.environ.get("BENCH_WEBHOOK_RATE", "300"))
WARM_UP_EVENTS = 50
PUBLISHERS = 32
BLOCKS = 3  # (a) and its bare loop take turns, each sending a third of its deliveries at a time
STALL_SECONDS = 60.0  # no new delivery at the receiver for this long: the phase is given up
SCOPES = ["bookings:read"]

_DEFAULTS = CallbacksSettings()
CONCURRENCY = min(_DEFAULTS.delivery_concurrency, ENDPOINTS * _DEFAULTS.endpoint_concurrency)

FAN = "callbacks: bus → 20 endpoints, signed"
FAN_BARE = "bare aiohttp POST loop, same receiver"
LATENCY = "callbacks: publish → receipt"
LATENCY_BARE = "bare relay: publish → quorum queue → POST"
HEALTHY = "(a) 20 endpoints, all answering"
HANGING = "(c) 19 answering + 1 hanging"


@dataclass(frozen=True)
class Throughput:
    name: str
    deliveries: int
    expected: int
    seconds: float
    duplicates: int

    @property
    def per_second(self) -> float:
        return self.deliveries / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class Latency:
    name: str
    events: int
    received: int
    offered_rate: float  # events/s actually published
    latencies_ms: list[float]
    since: datetime

    def pct(self, share: float) -> float:
        return _percentile(sorted(self.latencies_ms), share)


@dataclass(frozen=True)
class Isolation:
    name: str
    endpoints: int
    deliveries: int
    seconds: float

    @property
    def per_endpoint(self) -> float:
        return self.deliveries / self.endpoints / self.seconds


@dataclass(frozen=True)
class Figures:
    throughput: list[Throughput]
    latency: list[Latency]
    isolation: list[Isolation]


@dataclass(frozen=True)
class Setup:
    fan_clinic: uuid.UUID  # A
    hang_clinic: uuid.UUID  # C
    single_clinics: list[uuid.UUID]
    receiver: str  # http://127.0.0.1:port


# --- the tenant, the receiver and the endpoints -------------------------------------------------


async def _clinics(dsn: str, client_id: str, group_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    """``count`` more sandbox clinics in the tenant's group, each granted to its application."""
    pool = await create_pool(dsn, schema="auth", min_size=1, max_size=2)
    try:
        app_id = await pool.fetchval("SELECT id FROM applications WHERE client_id = $1", client_id)
        made = []
        for i in range(count):
            clinic = await auth_service.create_clinic(
                pool,
                ClinicCreate(
                    group_id=group_id,
                    name=f"Bench clinic {i + 2}",
                    time_zone="Europe/London",
                    country="GB",
                    sandbox=True,
                ),
            )
            await auth_service.create_grant(
                pool, GrantCreate(application_id=app_id, clinic_id=clinic.id, scopes=SCOPES)
            )
            made.append(clinic.id)
    finally:
        await pool.close()
    return made


async def app_token(
    session: aiohttp.ClientSession,
    auth_url: str,
    tenant: BenchTenant,
    scope: str = "webhooks:manage",
) -> str:
    """An application token (no clinic), for managing webhooks unless told otherwise."""
    credentials = base64.b64encode(f"{tenant.client_id}:{tenant.secret}".encode()).decode()
    async with session.post(
        f"{auth_url}/oauth/token",
        data={"grant_type": "client_credentials", "scope": scope},
        headers={"Authorization": f"Basic {credentials}"},
    ) as response:
        body = await response.json()
        if response.status != 200:
            raise RuntimeError(f"token: {response.status} {body}")
    return str(body["access_token"])


async def _projected(pool: asyncpg.Pool, app_id: uuid.UUID, clinics: Sequence[uuid.UUID]) -> None:
    """Wait until the callbacks service lets the application see every clinic's events."""
    deadline = time.monotonic() + 60
    while True:
        seen = await pool.fetchval(
            "SELECT bool_and(may_see($1, c, 'booking.created')) FROM unnest($2::uuid[]) AS c",
            app_id,
            list(clinics),
        )
        if seen:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("the callbacks projection never granted the bench's clinics")
        await asyncio.sleep(0.2)


async def _endpoints(
    session: aiohttp.ClientSession, callbacks_url: str, token: str, setup: Setup
) -> None:
    async def create(path: str, clinics: list[uuid.UUID]) -> None:
        async with session.post(
            f"{callbacks_url}/v1/webhooks/endpoints",
            json={"url": setup.receiver + path, "clinic_ids": [str(c) for c in clinics]},
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            body = await response.json(content_type=None)
            if response.status != 201:
                raise RuntimeError(f"endpoint {path}: {response.status} {body}")

    for i in range(ENDPOINTS):
        also_c = [setup.hang_clinic] if i < ENDPOINTS - 1 else []
        await create(f"/fan/{i:02d}", [setup.fan_clinic, *also_c])
    await create("/hang/00", [setup.hang_clinic])
    for i, clinic in enumerate(setup.single_clinics):
        await create(f"/one/{i:02d}", [clinic])


# --- events -------------------------------------------------------------------------------------


def booking_event(clinic_id: uuid.UUID) -> Event:
    """A ``booking.created`` envelope of the size the bookings service emits, stamped now."""
    booking = uuid.uuid4()
    now = datetime.now(UTC)
    start = (now + timedelta(days=3)).replace(minute=0, second=0, microsecond=0)
    data = {
        "id": str(booking),
        "clinic_id": str(clinic_id),
        "practitioner_id": str(uuid.uuid4()),
        "service_id": str(uuid.uuid4()),
        "start": start.isoformat(),
        "end": (start + timedelta(minutes=30)).isoformat(),
        "status": "booked",
        "source": "partner",
        "pushed": False,
        "client_id": None,
        "patient_id": None,
        "prospect": {
            "owner": {"first_name": "Ann", "last_name": "Lee", "email": "ann@example.com"},
            "pet": {"name": "Rex", "species": "dog"},
        },
        "insurance_id": None,
        "notes": None,
        "cancel_reason": None,
        "version": 1,
        "created_at": now.isoformat(),
        "updated_at": now.isoformat(),
    }
    return Event(
        type=events.BOOKING_CREATED,
        clinic_id=clinic_id,
        aggregate=f"booking:{booking}",
        sequence=1,
        data=data,
        occurred_at=now,
    )


async def _publish(bus: Broker, clinic_id: uuid.UUID) -> None:
    event = booking_event(clinic_id)
    await bus.publish(event.type, event.model_dump(mode="json"), event.id)


async def _publish_burst(
    bus: Broker, clinics: Callable[[int], uuid.UUID], count: int
) -> tuple[float, float]:
    """``count`` events from ``PUBLISHERS`` concurrent publishers; the wall time of the first
    publish and of the last confirm."""
    started = time.time()
    taken = 0

    async def publisher() -> None:
        nonlocal taken
        while taken < count:
            k = taken
            taken += 1
            await _publish(bus, clinics(k))

    await asyncio.gather(*(publisher() for _ in range(min(PUBLISHERS, count))))
    return started, time.time()


async def _publish_paced(
    bus: Broker, clinics: Callable[[int], uuid.UUID], rate: float, seconds: float
) -> float:
    """``rate`` events a second for ``seconds``, each stamped as it goes; the rate achieved."""
    count = int(rate * seconds)
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks = []
    for k in range(count):
        delay = started + k / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_publish(bus, clinics(k))))
    spread = loop.time() - started
    await asyncio.gather(*tasks)
    return (count - 1) / spread if spread > 0 else float("nan")


# --- the receiver -------------------------------------------------------------------------------


class Receiver:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self.url = url

    async def reset(self) -> None:
        async with self._session.post(f"{self.url}/_reset") as response:
            await response.read()

    async def count(self, prefix: str) -> int:
        async with self._session.get(f"{self.url}/_count", params={"prefix": prefix}) as response:
            return int((await response.json())["count"])

    async def summary(self, prefix: str, *, latency: bool = False) -> dict[str, Any]:
        params = {"prefix": prefix, "latency": "1" if latency else "0"}
        async with self._session.get(f"{self.url}/_summary", params=params) as response:
            body: dict[str, Any] = await response.json()
            return body

    async def wait_for(self, prefix: str, expected: int) -> int:
        """Until ``expected`` deliveries under ``prefix`` arrived, or none came for a while."""
        last, last_change = -1, time.monotonic()
        while True:
            got = await self.count(prefix)
            if got >= expected:
                return got
            if got != last:
                last, last_change = got, time.monotonic()
            elif time.monotonic() - last_change > STALL_SECONDS:
                return got
            await asyncio.sleep(0.05)


# --- CPU ----------------------------------------------------------------------------------------


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc; 0 where unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (all cores), from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _cpu_named(names: tuple[str, ...]) -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm in names:
                total += _cpu(int(entry.name))
    return total


class CpuMeter:
    """Cores used by the processes of interest over a phase."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._pids = pids
        self._start: dict[str, float] = {}
        self._wall = 0.0
        self._used: dict[str, tuple[float, list[float]]] = {}  # phase: wall, CPU per process

    def _read(self) -> dict[str, float]:
        now = {name: _cpu(pid) for name, pid in self._pids.items()}
        now["bench"] = time.process_time()
        now["postgres"] = _cpu_named(("postgres",))
        now["rabbitmq"] = _cpu_named(("beam.smp",))
        now["machine"] = _machine_busy()
        return now

    def start(self) -> None:
        self._start, self._wall = self._read(), time.perf_counter()

    def stop(self, phase: str) -> None:
        """Add the time since ``start`` to ``phase`` (blocks of one phase add up)."""
        wall = time.perf_counter() - self._wall
        end = self._read()
        # Backends that exit during a phase take their CPU with them: never below nothing.
        used = [max(0.0, end[k] - self._start[k]) for k in end]
        before_wall, before = self._used.get(phase, (0.0, [0.0] * len(used)))
        self._used[phase] = (before_wall + wall, [a + b for a, b in zip(before, used, strict=True)])

    @property
    def shares(self) -> dict[str, list[float]]:
        """Cores used, per phase and process."""
        return {phase: [u / wall for u in used] for phase, (wall, used) in self._used.items()}

    def names(self) -> list[str]:
        return [*self._pids, "bench", "postgres", "rabbitmq", "machine"]


def _pyspy(pid: int | None, name: str) -> list[str] | None:
    """The py-spy command recording the callbacks process (BENCH_PYSPY=directory), or None."""
    directory = os.environ.get("BENCH_PYSPY")
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not directory or pid is None or not Path(spy).exists():
        return None
    Path(directory).mkdir(parents=True, exist_ok=True)
    output = Path(directory) / f"callbacks-{name}.txt"
    return [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200"] + [
        "--nonblocking",
        "--output",
        str(output),
    ]


@contextlib.asynccontextmanager
async def _profile(pid: int | None, name: str) -> AsyncIterator[None]:
    """py-spy record of the callbacks process meanwhile, as raw collapsed stacks."""
    command = _pyspy(pid, name)
    if command is None:
        yield
        return
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        await proc.wait()


# --- (a) and (c): throughput --------------------------------------------------------------------


async def _bare_loop(
    session: aiohttp.ClientSession, receiver: Receiver, body: bytes, count: int, tag: str
) -> Throughput:
    """``count`` POSTs of ``body`` over the 20 bare paths with ``CONCURRENCY`` in flight, on a
    session of their own kept open between blocks (as the service keeps its connections)."""
    prefix = f"/bare{tag}/"
    urls = [f"{receiver.url}{prefix}{i:02d}" for i in range(ENDPOINTS)]
    errors = 0
    sent = 0

    async def worker() -> None:
        nonlocal sent, errors
        while sent < count:
            k = sent
            sent += 1
            headers = {"content-type": "application/json", "webhook-id": uuid.uuid4().hex}
            try:
                async with session.post(urls[k % ENDPOINTS], data=body, headers=headers) as r:
                    await r.read()
                    errors += r.status != 200
            except aiohttp.ClientError:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    seconds = time.perf_counter() - started
    got = await receiver.count(prefix)
    return Throughput(FAN_BARE, got, count, seconds, errors)


async def _fan(
    receiver: Receiver, bus: Broker, clinic: uuid.UUID, events_: int, prefix: str, per_event: int
) -> tuple[Throughput, dict[str, Any]]:
    """``events_`` events of ``clinic`` at once; first publish to last receipt under ``prefix``."""
    await receiver.reset()
    started, published = await _publish_burst(bus, lambda _: clinic, events_)
    await receiver.wait_for(prefix, events_ * per_event)
    summary = await receiver.summary(prefix)
    seconds = (summary["last"] or started) - started
    summary["started"], summary["published"] = started, published - started
    row = Throughput(FAN, summary["count"], events_ * per_event, seconds, summary["duplicates"])
    return row, summary


async def _timeline(pool: asyncpg.Pool, clinic: uuid.UUID, started: float) -> str:
    """When the service took the phase's events in and when it attempted their deliveries,
    in seconds after the first publish (from its own timestamps)."""
    row = await pool.fetchrow(
        """
        WITH ev AS (
            SELECT seq, extract(epoch FROM received_at) - $3 AS at FROM events
            WHERE clinic_id = $1 AND occurred_at >= to_timestamp($2)
        ), att AS (
            SELECT extract(epoch FROM a.attempted_at) - $3 AS at
            FROM ev JOIN deliveries d ON d.event_seq = ev.seq
            JOIN attempts a ON a.delivery_id = d.id
            WHERE d.endpoint_id NOT IN (SELECT id FROM endpoints WHERE url LIKE '%/hang/%')
        )
        SELECT (SELECT count(*) FROM ev) AS events, (SELECT max(at) FROM ev) AS kept,
               (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY at) FROM ev) AS kept_half,
               (SELECT min(at) FROM att) AS first, (SELECT max(at) FROM att) AS last,
               (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY at) FROM att) AS half
        """,
        clinic,
        started - 0.001,  # the block's events were stamped after it began
        started,
    )
    assert row is not None

    def s(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    return (
        f"{row['events']} events kept (half by {s(row['kept_half'])} s, all by {s(row['kept'])} "
        f"s); attempts started from {s(row['first'])} s, half by {s(row['half'])} s, the last at "
        f"{s(row['last'])} s"
    )


async def _settle(pool: asyncpg.Pool, *, exclude_hanging: bool = False) -> int:
    """Wait (≤ 30 s) until the service has recorded every attempt; the deliveries still pending."""
    deadline = time.monotonic() + 30
    query = "SELECT count(*) FROM deliveries WHERE status = 'pending'"
    if exclude_hanging:
        query += " AND endpoint_id NOT IN (SELECT id FROM endpoints WHERE url LIKE '%/hang/%')"
    while True:
        pending: int = await pool.fetchval(query)
        if pending == 0 or time.monotonic() > deadline:
            return pending
        await asyncio.sleep(0.1)


async def _attempt_counts(pool: asyncpg.Pool, *, hanging: bool) -> tuple[int, int]:
    """Attempts recorded so far (at the hanging endpoint too, or not): answered 2xx, and
    anything else."""
    row = await pool.fetchrow(
        "SELECT count(*) FILTER (WHERE status_code BETWEEN 200 AND 299) AS ok, "
        "count(*) FILTER (WHERE status_code IS NULL OR status_code NOT BETWEEN 200 AND 299) "
        "AS other FROM attempts a JOIN deliveries d ON d.id = a.delivery_id "
        "JOIN endpoints e ON e.id = d.endpoint_id WHERE $1 OR e.url NOT LIKE '%/hang/%'",
        hanging,
    )
    assert row is not None
    return int(row["ok"]), int(row["other"])


# --- (b): latency -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _bare_relay(
    receiver: Receiver, platform: BenchPlatform, clinics: Sequence[uuid.UUID]
) -> AsyncIterator[Broker]:
    """A bus of its own whose events a consumer here, on a quorum queue with the intake's
    prefetch like the service's, POSTs straight to the receiver."""
    exchange, queue = platform.exchange + ".bare", platform.queue_prefix + ".bench.relay"
    paths = {c: f"{receiver.url}/relay/{i:02d}" for i, c in enumerate(clinics)}
    bus = Broker(ServiceSettings().amqp_url, exchange)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY))

    async def relay(message: AbstractIncomingMessage) -> None:
        event = Event.model_validate_json(message.body)
        assert event.clinic_id is not None
        headers = {"content-type": "application/json", "webhook-id": str(event.id)}
        body = event.model_dump_json().encode()
        async with session.post(paths[event.clinic_id], data=body, headers=headers) as response:
            await response.read()
        await message.ack()

    try:
        await bus.connect_forever()
        await bus.consume_durable(queue, ["#"], relay, prefetch=64)
        yield bus
    finally:
        await bus.close()
        await session.close()
        await _remove_broker_objects(exchange, [queue])


async def _latency(
    name: str, receiver: Receiver, bus: Broker, clinics: Sequence[uuid.UUID], prefix: str
) -> Latency:
    def pick(k: int) -> uuid.UUID:
        return clinics[k % len(clinics)]

    # One event per endpoint first: connections open, statements prepared.
    await _publish_burst(bus, pick, len(clinics))
    await receiver.wait_for(prefix, len(clinics))
    await receiver.reset()
    since = datetime.now(UTC)
    offered = await _publish_paced(bus, pick, RATE, SECONDS)
    count = int(RATE * SECONDS)
    await receiver.wait_for(prefix, count)
    summary = await receiver.summary(prefix, latency=True)
    latencies = [s * 1000 for s in summary["latencies"]]
    return Latency(name, count, summary["count"], offered, latencies, since)


async def _breakdown(pool: asyncpg.Pool, clinics: Sequence[uuid.UUID], since: datetime) -> str:
    """Where (b)'s time went inside the service, from its own timestamps."""
    row = await pool.fetchrow(
        """
        WITH t AS (
            SELECT extract(epoch FROM ev.received_at - ev.occurred_at) * 1000 AS intake,
                   extract(epoch FROM a.first - ev.received_at) * 1000 AS dispatch
            FROM events ev
            CROSS JOIN LATERAL (
                SELECT min(at.attempted_at) AS first FROM deliveries d
                JOIN attempts at ON at.delivery_id = d.id WHERE d.event_seq = ev.seq
            ) a
            WHERE ev.clinic_id = ANY ($1::uuid[]) AND ev.occurred_at >= $2
        )
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY intake) AS intake50,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY intake) AS intake99,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY dispatch) AS dispatch50,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY dispatch) AS dispatch99
        FROM t
        """,
        list(clinics),
        since,
    )
    assert row is not None
    return (
        f"(b) inside callbacks: occurred_at → the intake transaction's now() p50 "
        f"{row['intake50'] or 0:.1f} / p99 {row['intake99'] or 0:.1f} ms (broker hop and queueing "
        f"for the consumer); that → the first attempt's start p50 {row['dispatch50'] or 0:.1f} / "
        f"p99 {row['dispatch99'] or 0:.1f} ms (intake work, commit, claim)"
    )


# --- tables -------------------------------------------------------------------------------------


def _throughput_table(rows: list[Throughput], body_bytes: int) -> str:
    bare = next(r for r in rows if r.name == FAN_BARE).per_second
    return _markdown(
        f"(a) Delivery throughput — {EVENTS} events × {ENDPOINTS} endpoints, "
        f"{body_bytes}-byte bodies",
        [
            "case",
            "deliveries",
            "expected",
            "seconds",
            "deliveries/s",
            "per endpoint/s",
            "vs bare",
            "dupes / errors",
        ],
        [
            [
                r.name,
                str(r.deliveries),
                str(r.expected),
                f"{r.seconds:.2f}",
                f"{r.per_second:.0f}",
                f"{r.per_second / ENDPOINTS:.1f}",
                f"{r.per_second / bare:.2f}",
                str(r.duplicates),
            ]
            for r in rows
        ],
        f"callbacks row: first publish to the last delivery at the receiver (counted there, "
        f"deduplicated by path + webhook-id), service defaults (delivery concurrency "
        f"{_DEFAULTS.delivery_concurrency}, {_DEFAULTS.endpoint_concurrency} per endpoint); bare "
        f"row: {CONCURRENCY} requests in flight from the bench process on keep-alive connections "
        f"opened in the warm-up, first request to last answer; the rows took turns in {BLOCKS} "
        "blocks, every row measured in this run",
    )


def _latency_table(rows: list[Latency]) -> str:
    return _markdown(
        f"(b) Delivery latency — {RATE:.0f} events/s for {SECONDS:.0f} s, each to one of "
        f"{ENDPOINTS} endpoints",
        ["case", "events", "received", "offered/s", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        [
            [
                r.name,
                str(r.events),
                str(r.received),
                f"{r.offered_rate:.0f}",
                f"{r.pct(0.5):.1f}",
                f"{r.pct(0.9):.1f}",
                f"{r.pct(0.99):.1f}",
                f"{max(r.latencies_ms, default=float('nan')):.1f}",
            ]
            for r in rows
        ],
        "from the event's occurred_at, stamped just before it is published (confirmed publish "
        "included), to its receipt at the receiver; both rows measured in this run",
    )


def _isolation_table(rows: list[Isolation]) -> str:
    healthy = next(r for r in rows if r.name == HEALTHY).per_endpoint
    return _markdown(
        f"(c) A hanging endpoint — {EVENTS} events, attempt timeout "
        f"{_DEFAULTS.attempt_timeout_seconds:g} s",
        ["case", "answering endpoints", "deliveries", "seconds", "per endpoint/s", "vs (a)"],
        [
            [
                r.name,
                str(r.endpoints),
                str(r.deliveries),
                f"{r.seconds:.2f}",
                f"{r.per_endpoint:.1f}",
                f"{r.per_endpoint / healthy:.2f}",
            ]
            for r in rows
        ],
        f"deliveries to the answering endpoints only, first publish to the last of them "
        f"received; both rows in {BLOCKS} blocks of the same size, taking turns, their times "
        "added up",
    )


def _cpu_table(meter: CpuMeter) -> str:
    names = meter.names()
    return _markdown(
        f"CPU during each phase, in cores ({os.cpu_count()} on this machine)",
        ["phase", *names],
        [[phase, *(f"{s:.2f}" for s in shares)] for phase, shares in meter.shares.items()],
        "postgres and rabbitmq: every live process of theirs, other users' load included "
        "(backends that exit during a phase drop out); machine: all busy CPU time, from /proc/stat",
    )


# --- the run ------------------------------------------------------------------------------------


async def run() -> tuple[str, Figures]:
    async with bench_database() as dsn:
        tenant = await bench_tenant(dsn, scopes=SCOPES)
        more = await _clinics(dsn, tenant.client_id, tenant.group_id, ENDPOINTS + 1)
        port = free_port()
        setup = Setup(tenant.clinic_id, more[0], more[1:], f"http://127.0.0.1:{port}")
        env = {
            "VETGATE_WEBHOOK_ALLOWED_HOSTS": '["127.0.0.1"]',
            # One ping per endpoint when it is made, none during the measurements.
            "VETGATE_PING_INTERVAL_SECONDS": "3600",
        }
        with server_process(["-m", "bench.receiver", str(port)], {}) as receiver_proc:
            await wait_http(setup.receiver + "/")
            async with bench_platform(
                dsn, "callbacks", queues=("callbacks.intake",), env=env
            ) as platform:
                pool = await create_pool(dsn, schema="callbacks", min_size=1, max_size=2)
                bus = Broker(ServiceSettings().amqp_url, platform.exchange)
                try:
                    await bus.connect_forever()
                    pids = {"callbacks": platform.service_pid or 0, "receiver": receiver_proc.pid}
                    figures, notes, meter = await _measure(
                        tenant, pool, bus, platform, setup, CpuMeter(pids)
                    )
                finally:
                    await bus.close()
                    await pool.close()
    report = "\n\n".join(
        [
            _throughput_table(figures.throughput, _body_bytes()),
            _latency_table(figures.latency),
            _isolation_table(figures.isolation),
            _cpu_table(meter),
            "\n".join(f"- {n}" for n in [*notes, *_verdicts(figures)]),
        ]
    )
    return report, figures


def _body_bytes() -> int:
    return len(booking_event(uuid.uuid4()).model_dump_json().encode())


async def _measure(
    tenant: BenchTenant,
    pool: asyncpg.Pool,
    bus: Broker,
    platform: BenchPlatform,
    setup: Setup,
    meter: CpuMeter,
) -> tuple[Figures, list[str], CpuMeter]:
    notes: list[str] = []
    bare_connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with (
        aiohttp.ClientSession() as session,
        aiohttp.ClientSession(connector=bare_connector) as bare_session,
    ):
        receiver = Receiver(session, setup.receiver)
        token = await app_token(session, platform.auth_url, tenant)
        app_id = _app_id(token)
        await _projected(pool, app_id, [setup.fan_clinic, setup.hang_clinic, *setup.single_clinics])
        await _endpoints(session, str(platform.service_url), token, setup)
        body = booking_event(setup.fan_clinic).model_dump_json().encode()

        # Warm-up: the whole path once, and the bare loop once.
        await _fan(receiver, bus, setup.fan_clinic, WARM_UP_EVENTS, "/fan/", ENDPOINTS)
        await _settle(pool)
        await _bare_loop(bare_session, receiver, body, WARM_UP_EVENTS * ENDPOINTS, "w")

        # (b) first, on a quiet service.
        meter.start()
        service_latency = await _latency(LATENCY, receiver, bus, setup.single_clinics, "/one/")
        meter.stop("(b) callbacks at 300 events/s")
        await _settle(pool)
        notes.append(await _breakdown(pool, setup.single_clinics, service_latency.since))
        async with _bare_relay(receiver, platform, setup.single_clinics) as bare:
            meter.start()
            bare_latency = await _latency(
                LATENCY_BARE, receiver, bare, setup.single_clinics, "/relay/"
            )
            meter.stop("(b) bare relay at 300 events/s")

        # (a) and (c) take turns block by block, so that both meet the same machine and the
        # same growing tables; each follows a block of the bare loop. (c) is clinic C: 19 of
        # the fan endpoints and the hanging one, whose backlog and stuck attempts stay on.
        fan_rows: list[Throughput] = []
        bare_rows: list[Throughput] = []
        hang_rows: list[Throughput] = []
        drift: list[Throughput] = []
        before = await _attempt_counts(pool, hanging=False)
        async with _profile(platform.service_pid, "ac"):
            for block in range(BLOCKS):
                n = EVENTS // BLOCKS + (1 if block < EVENTS % BLOCKS else 0)
                meter.start()
                bare_rows.append(
                    await _bare_loop(bare_session, receiver, body, n * ENDPOINTS, f"a{block}")
                )
                meter.stop("(a) bare loop")
                meter.start()
                row, summary = await _fan(receiver, bus, setup.fan_clinic, n, "/fan/", ENDPOINTS)
                meter.stop("(a) callbacks")
                fan_rows.append(row)
                pending = await _settle(pool, exclude_hanging=True)
                timeline = await _timeline(pool, setup.fan_clinic, summary["started"])
                notes.append(
                    f"(a) block {block + 1}, seconds after the first publish: all published by "
                    f"{summary['published']:.2f} s; {timeline}; "
                    f"the last delivery received at {row.seconds:.2f} s"
                )
                if pending:
                    notes.append(f"(a) block {block + 1}: {pending} deliveries still pending")

                meter.start()
                drift.append(
                    await _bare_loop(bare_session, receiver, body, n * ENDPOINTS, f"c{block}")
                )
                meter.stop("(c) bare loop")
                meter.start()
                row, summary = await _fan(
                    receiver, bus, setup.hang_clinic, n, "/fan/", ENDPOINTS - 1
                )
                meter.stop("(c) callbacks, one endpoint hanging")
                hang_rows.append(row)
                await _settle(pool, exclude_hanging=True)
                timeline = await _timeline(pool, setup.hang_clinic, summary["started"])
                per_path = sorted(summary["per_path"].values()) or [0]
                notes.append(
                    f"(c) block {block + 1}, seconds after the first publish: all published by "
                    f"{summary['published']:.2f} s; {timeline}; the last delivery received at "
                    f"{row.seconds:.2f} s; per answering endpoint {per_path[0]}–{per_path[-1]} "
                    f"of {n}; requests taken by the hanging endpoint meanwhile: "
                    f"{summary['hanging']}"
                )
        after = await _attempt_counts(pool, hanging=False)
        notes.append(
            f"(a) and (c): attempts at the answering endpoints recorded by the service: "
            f"{after[0] - before[0]} answered 2xx, {after[1] - before[1]} other"
        )
        fan = _sum(FAN, fan_rows)
        bare_fan = _sum(FAN_BARE, bare_rows)
        notes.append(
            "(a) per block: callbacks "
            + ", ".join(f"{r.per_second:.0f}" for r in fan_rows)
            + "/s; bare loop "
            + ", ".join(f"{r.per_second:.0f}" for r in bare_rows)
            + "/s; (c) per block: callbacks "
            + ", ".join(f"{r.per_second:.0f}" for r in hang_rows)
            + "/s"
        )
        pending = await pool.fetchval(
            "SELECT count(*) FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id "
            "WHERE d.status = 'pending' AND e.url LIKE '%/hang/%'"
        )
        notes.append(
            f"(c) deliveries pending for the hanging endpoint at the end: {pending} (the "
            f"service's per-endpoint cap is {_DEFAULTS.endpoint_concurrency} in flight)"
        )
        hanging = _sum(HANGING, hang_rows)
        notes.append(
            f"the bare loop beside (a): {bare_fan.per_second:.0f}/s, beside (c): "
            f"{_sum(FAN_BARE, drift).per_second:.0f}/s (how busy the machine was in each)"
        )
    isolation = [
        Isolation(HEALTHY, ENDPOINTS, fan.deliveries, fan.seconds),
        Isolation(HANGING, ENDPOINTS - 1, hanging.deliveries, hanging.seconds),
    ]
    for row in (fan, hanging):
        if row.deliveries < row.expected:
            notes.append(f"{row.name}: only {row.deliveries} of {row.expected} arrived")
    figures = Figures([fan, bare_fan], [service_latency, bare_latency], isolation)
    return figures, notes, meter


def _sum(name: str, rows: Sequence[Throughput]) -> Throughput:
    return Throughput(
        name,
        sum(r.deliveries for r in rows),
        sum(r.expected for r in rows),
        sum(r.seconds for r in rows),
        sum(r.duplicates for r in rows),
    )


def _verdicts(figures: Figures) -> list[str]:
    fan, bare = figures.throughput
    latency = figures.latency[0]
    healthy, hanging = figures.isolation
    kept = hanging.per_endpoint / healthy.per_endpoint
    share = fan.per_second / bare.per_second

    def verdict(ok: bool) -> str:
        return "met" if ok else "not met"

    p50, p99 = latency.pct(0.5), latency.pct(0.99)
    return [
        f"(a) {fan.per_second:.0f} deliveries/s against a target of ≥ 1,500/s: "
        f"{verdict(fan.per_second >= 1500)}; {share:.2f} of the bare loop against ≥ 0.5: "
        f"{verdict(share >= 0.5)}",
        f"(b) p50 {p50:.1f} ms against ≤ 50 ms: {verdict(p50 <= 50)}; p99 {p99:.1f} ms against "
        f"≤ 250 ms: {verdict(p99 <= 250)}",
        f"(c) the answering endpoints kept {kept:.2f} of their rate against ≥ 0.90: "
        f"{verdict(kept >= 0.9)}",
    ]
