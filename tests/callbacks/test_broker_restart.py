"""A broker restart in the middle of a stream of events loses nothing.

A producer writes booking events for a partner's clinic into an outbox (each in a transaction of
its own), and an outbox relay with a broker connection of its own publishes them on the run's
exchange, as a service does. While the stream runs, the RabbitMQ node is restarted
(``rabbitmqctl stop_app`` / ``start_app``): some events are written before the cut and while it
lands, some while the node is down, some while it starts and some once it is up again. Every
event must still reach the partner's endpoint, duplicates (the same ``webhook-id`` twice, which
at-least-once delivery allows) must carry the same body, the outbox must drain, and the callbacks
service must be ready again.

The test needs a broker on this machine that ``rabbitmqctl`` controls; against any other broker
it is skipped. The node is started again whatever happens, so later tests find it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import asyncpg
import pytest

from shared.broker import Broker
from shared.events import BOOKING_CREATED, BOOKING_STATUS_CHANGED, Event
from shared.outbox import OutboxRelay, emit
from tests.callbacks.conftest import Callbacks, Partner, Received, Receiver
from tests.conftest import private_schema_pool
from tests.polling import eventually

PING = "ping"
PATH = "/restart"
#: The stream runs in four phases of at least this many events each: before and while the
#: node stops, while it is down, while it starts, and once it is up again.
PER_PHASE = 15
SPACING = 0.03
#: How long the node stays down: longer than aio-pika's reconnect interval (5 s), so that the
#: clients' reconnect attempts meet a closed port before they meet the node again.
DOWN_SECONDS = 7.0
BOOKINGS = 5
#: The robust connections retry every 5 s, and a relay that failed while the node was down
#: waits out its backoff (up to 15 s) unless a new commit wakes it; a restart takes seconds.
RECOVERY_SECONDS = 90.0
CTL_SECONDS = 120.0

pytestmark = pytest.mark.timeout(420)


# --- the broker node --------------------------------------------------------------------------


async def rabbitmqctl(*args: str, seconds: float = CTL_SECONDS) -> tuple[int, str]:
    """Run ``rabbitmqctl``; return its exit status and output."""
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), seconds)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


async def must(*args: str) -> str:
    status, out = await rabbitmqctl(*args)
    assert status == 0, f"rabbitmqctl {' '.join(args)} failed ({status}): {out}"
    return out


def start_node_now() -> None:
    """Start the node's app (a no-op when it runs) and wait until it has booted, from anywhere:
    also after a timeout has left the event loop unusable."""
    subprocess.run(
        ["rabbitmqctl", "start_app"], capture_output=True, timeout=CTL_SECONDS, check=False
    )
    subprocess.run(
        ["rabbitmqctl", "await_startup", "--timeout", "90"],
        capture_output=True,
        timeout=CTL_SECONDS,
        check=False,
    )


@dataclass
class Node:
    """The local RabbitMQ node the run's broker URL points at."""

    stopped: bool = False
    marks: dict[str, float] = field(default_factory=dict)

    async def stop(self) -> None:
        self.marks["stopping"] = time.monotonic()
        self.stopped = True
        await must("stop_app")
        self.marks["stopped"] = time.monotonic()

    async def start(self) -> None:
        self.marks["starting"] = time.monotonic()
        await must("start_app")
        await must("await_startup", "--timeout", "90")
        self.stopped = False
        self.marks["started"] = time.monotonic()


async def loopback(host: str) -> bool:
    """Whether ``host`` names this machine (every address it resolves to is a loopback one)."""
    try:
        found = await asyncio.get_running_loop().getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(found) and all(ipaddress.ip_address(a[4][0]).is_loopback for a in found)


async def not_controlled(amqp_url: str) -> str | None:
    """Why ``rabbitmqctl`` here cannot restart the node behind ``amqp_url``, or None when it
    can: a connection opened with a name of its own must show in the node's connections."""
    name = f"vetgate-restart-probe-{secrets.token_hex(6)}"
    try:
        connection = await aio_pika.connect(
            amqp_url, timeout=5, client_properties={"connection_name": name}
        )
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        return f"the broker cannot be reached ({type(exc).__name__})"
    async with connection:
        try:
            status, out = await rabbitmqctl("list_connections", "client_properties", seconds=30)
        except TimeoutError:
            return "rabbitmqctl did not answer"
    if status != 0:
        return f"rabbitmqctl cannot reach a node here ({status})"
    if name not in out:
        return "the node rabbitmqctl controls here is not the broker the tests use"
    return None


@pytest.fixture
async def node(amqp_url: str) -> AsyncIterator[Node]:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl is not on PATH: the broker cannot be restarted from here")
    host = urlsplit(amqp_url).hostname or "localhost"
    if not await loopback(host):
        pytest.skip(f"the broker ({host}) is not local: it cannot be restarted from here")
    reason = await not_controlled(amqp_url)
    if reason is not None:
        pytest.skip(f"the broker cannot be restarted from here: {reason}")
    node = Node()
    try:
        yield node
    finally:
        # The test starts the node again itself; this covers a test cut short (a timeout).
        if node.stopped:
            start_node_now()


# --- producing events -------------------------------------------------------------------------


@dataclass
class Written:
    event: Event
    at: float


class Producer:
    """Writes booking events for one clinic into the outbox, each in a transaction of its own,
    a few milliseconds apart, over a handful of bookings (so that sequences advance)."""

    def __init__(self, pool: asyncpg.Pool, clinic_id: str) -> None:
        self.pool = pool
        self.clinic_id = uuid.UUID(clinic_id)
        self.bookings = [uuid.uuid4() for _ in range(BOOKINGS)]
        self.written: list[Written] = []

    async def write(
        self,
        count: int,
        *,
        spacing: float = SPACING,
        until: asyncio.Future[Any] | None = None,
    ) -> None:
        """Write ``count`` events, and go on writing until ``until`` is done."""
        written = 0
        while written < count or (until is not None and not until.done()):
            await self.write_one()
            written += 1
            await asyncio.sleep(spacing)

    async def write_one(self) -> None:
        n = len(self.written)
        booking = self.bookings[n % BOOKINGS]
        first = n < BOOKINGS
        async with self.pool.acquire() as conn, conn.transaction():
            event = await emit(
                conn,
                BOOKING_CREATED if first else BOOKING_STATUS_CHANGED,
                {"id": str(booking), "status": "booked" if first else f"step-{n}"},
                aggregate=f"booking:{booking}",
                clinic_id=self.clinic_id,
            )
        self.written.append(Written(event, time.monotonic()))

    @property
    def events(self) -> list[Event]:
        return [w.event for w in self.written]

    def between(self, start: float, end: float) -> int:
        return sum(1 for w in self.written if start <= w.at <= end)


async def unpublished(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    return count


@pytest.fixture
async def outbox(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """An outbox on a schema of its own: only this test's relay publishes from it."""
    pool = await private_schema_pool(database_url, f"restart_{secrets.token_hex(4)}")
    yield pool
    await pool.close()


@pytest.fixture
async def relay(outbox: asyncpg.Pool, overrides: dict[str, Any]) -> AsyncIterator[Broker]:
    """The outbox relay, on a broker connection of its own established as services do it."""
    broker = Broker(overrides["amqp_url"], overrides["events_exchange"])
    connecting = asyncio.create_task(broker.connect_forever())
    schema = await outbox.fetchval("SELECT current_schema()")
    relay = OutboxRelay(
        outbox, broker, schema=schema, poll_seconds=overrides["outbox_poll_seconds"]
    )
    running = asyncio.create_task(relay.run())
    try:
        assert await broker.wait_ready(30.0), "the relay's broker connection"
        yield broker
    finally:
        for task in (running, connecting):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await broker.close()


# --- what arrived -----------------------------------------------------------------------------


def events_at(receiver: Receiver) -> list[Received]:
    return [r for r in receiver.at(PATH) if r.json().get("type") != PING]


def arrived(receiver: Receiver) -> set[str]:
    return {r.headers.get("webhook-id", "") for r in events_at(receiver)}


async def ready(http: aiohttp.ClientSession, base: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(base + "/readyz") as response:
            return response.status == 200
    return False


async def deliveries_by_status(service: Callbacks, endpoint_id: str) -> dict[str, int]:
    async with service.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM deliveries WHERE endpoint_id = $1 GROUP BY status",
            uuid.UUID(endpoint_id),
        )
    return {r["status"]: r["n"] for r in rows}


async def whereabouts(
    missing: set[str], outbox: asyncpg.Pool, service: Callbacks
) -> dict[str, str]:
    """How far each missing event got: the outbox, the callbacks intake, a delivery."""
    keys = [uuid.UUID(i) for i in missing]
    published = {
        str(r["event_id"]): r["published_at"] is not None
        for r in await outbox.fetch(
            "SELECT event_id, published_at FROM outbox WHERE event_id = ANY($1::uuid[])", keys
        )
    }
    async with service.pool.acquire() as conn:
        kept = {
            str(r["event_id"])
            for r in await conn.fetch(
                "SELECT event_id FROM events WHERE event_id = ANY($1::uuid[])", keys
            )
        }
        delivery = {
            str(r["event_id"]): f"{r['status']} after {r['attempts']} attempts"
            for r in await conn.fetch(
                "SELECT event_id, status, attempts FROM deliveries "
                "WHERE event_id = ANY($1::uuid[])",
                keys,
            )
        }
    found = {}
    for i in sorted(missing):
        if not published.get(i):
            found[i] = "unpublished in the outbox"
        elif i not in kept:
            found[i] = "published, never taken in by callbacks"
        else:
            found[i] = "taken in, delivery " + delivery.get(i, "never made")
    return found


async def equal(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)


# --- the test ---------------------------------------------------------------------------------


async def test_a_broker_restart_mid_stream_loses_no_event(
    node: Node,
    partner: Partner,
    receiver: Receiver,
    callbacks: Callbacks,
    outbox: asyncpg.Pool,
    relay: Broker,
    bus: Broker,
    http: aiohttp.ClientSession,
    auth_url: str,
) -> None:
    endpoint = await partner.endpoint(receiver.url(PATH))
    producer = Producer(outbox, partner.tenant.clinic_id)
    try:
        # Phase 1: the stream is running when the node is told to stop, and goes on while it
        # stops, so that publishes are in flight when the connections are cut.
        await producer.write(PER_PHASE // 3)
        stopping = asyncio.create_task(node.stop())
        await producer.write(PER_PHASE, until=stopping)
        await stopping
        # Phase 2: the node is down; the events wait in the outbox.
        await producer.write(PER_PHASE, spacing=DOWN_SECONDS / PER_PHASE)
        # Phase 3: the node starts while events keep coming.
        starting = asyncio.create_task(node.start())
        await producer.write(PER_PHASE, until=starting)
        await starting
        # Phase 4: the node is up; the clients are still finding their way back.
        await producer.write(PER_PHASE)
    finally:
        if node.stopped:
            await node.start()

    events = producer.events
    ids = {str(e.id) for e in events}
    assert len(ids) == len(events) >= 4 * PER_PHASE
    marks = node.marks
    windows = {
        "stopping": producer.between(marks["stopping"], marks["stopped"]),
        "down": producer.between(marks["stopped"], marks["starting"]),
        "starting": producer.between(marks["starting"], marks["started"]),
    }
    assert windows["down"] >= PER_PHASE, windows

    try:
        await eventually(
            lambda: ids <= arrived(receiver),
            "every event at the partner's endpoint after the restart",
            RECOVERY_SECONDS,
        )
    except AssertionError as missing:
        where = await whereabouts(ids - arrived(receiver), outbox, callbacks)
        raise AssertionError(f"{missing}; what did not arrive: {where}") from None
    assert arrived(receiver) - ids == set()
    bodies: dict[str, set[bytes]] = defaultdict(set)
    for request in events_at(receiver):
        bodies[request.headers["webhook-id"]].add(request.body)
    differing = {k: v for k, v in bodies.items() if len(v) > 1}
    assert differing == {}, "a repeated webhook-id came with another body"
    by_id = {str(e.id): e for e in events}
    for webhook_id, (body,) in bodies.items():
        assert json.loads(body) == by_id[webhook_id].model_dump(mode="json")

    await eventually(lambda: equal(unpublished(outbox), 0), "the outbox to drain", RECOVERY_SECONDS)
    # The intake kept each event once: one delivery per event, and each succeeded.
    await eventually(
        lambda: equal(deliveries_by_status(callbacks, endpoint["id"]), {"succeeded": len(ids)}),
        "every delivery recorded as succeeded",
        RECOVERY_SECONDS,
    )
    await eventually(
        lambda: ready(http, callbacks.url), "the callbacks service ready", RECOVERY_SECONDS
    )
    # The rest of the run shares these: they must be back before the next test.
    await eventually(lambda: ready(http, auth_url), "the auth service ready", RECOVERY_SECONDS)
    await eventually(bus.is_ready, "the test bus reconnected", RECOVERY_SECONDS)
