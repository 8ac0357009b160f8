"""Faults survived: a cluster under load loses nothing when its parts fail.

One cluster of processes (``vetgate run``): auth and registrations once, bookings and callbacks
twice each, and ``vetgate run gateway`` in front. For each case a load runs through the gateway:
a booking every quarter second, each on a slot of its own, half of them with an Idempotency-Key,
every answer, its status and its duration kept. A partner's receiver in this process takes the
booking.created webhooks. While the load runs, something fails:

1. a bookings copy is killed (SIGKILL) and started again on its port;
2. a callbacks copy is killed while its deliveries are held at a slow receiver;
3. a second endpoint of the partner never answers;
4. a client sends garbage, wrong content types, 2 MB bodies, and floods one route;
5. the RabbitMQ node is stopped for 5 s and started;
6. the Postgres server is stopped for 12 s, with a backlog at the callbacks intake, and started.

Every case ends with an account: no request took longer than ``HANG_SECONDS`` (none hung), every
refusal was a problem+json (never a traceback), keyed requests repeated after the fault got their
booking, the database holds each booking once and no slot twice, every committed booking — the
acknowledged ones and those whose answer was lost — has its booking.created webhook, one
webhook-id per booking (a repeat of the same id is allowed), and nothing is lost.

These tests restart the broker and the database server that the whole run shares: they are
marked ``fault`` and run last in a session (tests/conftest.py). They restart the machine's
servers, so anything else using them at the time (another test run, a benchmark) sees the faults
too. Without a local RabbitMQ node or Postgres cluster they control, those two cases skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import signal
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import asyncpg
import pytest
from aiohttp import web

from services import demo, sandbox
from services.gateway import UPSTREAMS_ENV
from shared.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE
from tests.callbacks.test_broker_restart import loopback, must, not_controlled, start_node_now
from tests.conftest import Admin, access_token
from tests.polling import eventually
from tests.test_cli import ok, process_env, vetgate_command
from tests.test_scale_out import (
    LIVE,
    LONDON,
    SLOT_MINUTES,
    distinct_free_ports,
    granted_in_callbacks,
    metrics_of,
    request_counts,
    serving,
)
from tests.test_topology import Child, spawn, stop, wait_until_ready

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

#: Copies of each service: two of those that are killed, so the gateway has another to try.
COPIES = {"auth": 1, "registrations": 1, "bookings": 2, "callbacks": 2}
#: No request may take longer than this, whatever fails.
HANG_SECONDS = 15.0
#: The load's client gives up on a request after this (a request that long counts as hung).
CLIENT_SECONDS = 40.0
#: A booking request every this many seconds.
PERIOD = 0.25
#: How long every committed booking's webhook may take to arrive after the load stops.
DELIVERY_SECONDS = 60.0
#: How long a service may take to answer /readyz 200 again by itself.
RECOVERY_SECONDS = 60.0
ATTEMPT_SECONDS = 3.0
LEASE_SECONDS = 6.0
#: Published slots: 06:00 to 22:00 local, on days this far ahead, for both practitioners.
FIRST_DAY_AHEAD = 45
DAYS = 8
DAY_START, DAY_END = 6, 22
#: Tier 0 (the flooding application) gets 2 requests a second with a burst of 4, per process.
TIER_RATES = "[2, 200, 500]"
TIER_BURSTS = "[4, 400, 1000]"
FLOOD = 60
#: Requests sent at once just before a bookings copy is killed or the database stops.
BURST = 16
#: How long the database stays down: longer than the intake queue's delivery limit (5) times
#: the 2 s a consumer held a message before requeueing it, which used to dead-letter events.
PG_DOWN_SECONDS = 12.0
FIVE_XX = frozenset({500, 502, 503, 504})


# --- the cluster ---------------------------------------------------------------------------------


@dataclass
class Proc:
    """One service process that can be killed and started again on the same port."""

    service: str
    url: str
    args: list[str]
    env: dict[str, str]
    log: Path
    child: Child
    starts: int = 1

    async def kill(self) -> None:
        os.kill(self.child.process.pid, signal.SIGKILL)
        await self.child.process.wait()
        self.child.log_file.close()

    async def restart(self) -> None:
        self.starts += 1
        log = self.log.with_name(f"{self.log.stem}.{self.starts}{self.log.suffix}")
        self.child = await spawn(self.args, self.env, log)
        await wait_until_ready(self.child, [self.url + "/readyz"])

    def log_text_lines(self) -> list[str]:
        """Every line this service logged, over all its incarnations."""
        return [
            line
            for path in sorted(self.log.parent.glob(f"{self.log.stem}*"))
            for line in path.read_text(errors="replace").splitlines()
        ]

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_text_lines():
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    lines.append(parsed)
        return lines


@dataclass
class Webhook:
    webhook_id: str
    event: dict[str, Any]
    body: bytes
    headers: dict[str, str]
    at: float


@dataclass
class Receiver:
    """The partner's receiver: ``/hooks`` answers 204 (after ``delay``), ``/hang`` never does
    until released."""

    url: str = ""
    delay: float = 0.0
    inflight: int = 0
    hooks: list[Webhook] = field(default_factory=list)
    hung: list[str] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.hooks.append(
            Webhook(
                headers.get("webhook-id", ""),
                json.loads(body),
                body,
                headers,
                asyncio.get_running_loop().time(),
            )
        )
        self.inflight += 1
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.inflight -= 1
        return web.Response(status=204)

    async def hang(self, request: web.Request) -> web.Response:
        await request.read()
        self.hung.append(request.headers.get("webhook-id", ""))
        await self.release.wait()
        return web.Response(status=204)

    def created(self) -> list[Webhook]:
        return [h for h in self.hooks if h.event.get("type") == "booking.created"]

    def booking_ids(self) -> set[str]:
        return {h.event["data"]["id"] for h in self.created()}


@dataclass
class Faulty:
    base: str
    env: dict[str, str]
    gateway: Child
    procs: dict[str, list[Proc]]
    credentials: dict[str, Any]
    receiver: Receiver
    endpoint: dict[str, Any]
    service_id: str
    slots: list[tuple[str, datetime]]
    bearer: dict[str, str]

    @property
    def clinic_url(self) -> str:
        return f"{self.base}/v1/clinics/{self.credentials['clinic_id']}"

    def all_procs(self) -> list[Proc]:
        return [p for copies in self.procs.values() for p in copies]


async def publish_slots(
    http: aiohttp.ClientSession, clinic_url: str, bearer: dict[str, str]
) -> list[tuple[str, datetime]]:
    """Publish the days the load books on; every 15-minute start in them, in booking order."""
    first = datetime.now(LONDON).date() + timedelta(days=FIRST_DAY_AHEAD)
    starts: list[tuple[str, datetime]] = []
    for d in range(DAYS):
        day = first + timedelta(days=d)
        opens = datetime.combine(day, datetime.min.time().replace(hour=DAY_START), LONDON)
        closes = datetime.combine(day, datetime.min.time().replace(hour=DAY_END), LONDON)
        for practitioner in (str(sandbox.NURSE_ID), str(sandbox.VET_ID)):
            async with http.put(
                f"{clinic_url}/practitioners/{practitioner}/slots/{day}",
                json={"slots": [{"start": opens.isoformat(), "end": closes.isoformat()}]},
                headers=bearer,
            ) as r:
                assert r.status == 200, await r.text()
            start = opens
            while start < closes:
                starts.append((practitioner, start))
                start += timedelta(minutes=SLOT_MINUTES)
    return starts


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=3)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def faulty(
    overrides: dict[str, Any],
    database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    http: aiohttp.ClientSession,
    db: asyncpg.Pool,
) -> AsyncIterator[Faulty]:
    ports = distinct_free_ports(sum(COPIES.values()) + 1)
    base = f"http://127.0.0.1:{ports.pop()}"
    urls = {
        name: [f"http://127.0.0.1:{ports.pop()}" for _ in range(n)] for name, n in COPIES.items()
    }
    env = process_env(
        overrides,
        database_url,
        VETGATE_ISSUER=base,
        VETGATE_HOST="127.0.0.1",
        VETGATE_LOG_LEVEL="INFO",
        VETGATE_AUTH_URL=urls["auth"][0],
        VETGATE_OUTBOX_POLL_SECONDS="0.2",
        VETGATE_WEBHOOK_ALLOWED_HOSTS='["127.0.0.1"]',
        VETGATE_DB_POOL_MIN="1",
        VETGATE_DB_POOL_MAX="6",
        VETGATE_RETRY_SCHEDULE="[0, 0.5, 1, 2, 4, 8]",
        VETGATE_RETRY_JITTER="0",
        VETGATE_CONNECT_TIMEOUT_SECONDS="2",
        VETGATE_ATTEMPT_TIMEOUT_SECONDS=str(ATTEMPT_SECONDS),
        VETGATE_DELIVERY_LEASE_SECONDS=str(LEASE_SECONDS),
        VETGATE_DISPATCH_POLL_SECONDS="0.2",
        VETGATE_PING_INTERVAL_SECONDS="3600",
        VETGATE_TIER_RATES=TIER_RATES,
        VETGATE_TIER_BURSTS=TIER_BURSTS,
    )
    logs = tmp_path_factory.mktemp("faults")
    procs: dict[str, list[Proc]] = {name: [] for name in COPIES}
    gateway: Child | None = None
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", receiver.receive)
    app.router.add_post("/hang", receiver.hang)
    try:
        async with serving(app) as receiver_url:
            receiver.url = receiver_url
            for name, copies in urls.items():
                for i, url in enumerate(copies):
                    args = [*vetgate_command(), "run", name, "--port", url.rsplit(":", 1)[1]]
                    log = logs / f"{name}-{i + 1}.log"
                    procs[name].append(Proc(name, url, args, env, log, await spawn(args, env, log)))
            gateway = await spawn(
                [*vetgate_command(), "run", "gateway", "--port", base.rsplit(":", 1)[1]],
                {**env, UPSTREAMS_ENV: " ".join(f"{n}={','.join(u)}" for n, u in urls.items())},
                logs / "gateway.log",
            )
            await asyncio.gather(
                wait_until_ready(gateway, [base + "/healthz"]),
                *(
                    wait_until_ready(p.child, [p.url + "/readyz"])
                    for c in procs.values()
                    for p in c
                ),
            )
            credentials = await ok("seed-sandbox", "--json", env=env)
            await granted_in_callbacks(db, str(sandbox.GRANT_ID))
            clinic_url = f"{base}/v1/clinics/{credentials['clinic_id']}"
            bearer = {
                "Authorization": "Bearer "
                + await access_token(http, base, credentials, clinic_id=credentials["clinic_id"])
            }
            app_bearer = {
                "Authorization": "Bearer "
                + await access_token(http, base, credentials, scope="webhooks:manage")
            }
            async with http.post(
                base + "/v1/webhooks/endpoints",
                json={
                    "url": receiver.url + "/hooks",
                    "event_types": ["booking.created"],
                    "clinic_ids": [credentials["clinic_id"]],
                    "description": "faults: the partner's receiver",
                },
                headers=app_bearer,
            ) as r:
                endpoint = await r.json()
                assert r.status == 201, endpoint
            yield Faulty(
                base=base,
                env=env,
                gateway=gateway,
                procs=procs,
                credentials=credentials,
                receiver=receiver,
                endpoint=endpoint,
                service_id=str(sandbox.VACCINATION_ID),
                slots=await publish_slots(http, clinic_url, bearer),
                bearer=bearer,
            )
            receiver.release.set()
    finally:
        receiver.release.set()
        children = [p.child for copies in procs.values() for p in copies]
        await asyncio.gather(*(stop(c) for c in [*children, *([gateway] if gateway else [])]))


# --- the load ------------------------------------------------------------------------------------


@dataclass
class Shot:
    """One booking request and what came of it."""

    practitioner: str
    start: datetime
    body: dict[str, Any]
    key: str | None
    began: float
    seconds: float = 0.0
    status: int = 0
    content_type: str = ""
    text: str = ""
    error: str = ""
    replayed: bool = False
    retry_after: str | None = None
    retry: Shot | None = None

    @property
    def slot(self) -> tuple[str, datetime]:
        return (self.practitioner, self.start)

    @property
    def booking_id(self) -> str | None:
        if self.status != 201:
            return None
        return str(json.loads(self.text)["id"])

    def answer(self) -> str:
        return f"{self.status or self.error} after {self.seconds:.2f} s: {self.text[:300]}"


class Load:
    """Bookings through the gateway every ``PERIOD`` seconds until stopped."""

    def __init__(self, faulty: Faulty) -> None:
        self.faulty = faulty
        self.shots: list[Shot] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self.loop = asyncio.get_running_loop()

    def now(self) -> float:
        return self.loop.time()

    async def __aenter__(self) -> Load:
        self._ticker = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            await self._ticker
        if self._tasks:
            await asyncio.gather(*self._tasks)

    def fire(self) -> Shot:
        """One booking request, on the next free slot, sent in the background."""
        if not self.faulty.slots:
            raise AssertionError("the load ran out of published slots")
        practitioner, start = self.faulty.slots.pop(0)
        n = len(self.shots) + 1
        shot = Shot(
            practitioner,
            start,
            {
                "practitioner_id": practitioner,
                "service_id": self.faulty.service_id,
                "start": start.isoformat(),
                "prospect": {
                    "owner": {"first_name": "Load", "last_name": f"Shot{n}"},
                    "pet": {"name": "Bolt", "species": "dog"},
                },
            },
            # Half with a key, in pairs: the gateway's round robin over two copies would
            # otherwise send every keyed request to one copy and every other to the other.
            f"fault-{uuid.uuid4().hex}" if n // 2 % 2 else None,
            self.now(),
        )
        self.shots.append(shot)
        task = asyncio.create_task(self.send(shot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return shot

    async def _tick(self) -> None:
        while not self._stop.is_set():
            self.fire()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), PERIOD)

    async def send(self, shot: Shot) -> None:
        headers = dict(self.faulty.bearer)
        if shot.key is not None:
            headers["Idempotency-Key"] = shot.key
        try:
            # A connection of its own per request; the client gives up after CLIENT_SECONDS.
            async with aiohttp.request(
                "POST",
                self.faulty.clinic_url + "/bookings",
                json=shot.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=CLIENT_SECONDS),
            ) as r:
                shot.text = await r.text()
                shot.status = r.status
                shot.content_type = r.content_type
                shot.replayed = r.headers.get("Idempotent-Replayed") == "true"
                shot.retry_after = r.headers.get("Retry-After")
        except TimeoutError:
            shot.error = f"no answer in {CLIENT_SECONDS} s"
        except aiohttp.ClientError as exc:
            shot.error = f"{type(exc).__name__}: {exc}"
        finally:
            shot.seconds = self.now() - shot.began

    async def retry_keyed(self) -> list[Shot]:
        """Send every keyed request that got no booking again, as a partner would: same key,
        same body. The first attempt may have booked: then this is its replay."""
        retried = []
        for shot in self.shots:
            if shot.key is not None and shot.status != 201:
                shot.retry = Shot(shot.practitioner, shot.start, shot.body, shot.key, self.now())
                await self.send(shot.retry)
                retried.append(shot)
        return retried

    def between(self, start: float, end: float) -> list[Shot]:
        return [s for s in self.shots if start <= s.began <= end]


def problem_of(shot: Shot) -> dict[str, Any]:
    """The refusal as a problem document; fails on anything else (a traceback, HTML, nothing)."""
    assert shot.content_type == PROBLEM_CONTENT_TYPE, shot.answer()
    assert "Traceback" not in shot.text, shot.answer()
    body: dict[str, Any] = json.loads(shot.text)
    assert body["status"] == shot.status, shot.answer()
    assert str(body["type"]).startswith(PROBLEM_BASE), shot.answer()
    assert body.get("title"), shot.answer()
    assert body.get("detail"), shot.answer()
    return body


# --- the account ---------------------------------------------------------------------------------


@dataclass
class Account:
    requests: int
    statuses: dict[int | str, int]
    slowest: float
    retried: int
    acknowledged: int
    in_doubt: int
    committed: int
    doubled: int
    webhooks: int
    delivered: int
    duplicates: int
    lost: int

    def line(self, case: str) -> str:
        return f"\n[{case}] " + ", ".join(f"{k}={v}" for k, v in vars(self).items())


async def whereabouts(db: asyncpg.Pool, missing: set[str], endpoint_id: str) -> dict[str, str]:
    """How far each booking's event got: the outbox, the callbacks intake, a delivery."""
    found: dict[str, str] = {}
    for booking in sorted(missing):
        row = await db.fetchrow(
            "SELECT event_id, published_at FROM bookings.outbox "
            "WHERE event_type = 'booking.created' AND payload -> 'data' ->> 'id' = $1",
            booking,
        )
        if row is None:
            found[booking] = "no booking.created in the outbox"
            continue
        if row["published_at"] is None:
            found[booking] = "unpublished in the outbox"
            continue
        kept = await db.fetchval(
            "SELECT count(*) FROM callbacks.events WHERE event_id = $1", row["event_id"]
        )
        delivery = await db.fetchrow(
            "SELECT status, attempts, last_status, last_error, lease_until "
            "FROM callbacks.deliveries WHERE event_id = $1 AND endpoint_id = $2",
            row["event_id"],
            uuid.UUID(endpoint_id),
        )
        if not kept:
            found[booking] = "published, never taken in by callbacks (dead-lettered?)"
        else:
            found[booking] = f"taken in; delivery {dict(delivery) if delivery else 'never made'}"
    return found


async def dead_letters(amqp_url: str, queue_prefix: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{queue_prefix}.callbacks.intake.dead", passive=True)
        return int(queue.declaration_result.message_count or 0)


async def settle(
    faulty: Faulty,
    load: Load,
    db: asyncpg.Pool,
    case: str,
    *,
    allowed: frozenset[int],
) -> Account:
    """The account of one case: nothing hung, every refusal a problem, no booking twice, every
    committed booking's webhook delivered; asserts and returns the counts."""
    shots = load.shots
    assert shots, "the load made no request"
    hung = [s.answer() for s in shots if s.error or s.seconds > HANG_SECONDS]
    assert hung == [], f"requests that hung or went unanswered: {hung}"
    unexpected = [s.answer() for s in shots if s.status not in allowed | {201}]
    assert unexpected == [], f"answers other than {sorted(allowed | {201})}: {unexpected}"
    for shot in shots:
        if shot.status != 201:
            problem_of(shot)

    # A partner repeats what it sent with a key; it gets the booking (perhaps the first one's).
    retried = await load.retry_keyed()
    for shot in retried:
        assert shot.retry is not None
        assert shot.retry.status == 201, shot.retry.answer()

    # The database: each slot the load asked for holds at most one booking.
    rows = await db.fetch(
        """
        SELECT b.id::text AS id, b.practitioner_id::text AS practitioner, lower(b.period) AS start,
               b.status
        FROM bookings.bookings b
        JOIN unnest($1::uuid[], $2::timestamptz[]) AS s(practitioner, start)
          ON b.practitioner_id = s.practitioner AND lower(b.period) = s.start
        """,
        [uuid.UUID(s.practitioner) for s in shots],
        [s.start for s in shots],
    )
    by_slot: dict[tuple[str, datetime], list[str]] = defaultdict(list)
    for row in rows:
        by_slot[(row["practitioner"], row["start"])].append(row["id"])
    doubled = {str(k): v for k, v in by_slot.items() if len(v) > 1}
    assert doubled == {}, f"slots booked twice: {doubled}"
    assert all(row["status"] in LIVE for row in rows)
    in_db = {row["id"] for row in rows}
    acknowledged = {s.booking_id for s in shots if s.status == 201}
    acknowledged |= {s.retry.booking_id for s in retried if s.retry is not None}
    acknowledged.discard(None)
    assert acknowledged <= in_db, f"answered 201 but not in the database: {acknowledged - in_db}"
    for shot in retried:
        assert shot.retry is not None
        # The repeat names the slot's one booking: no second booking for one key.
        assert by_slot[shot.slot] == [shot.retry.booking_id], (shot.answer(), by_slot[shot.slot])
    in_doubt = in_db - acknowledged
    doubtful_slots = {s.slot for s in shots if s.status in FIVE_XX or s.error}
    slot_of = {row["id"]: (row["practitioner"], row["start"]) for row in rows}
    assert {slot_of[b] for b in in_doubt} <= doubtful_slots, "a booking nobody asked for"
    overlapping = await db.fetchval(
        """
        SELECT count(*) FROM bookings.bookings a JOIN bookings.bookings b
          ON a.practitioner_id = b.practitioner_id AND a.id < b.id AND a.period && b.period
        WHERE a.status = ANY($1::text[]) AND b.status = ANY($1::text[])
        """,
        list(LIVE),
    )
    assert overlapping == 0

    # Every committed booking (acknowledged or not) has its webhook.
    receiver = faulty.receiver
    committed = in_db
    try:
        await eventually(
            lambda: committed <= receiver.booking_ids(),
            f"a booking.created webhook for each of {len(committed)} committed bookings",
            DELIVERY_SECONDS,
        )
    except AssertionError as missing:
        lost = committed - receiver.booking_ids()
        where = await whereabouts(db, lost, faulty.endpoint["id"])
        dead = await dead_letters(faulty.env["AMQP_URL"], faulty.env["VETGATE_QUEUE_PREFIX"])
        raise AssertionError(
            f"{missing}; {len(lost)} lost: {where}; dead-lettered at callbacks.intake: {dead}"
        ) from None
    # The service's own record agrees, deliveries leased by a worker that died included.
    endpoint_id = uuid.UUID(faulty.endpoint["id"])

    async def all_succeeded() -> bool:
        rows = await db.fetch(
            "SELECT status, count(*) AS n FROM callbacks.deliveries WHERE endpoint_id = $1 "
            "GROUP BY status",
            endpoint_id,
        )
        return {r["status"]: r["n"] for r in rows}.keys() <= {"succeeded"}

    await eventually(all_succeeded, "every delivery recorded as succeeded", DELIVERY_SECONDS)
    webhooks = [h for h in receiver.created() if h.event["data"]["id"] in committed]
    ids_by_booking: dict[str, set[str]] = defaultdict(set)
    bodies: dict[str, set[bytes]] = defaultdict(set)
    for hook in webhooks:
        ids_by_booking[hook.event["data"]["id"]].add(hook.webhook_id)
        bodies[hook.webhook_id].add(hook.body)
        assert demo.verify_webhook(faulty.endpoint["secret"], hook.headers, hook.body)
    # One event per booking: a repeat carries the same webhook-id and the same body.
    assert {b: ids for b, ids in ids_by_booking.items() if len(ids) > 1} == {}
    assert {i: len(b) for i, b in bodies.items() if len(b) > 1} == {}
    delivered = set(ids_by_booking)
    account = Account(
        requests=len(shots),
        statuses=dict(Counter(s.status or s.error for s in shots)),
        slowest=round(max(s.seconds for s in shots), 2),
        retried=len(retried),
        acknowledged=len(acknowledged),
        in_doubt=len(in_doubt),
        committed=len(committed),
        doubled=len(doubled),
        webhooks=len(webhooks),
        delivered=len(delivered),
        duplicates=len(webhooks) - len(bodies),
        lost=len(committed - delivered),
    )
    print(account.line(case))
    assert account.lost == 0
    assert account.doubled == 0
    assert account.delivered == account.committed
    return account


async def ready(http: aiohttp.ClientSession, url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(url + "/readyz", timeout=aiohttp.ClientTimeout(total=3)) as r:
            return r.status == 200
    return False


async def all_ready(http: aiohttp.ClientSession, faulty: Faulty) -> None:
    for proc in faulty.all_procs():
        await eventually(
            lambda p=proc: ready(http, p.url),
            f"{proc.service} at {proc.url} ready again by itself",
            RECOVERY_SECONDS,
        )


# --- 1. a bookings copy killed -----------------------------------------------------------------


async def test_a_bookings_copy_killed_mid_traffic_loses_no_booking(
    http: aiohttp.ClientSession, faulty: Faulty, db: asyncpg.Pool
) -> None:
    victim = faulty.procs["bookings"][0]
    async with Load(faulty) as load:
        await asyncio.sleep(2.5)
        # The copy freezes first and a burst comes, so that requests are in flight at it (sent,
        # not answered) when it dies.
        os.kill(victim.child.process.pid, signal.SIGSTOP)
        for _ in range(BURST):
            load.fire()
        await asyncio.sleep(0.5)
        killed = load.now()
        await victim.kill()
        await asyncio.sleep(3.0)
        restarting = load.now()
        await victim.restart()
        back = load.now()
        await asyncio.sleep(2.5)
    account = await settle(faulty, load, db, "kill -9 bookings", allowed=frozenset({502, 503, 504}))
    gap = load.between(killed - 0.6, back)
    assert gap, "no request during the gap"
    # The other copy took the traffic; whatever was in flight at the killed one is a 502 (or
    # repeated on the other copy when it carried a key).
    assert [s for s in gap if s.status == 201], [s.answer() for s in gap]
    dropped = [s for s in gap if s.status == 502]
    for shot in dropped:
        assert problem_of(shot)["type"] == PROBLEM_BASE + "upstream-unavailable"
        assert "may or may not have taken effect" in shot.text
    # Those in flight without a key got a 502; those with a key were sent to the other copy.
    assert dropped, [s.answer() for s in gap]
    assert all(s.key is None for s in dropped)
    repeated = [
        line["msg"]
        for line in faulty.gateway.log_lines()
        if "dropped the connection before answering POST" in line.get("msg", "")
        and line["msg"].endswith("trying the next copy")
    ]
    assert repeated, faulty.gateway.log_text()[-3000:]
    # The started copy serves again.
    after = request_counts(await metrics_of(http, victim.url), "POST", "/bookings")
    assert after.get("201", 0) > 0, (after, f"restarted after {back - restarting:.1f} s")
    assert account.committed >= account.acknowledged > 0
    print(
        f"  answers from the freeze on: {dict(Counter(s.status for s in gap))}; "
        f"keyed requests the gateway sent to the other copy: {len(repeated)}"
    )


# --- 2. a callbacks copy killed with deliveries in flight -----------------------------------------


async def test_a_callbacks_copy_killed_with_deliveries_in_flight_loses_no_webhook(
    faulty: Faulty, db: asyncpg.Pool
) -> None:
    victim = faulty.procs["callbacks"][0]
    receiver = faulty.receiver
    receiver.delay = 2.0
    try:
        async with Load(faulty) as load:
            await asyncio.sleep(2.0)
            # The receiver is slow: deliveries are held there, each under a lease.
            await eventually(lambda: receiver.inflight >= 2, "deliveries held at the receiver")
            leased = await db.fetchval(
                "SELECT count(*) FROM callbacks.deliveries "
                "WHERE endpoint_id = $1 AND lease_until > now()",
                uuid.UUID(faulty.endpoint["id"]),
            )
            held = receiver.inflight
            await victim.kill()
            receiver.delay = 0.0
            await asyncio.sleep(1.5)
            await victim.restart()
            await asyncio.sleep(1.5)
    finally:
        receiver.delay = 0.0
    assert leased > 0, "no delivery was under a lease when the copy was killed"
    account = await settle(faulty, load, db, "kill -9 callbacks", allowed=frozenset())
    print(f"  held at the receiver when killed: {held}, leased: {leased}")
    assert account.webhooks >= account.committed


# --- 3. an endpoint that hangs -------------------------------------------------------------------


async def test_an_endpoint_that_hangs_does_not_delay_another(
    http: aiohttp.ClientSession, faulty: Faulty, db: asyncpg.Pool
) -> None:
    receiver = faulty.receiver
    receiver.release.clear()
    app_bearer = {
        "Authorization": "Bearer "
        + await access_token(http, faulty.base, faulty.credentials, scope="webhooks:manage")
    }
    async with http.post(
        faulty.base + "/v1/webhooks/endpoints",
        json={
            "url": receiver.url + "/hang",
            "event_types": ["booking.created"],
            "clinic_ids": [faulty.credentials["clinic_id"]],
            "description": "faults: a receiver that never answers",
        },
        headers=app_bearer,
    ) as r:
        hanging = await r.json()
        assert r.status == 201, hanging
    try:
        async with Load(faulty) as load:
            await asyncio.sleep(6.0)
        account = await settle(faulty, load, db, "hanging endpoint", allowed=frozenset())
        # How long each booking's webhook took at the healthy endpoint, from the 201.
        first_at: dict[str, float] = {}
        for hook in receiver.created():
            first_at.setdefault(hook.event["data"]["id"], hook.at)
        lags = [
            first_at[s.booking_id] - (s.began + s.seconds)
            for s in load.shots
            if s.booking_id is not None
        ]
        print(
            f"  webhook lag at the healthy endpoint: max {max(lags):.2f} s; "
            f"requests left hanging at the other: {len(receiver.hung)}"
        )
        assert len(receiver.hung) >= 5, "the hanging endpoint was hardly tried"
        # An attempt at the hanging endpoint takes ATTEMPT_SECONDS; none held up the other.
        assert max(lags) < ATTEMPT_SECONDS, sorted(lags)[-5:]
        timed_out = await db.fetchval(
            "SELECT count(*) FROM callbacks.attempts a JOIN callbacks.deliveries d "
            "ON d.id = a.delivery_id WHERE d.endpoint_id = $1 AND a.error = 'timed out'",
            uuid.UUID(hanging["id"]),
        )
        assert timed_out > 0
        assert account.committed == account.acknowledged
    finally:
        async with http.delete(
            f"{faulty.base}/v1/webhooks/endpoints/{hanging['id']}", headers=app_bearer
        ) as r:
            assert r.status == 204, await r.text()
        receiver.release.set()


# --- 4. garbage, oversized bodies, a flood ----------------------------------------------------


def assert_refusal(
    status: int, content_type: str, text: str, expected: set[int], what: str
) -> None:
    assert status in expected, (what, status, text[:500])
    assert content_type == PROBLEM_CONTENT_TYPE, (what, status, content_type, text[:500])
    assert "Traceback" not in text, (what, text[:2000])
    body = json.loads(text)
    assert body["status"] == status, (what, body)
    assert str(body["type"]).startswith(PROBLEM_BASE), (what, body)


async def raw_exchange(base: str, payload: bytes) -> bytes:
    """Write bytes to the gateway's socket; what comes back before it closes (or 5 s pass)."""
    parts = urlsplit(base)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(65536), 5.0)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_garbage_oversized_bodies_and_a_flood_get_4xx_problems_never_5xx(
    http: aiohttp.ClientSession, faulty: Faulty, db: asyncpg.Pool
) -> None:
    bookings = faulty.clinic_url + "/bookings"
    big = b'{"notes": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    valid = json.dumps(
        {
            "practitioner_id": str(sandbox.NURSE_ID),
            "service_id": faulty.service_id,
            "start": "2030-01-01T10:00:00+00:00",
        }
    ).encode()
    cases: list[tuple[str, bytes, str, set[int]]] = [
        ("malformed JSON", b'{"practitioner_id": ', "application/json", {400, 422}),
        ("binary noise", os.urandom(512), "application/json", {400, 422}),
        ("invalid UTF-8", b'{"notes": "\xff\xfe"}', "application/json", {400, 422}),
        ("a JSON array", b"[1, 2, 3]", "application/json", {422}),
        ("a JSON string", b'"booking"', "application/json", {422}),
        ("empty body", b"", "application/json", {400, 422}),
        ("NUL in a field", valid[:-1] + b', "notes": "a\\u0000b"}', "application/json", {422}),
        ("deeply nested", b"[" * 100_000 + b"]" * 100_000, "application/json", {400, 422}),
        (
            "nested in a field",
            b'{"notes": ' + b"[" * 600 + b"]" * 600 + b"}",
            "application/json",
            {422},
        ),
        ("huge number", b'{"start": 1' + b"0" * 5000 + b"}", "application/json", {400, 422}),
        ("plain text", valid, "text/plain", {415}),
        ("a form", b"practitioner_id=x", "application/x-www-form-urlencoded", {415}),
        ("XML", b"<booking/>", "application/xml", {415}),
        ("2 MB", big, "application/json", {413}),
    ]
    answers: dict[str, int] = {}
    wrong: list[str] = []

    def check(status: int, content_type: str, text: str, expected: set[int], what: str) -> None:
        """Go on through the cases when one fails: the account names them all at the end."""
        try:
            assert_refusal(status, content_type, text, expected, what)
        except AssertionError as exc:
            wrong.append(f"{what}: {exc}")

    async with Load(faulty) as load:
        for what, body, content_type, expected in cases:
            async with http.post(
                bookings,
                data=io.BytesIO(body) if len(body) > 1_000_000 else body,
                headers={**faulty.bearer, "Content-Type": content_type},
            ) as r:
                check(r.status, r.content_type, await r.text(), expected, what)
                answers[what] = r.status

        # 2 MB without a Content-Length (chunked): refused while it is read.
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(big), 65536):
                yield big[i : i + 65536]

        async with http.post(
            bookings,
            data=chunks(),
            headers={**faulty.bearer, "Content-Type": "application/json"},
        ) as r:
            check(r.status, r.content_type, await r.text(), {413}, "2 MB chunked")
            answers["2 MB chunked"] = r.status
        # Straight at a bookings copy and at the token endpoint, too.
        for what, url, headers in (
            (
                "2 MB at a bookings copy",
                faulty.procs["bookings"][1].url + bookings[len(faulty.base) :],
                faulty.bearer,
            ),
            ("2 MB at the token endpoint", faulty.base + "/oauth/token", {}),
        ):
            async with http.post(url, data=io.BytesIO(big), headers=headers) as r:
                check(r.status, r.content_type, await r.text(), {413}, what)
                answers[what] = r.status
        # The token endpoint answers as OAuth does (RFC 6749 §5.2), JSON with an "error", or with
        # a validation problem for a form that is not UTF-8: a 4xx either way.
        for what, data in (
            ("JSON at the token endpoint", b'{"grant_type": "client_credentials"}'),
            ("noise at the token endpoint", os.urandom(256)),
        ):
            async with http.post(
                faulty.base + "/oauth/token",
                data=data,
                headers={"Content-Type": "application/x-www-form-urlencoded"}
                if what.startswith("noise")
                else {"Content-Type": "application/json"},
            ) as r:
                text = await r.text(errors="replace")
                body = json.loads(text)
                if not (
                    (r.status == 400 and body.get("error") == "invalid_request")
                    or (r.status == 422 and r.content_type == PROBLEM_CONTENT_TYPE)
                ):
                    wrong.append(f"{what}: {r.status} {text[:300]}")
                answers[what] = r.status
        for what, auth in (
            ("garbage token", "Bearer not.a.jwt"),
            ("a 6 kB token", "Bearer " + "x" * 6000),
            ("no scheme", "garbage"),
        ):
            async with http.post(
                bookings,
                data=valid,
                headers={"Authorization": auth, "Content-Type": "application/json"},
            ) as r:
                check(r.status, r.content_type, await r.text(), {401}, what)
                answers[what] = r.status
        async with http.get(faulty.clinic_url + "/bookings/not-an-id", headers=faulty.bearer) as r:
            check(r.status, r.content_type, await r.text(), {404, 422}, "a bad id")
            answers["a bad id"] = r.status
        # Not HTTP at all: the connection is answered with a 400 and closed; the gateway lives.
        for payload in (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" * 20,
            b"GARBAGE GARBAGE GARBAGE\r\n\r\n",
            b"POST /v1/events HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
        ):
            noise = await raw_exchange(faulty.base, payload)
            assert re.match(rb"HTTP/1\.[01] 400 ", noise), (payload[:40], noise[:300])
            assert b"Traceback" not in noise
        answers["TLS hello on the HTTP port"] = 400

        # A flood of one route by one application (tier 0: 2 a second, burst 4, per process).
        clinic = faulty.credentials["clinic_id"]
        app, _ = await Admin(http, faulty.base).application_for(
            clinic, scopes=["bookings:read"], tier=0, name="Flood"
        )
        flooder = {
            "Authorization": "Bearer "
            + await access_token(http, faulty.base, app, clinic_id=clinic)
        }
        route = faulty.clinic_url + "/practitioners?limit=5"

        async def one() -> tuple[int, str, str, str | None]:
            async with http.get(route, headers=flooder) as r:
                return r.status, r.content_type, await r.text(), r.headers.get("Retry-After")

        flood_started = load.now()
        flood = await asyncio.gather(*(one() for _ in range(FLOOD)))
        flood_seconds = load.now() - flood_started
        statuses = Counter(status for status, *_ in flood)
        assert set(statuses) <= {200, 429}, statuses
        assert statuses[429] >= FLOOD // 2, statuses
        waits = []
        for status, content_type, text, retry_after in flood:
            if status == 429:
                assert_refusal(status, content_type, text, {429}, "flood")
                assert json.loads(text)["type"] == PROBLEM_BASE + "rate-limited"
                assert retry_after is not None
                assert float(retry_after) > 0
                waits.append(float(retry_after))
        # After the flood (and the wait it was told), the application is served again.
        await asyncio.sleep(min(max(waits), 5.0))
        recovered = await eventually(
            lambda: one_ok(http, route, flooder), "the flooding application served again", 10
        )
        assert recovered
    account = await settle(faulty, load, db, "garbage and flood", allowed=frozenset())
    # Another application's traffic went on through the flood.
    assert account.acknowledged == account.requests
    print(f"  refusals: {answers}\n  flood of {FLOOD} in {flood_seconds:.2f} s: {dict(statuses)}")
    assert wrong == [], "\n".join(wrong)


async def one_ok(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> bool:
    async with http.get(url, headers=headers) as r:
        return r.status == 200


# --- 5. RabbitMQ restarted -----------------------------------------------------------------------


async def test_a_rabbitmq_restart_under_load_loses_no_webhook(
    http: aiohttp.ClientSession, faulty: Faulty, db: asyncpg.Pool, amqp_url: str
) -> None:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not on PATH: the broker cannot be restarted from here")
    host = urlsplit(amqp_url).hostname or "localhost"
    if not await loopback(host):
        pytest.skip(f"the broker ({host}) is not local: it cannot be restarted from here")
    reason = await not_controlled(amqp_url)
    if reason is not None:
        pytest.skip(f"the broker cannot be restarted from here: {reason}")
    stopped = False
    try:
        async with Load(faulty) as load:
            await asyncio.sleep(2.0)
            stopping = load.now()
            stopped = True
            await must("stop_app")
            await asyncio.sleep(5.0)
            await must("start_app")
            await must("await_startup", "--timeout", "90")
            stopped = False
            started = load.now()
            await asyncio.sleep(3.0)
    finally:
        if stopped:
            start_node_now()
    during = load.between(stopping, started)
    assert during, "no request while the broker was down"
    # The outbox keeps the events: bookings go on being made.
    account = await settle(faulty, load, db, "RabbitMQ restart", allowed=frozenset())
    assert account.acknowledged == account.requests
    await all_ready(http, faulty)
    print(f"  requests while the broker was away: {len(during)}")


# --- 6. Postgres restarted -----------------------------------------------------------------------


async def pg_ctl(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        "pg_ctlcluster",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


async def local_cluster(database_url: str) -> tuple[str, str] | str:
    """(version, name) of the local cluster serving the run's database, or why there is none."""
    if shutil.which("pg_ctlcluster") is None or shutil.which("pg_lsclusters") is None:
        return "pg_ctlcluster is not on PATH"
    conn = await asyncpg.connect(database_url)
    try:
        data_directory = await conn.fetchval("SHOW data_directory")
    finally:
        await conn.close()
    process = await asyncio.create_subprocess_exec(
        "pg_lsclusters", "--no-header", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    for line in out.decode().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5] == data_directory and fields[3] == "online":
            return fields[0], fields[1]
    return f"no local cluster serves {data_directory}"


async def test_a_postgres_restart_under_load_answers_quickly_and_recovers_by_itself(
    http: aiohttp.ClientSession, faulty: Faulty, db: asyncpg.Pool, database_url: str
) -> None:
    found = await local_cluster(database_url)
    if isinstance(found, str):
        pytest.skip(f"the database server cannot be restarted from here: {found}")
    version, name = found
    down = False
    frozen = faulty.procs["callbacks"]
    try:
        async with Load(faulty) as load:
            await asyncio.sleep(2.0)
            # A backlog at the callbacks intake when the database goes: its consumers pause a
            # moment while bookings are committed and their events published.
            for proc in frozen:
                os.kill(proc.child.process.pid, signal.SIGSTOP)
            for _ in range(BURST):
                load.fire()
            await asyncio.sleep(1.5)
            stopping = load.now()
            down = True
            status, out = await pg_ctl(version, name, "stop", "--mode", "fast")
            assert status == 0, out
            for proc in frozen:
                os.kill(proc.child.process.pid, signal.SIGCONT)
            await asyncio.sleep(PG_DOWN_SECONDS)
            status, out = await pg_ctl(version, name, "start")
            assert status == 0, out
            down = False
            started = load.now()
            # Nobody restarts anything: every process finds the database again by itself.
            await all_ready(http, faulty)
            back = load.now()
            await asyncio.sleep(3.0)
    finally:
        for proc in frozen:
            os.kill(proc.child.process.pid, signal.SIGCONT)
        if down:
            await pg_ctl(version, name, "start")
    outage = load.between(stopping, started)
    assert outage, "no request while the database was down"
    refused = [s for s in outage if s.status != 201]
    assert refused, [s.answer() for s in outage]
    account = await settle(faulty, load, db, "Postgres restart", allowed=frozenset({503}))
    for shot in refused:
        assert problem_of(shot)["type"] == PROBLEM_BASE + "service-unavailable", shot.answer()
        assert shot.retry_after is not None, shot.answer()
    # Once the services were ready again, bookings succeed again.
    late = [s for s in load.shots if s.began > back + 1.0]
    assert late, "no request after the services were ready again"
    assert all(s.status == 201 for s in late), [s.answer() for s in late]
    kinds = Counter((s.status, problem_of(s)["type"].removeprefix(PROBLEM_BASE)) for s in refused)
    print(
        f"  during the outage: {len(outage)} requests, refused {dict(kinds)}, slowest "
        f"{max(s.seconds for s in outage):.2f} s; ready again {back - started:.1f} s after start"
    )
    assert account.committed >= account.acknowledged


# --- afterwards ---------------------------------------------------------------------------------


async def test_every_process_is_still_up_and_ready(
    http: aiohttp.ClientSession, faulty: Faulty
) -> None:
    for proc in faulty.all_procs():
        assert proc.child.process.returncode is None, (proc.service, proc.url)
    assert faulty.gateway.process.returncode is None
    await all_ready(http, faulty)
    lines = [(proc.service, line) for proc in faulty.all_procs() for line in proc.log_lines()]
    errors = Counter(
        (service, line.get("logger", "")) for service, line in lines if line.get("level") == "error"
    )
    print(f"\n  error lines logged over all the faults, by service and logger: {dict(errors)}")
    # Outages are answered, not crashed through: no request ended in an unhandled error.
    unhandled = [
        (service, line.get("exc", "").strip().splitlines()[-1:])
        for service, line in lines
        if line.get("msg", "").startswith("unhandled error")
    ]
    assert unhandled == []


async def test_every_process_stops_cleanly_after_the_faults(faulty: Faulty) -> None:
    """Background work that died during a fault (an outbox relay, its LISTEN connection) shows
    at the latest when the process stops: its shutdown raises what the task was left with."""
    procs = faulty.all_procs()
    await asyncio.gather(*(stop(p.child) for p in procs))
    unclean = {}
    for proc in procs:
        # Every line a service writes is a JSON log record; anything else is a raw traceback.
        raw = [line for line in proc.log_text_lines() if line and not line.startswith("{")]
        if proc.child.process.returncode != 0 or raw:
            unclean[f"{proc.service} {proc.url}"] = (proc.child.process.returncode, raw[-6:])
    assert unclean == {}
