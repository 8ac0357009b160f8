"""The transactional outbox against the real database and broker.

Events are written in the caller's transaction and leave through ``OutboxRelay``; a broker that is
down or drops its connection mid-batch must never cost an event (at-least-once delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import aio_pika
import aiormq
import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from shared.broker import Broker, BrokerUnavailable
from shared.errors import PayloadTooLarge
from shared.events import Event
from shared.outbox import MAX_EVENT_BYTES, Draft, OutboxRelay, emit, emit_many, notify_channel
from tests.conftest import private_schema_pool

SCHEMA = "outbox_test"
DEAD_BROKER_URL = "amqp://guest:guest@127.0.0.1:1/"
ENVELOPE_KEYS = {"id", "type", "occurred_at", "clinic_id", "sequence", "aggregate", "data"}


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], what: str, seconds: float = 30.0
) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` once ``seconds`` have passed."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Receiver:
    """An exclusive queue on the run's exchange, bound to one test's event types."""

    def __init__(self, url: str, exchange: str) -> None:
        self.url = url
        self.exchange = exchange
        self.prefix = f"outboxtest.{uuid.uuid4().hex[:12]}"
        self.event_type = f"{self.prefix}.happened"
        self.counts: Counter[str] = Counter()
        self.events: dict[str, Event] = {}
        self.problems: list[str] = []
        self._connection: aio_pika.abc.AbstractConnection | None = None

    async def start(self) -> None:
        self._connection = await aio_pika.connect(self.url)
        channel = await self._connection.channel()
        exchange = await channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=f"{self.prefix}.#")
        await queue.consume(self._on_message, no_ack=True)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = Event.model_validate_json(message.body)
        except ValueError as exc:
            self.problems.append(f"unparseable body: {exc}")
            return
        if message.message_id != str(event.id):
            self.problems.append(f"message_id {message.message_id} != event id {event.id}")
        if message.type != event.type:
            self.problems.append(f"message type {message.type} != event type {event.type}")
        self.counts[str(event.id)] += 1
        self.events[str(event.id)] = event

    def has_all(self, ids: set[str]) -> bool:
        return ids <= self.counts.keys()

    def missing(self, ids: set[str]) -> set[str]:
        return ids - self.counts.keys()


class DroppingBroker(Broker):
    """The real broker whose connection is cut right after the ``drop_after``-th confirm.

    The cut runs as a separate task, so it lands while the next publish of the batch is in
    flight: the way a broker restart or a network failure meets a running relay.
    """

    def __init__(self, url: str, exchange: str, *, drop_after: int) -> None:
        super().__init__(url, exchange, publish_timeout=10.0)
        self.drop_after = drop_after
        self.confirmed = 0
        self.dropped = asyncio.Event()
        self._drop_task: asyncio.Task[None] | None = None

    async def publish(self, routing_key: str, body: dict[str, Any], message_id: uuid.UUID) -> None:
        await super().publish(routing_key, body, message_id)
        self.confirmed += 1
        if self.confirmed == self.drop_after:
            self._drop_task = asyncio.create_task(self._drop())

    async def _drop(self) -> None:
        connection: AbstractRobustConnection | None = self._connection
        assert connection is not None
        assert connection.transport is not None
        # Close the AMQP connection under aio-pika's feet: it sees a lost connection, fails what
        # is in flight and reconnects by itself, exactly as after a broker restart.
        await connection.transport.connection.close(
            aiormq.exceptions.AMQPConnectionError("simulated broker outage")
        )
        self.dropped.set()


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await private_schema_pool(database_url, SCHEMA)
    yield pool
    await pool.close()


@pytest.fixture
async def broker(overrides: dict[str, Any]) -> AsyncIterator[Broker]:
    broker = Broker(overrides["amqp_url"], overrides["events_exchange"])
    await asyncio.wait_for(broker.connect_forever(), 30)
    yield broker
    await broker.close()


@pytest.fixture
async def receiver(overrides: dict[str, Any]) -> AsyncIterator[Receiver]:
    receiver = Receiver(overrides["amqp_url"], overrides["events_exchange"])
    await receiver.start()
    yield receiver
    await receiver.close()
    assert receiver.problems == []


async def emit_committed(pool: asyncpg.Pool, event_type: str, count: int) -> list[Event]:
    aggregate = f"agg-{uuid.uuid4()}"
    async with pool.acquire() as conn, conn.transaction():
        return [await emit(conn, event_type, {"n": n}, aggregate=aggregate) for n in range(count)]


async def unpublished(pool: asyncpg.Pool, events: list[Event]) -> set[str]:
    rows = await pool.fetch(
        "SELECT event_id FROM outbox WHERE event_id = ANY($1::uuid[]) AND published_at IS NULL",
        [e.id for e in events],
    )
    return {str(r["event_id"]) for r in rows}


async def all_published(pool: asyncpg.Pool, events: list[Event]) -> bool:
    return not await unpublished(pool, events)


async def listening_backends(pool: asyncpg.Pool) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query ILIKE $1",
        f"LISTEN %{notify_channel(SCHEMA)}%",
    )
    return count


async def more_listening_backends(pool: asyncpg.Pool, than: int) -> bool:
    return await listening_backends(pool) > than


async def drain(pool: asyncpg.Pool, broker: Broker) -> None:
    """Publish whatever other tests left behind, so that a test sees only its own rows."""
    relay = OutboxRelay(pool, broker, schema=SCHEMA, batch=500)
    while await relay.publish_pending():
        pass


async def test_emit_in_rolled_back_transaction_leaves_nothing(pool: asyncpg.Pool) -> None:
    aggregate = f"agg-{uuid.uuid4()}"
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        event = await emit(conn, "outboxtest.rolled.back", {"a": 1}, aggregate=aggregate)
        assert event.sequence == 1
        await tx.rollback()
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE event_id = $1", event.id) == 0
        # The sequence number was allocated in the same transaction, so it is handed out again.
        async with conn.transaction():
            again = await emit(conn, "outboxtest.rolled.back", {"a": 2}, aggregate=aggregate)
        assert again.sequence == 1


async def test_emit_many_numbers_each_aggregate_in_the_order_given(pool: asyncpg.Pool) -> None:
    a, b = f"agg-{uuid.uuid4()}", f"agg-{uuid.uuid4()}"
    async with pool.acquire() as conn:
        async with conn.transaction():
            await emit(conn, "outboxtest.many", {"n": 0}, aggregate=a)
            written = await emit_many(
                conn,
                [Draft("outboxtest.many", {"n": n}, agg) for n, agg in enumerate([a, b, a, a], 1)],
            )
        assert [(e.aggregate, e.sequence, e.data["n"]) for e in written] == [
            (a, 2, 1),
            (b, 1, 2),
            (a, 3, 3),
            (a, 4, 4),
        ]
        rows = await conn.fetch(
            "SELECT payload FROM outbox WHERE event_id = ANY($1::uuid[]) ORDER BY seq",
            [e.id for e in written],
        )
    # The outbox keeps the order given, which is the order the relay publishes in.
    assert [(r["payload"]["data"]["n"], r["payload"]["sequence"]) for r in rows] == [
        (1, 2),
        (2, 1),
        (3, 3),
        (4, 4),
    ]


async def test_an_event_over_256_kb_is_refused_before_anything_is_written(
    pool: asyncpg.Pool,
) -> None:
    aggregate = f"agg-{uuid.uuid4()}"
    async with pool.acquire() as conn:
        with pytest.raises(PayloadTooLarge) as refused:
            async with conn.transaction():
                await emit(
                    conn, "outboxtest.big", {"blob": "x" * MAX_EVENT_BYTES}, aggregate=aggregate
                )
        assert refused.value.slug == "event-too-large"
        assert refused.value.status == 413
        assert "outboxtest.big" in refused.value.detail
        count = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE payload ->> 'aggregate' = $1", aggregate
        )
        assert count == 0
        # Just under the limit is fine.
        async with conn.transaction():
            event = await emit(
                conn,
                "outboxtest.big",
                {"blob": "x" * (MAX_EVENT_BYTES - 1024)},
                aggregate=aggregate,
            )
        assert event.aggregate == aggregate


async def test_emit_in_committed_transaction_writes_the_envelope(pool: asyncpg.Pool) -> None:
    clinic_id = uuid.uuid4()
    first, other = f"agg-{uuid.uuid4()}", f"agg-{uuid.uuid4()}"
    async with pool.acquire() as conn:
        async with conn.transaction():
            events = [
                await emit(
                    conn, "outboxtest.committed", {"n": n}, aggregate=first, clinic_id=clinic_id
                )
                for n in range(3)
            ]
            unrelated = await emit(conn, "outboxtest.committed", {"n": 9}, aggregate=other)
        async with conn.transaction():
            fourth = await emit(conn, "outboxtest.committed", {"n": 3}, aggregate=first)

        assert [e.sequence for e in events] == [1, 2, 3]
        assert unrelated.sequence == 1
        assert fourth.sequence == 4

        rows = await conn.fetch(
            "SELECT event_id, event_type, payload, published_at, attempts FROM outbox "
            "WHERE event_id = ANY($1::uuid[]) ORDER BY seq",
            [e.id for e in events],
        )
    assert [r["event_id"] for r in rows] == [e.id for e in events]
    for row, event in zip(rows, events, strict=True):
        payload = row["payload"]
        assert set(payload) == ENVELOPE_KEYS
        assert row["event_type"] == "outboxtest.committed"
        assert payload["id"] == str(event.id)
        assert payload["type"] == "outboxtest.committed"
        assert payload["clinic_id"] == str(clinic_id)
        assert payload["sequence"] == event.sequence
        assert payload["data"] == event.data
        assert Event.model_validate(payload) == event
        assert row["published_at"] is None
        assert row["attempts"] == 0


async def test_broker_down_keeps_rows_until_a_broker_takes_them(
    pool: asyncpg.Pool, broker: Broker, receiver: Receiver, overrides: dict[str, Any]
) -> None:
    await drain(pool, broker)
    events = await emit_committed(pool, receiver.event_type, 5)
    ids = {str(e.id) for e in events}

    dead = Broker(DEAD_BROKER_URL, overrides["events_exchange"])
    connecting = asyncio.create_task(dead.connect_forever())
    try:
        assert not await dead.wait_ready(0.5)
        with pytest.raises(BrokerUnavailable):
            await OutboxRelay(pool, dead, schema=SCHEMA).publish_pending()
    finally:
        connecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await connecting
        await dead.close()
    assert await unpublished(pool, events) == ids

    relay = OutboxRelay(pool, broker, schema=SCHEMA)
    published = 0
    while sent := await relay.publish_pending():
        published += sent
    assert published == len(events)
    assert await unpublished(pool, events) == set()
    rows = await pool.fetch(
        "SELECT published_at, attempts FROM outbox WHERE event_id = ANY($1::uuid[])",
        [e.id for e in events],
    )
    assert all(r["published_at"] is not None and r["attempts"] == 1 for r in rows)

    await eventually(lambda: receiver.has_all(ids), "all events at the receiver")
    assert all(receiver.counts[i] == 1 for i in ids), receiver.counts
    for event in events:
        assert receiver.events[str(event.id)] == event


async def test_broker_connection_lost_mid_batch_loses_nothing(
    pool: asyncpg.Pool, broker: Broker, receiver: Receiver, overrides: dict[str, Any]
) -> None:
    await drain(pool, broker)
    events = await emit_committed(pool, receiver.event_type, 200)
    ids = {str(e.id) for e in events}

    flaky = DroppingBroker(overrides["amqp_url"], overrides["events_exchange"], drop_after=20)
    await asyncio.wait_for(flaky.connect_forever(), 30)
    try:
        relay = OutboxRelay(pool, flaky, schema=SCHEMA, batch=500)
        with pytest.raises(BrokerUnavailable):
            await relay.publish_pending()
        await eventually(flaky.dropped.is_set, "the connection to be cut")

        # What was confirmed before the failure is marked sent; nothing else is.
        marked = ids - await unpublished(pool, events)
        assert len(marked) == flaky.confirmed
        assert flaky.drop_after <= len(marked) < len(events)
        await eventually(lambda: receiver.has_all(marked), "the confirmed events")

        # Later rounds, once aio-pika has reconnected, publish the rest.
        failed_rounds = 1
        deadline = asyncio.get_running_loop().time() + 60
        while await unpublished(pool, events):
            assert asyncio.get_running_loop().time() < deadline, "relay never recovered"
            try:
                await relay.publish_pending()
            except BrokerUnavailable:
                failed_rounds += 1
                await asyncio.sleep(0.1)
    finally:
        await flaky.close()

    await eventually(lambda: receiver.has_all(ids), "every event after the reconnect")
    assert receiver.missing(ids) == set()
    # At-least-once: a message in flight when a round failed may arrive twice, nothing else.
    duplicates = sum(receiver.counts[i] for i in ids) - len(ids)
    assert 0 <= duplicates <= failed_rounds, receiver.counts


async def test_run_survives_a_lost_broker_connection(
    pool: asyncpg.Pool, receiver: Receiver, overrides: dict[str, Any]
) -> None:
    flaky = DroppingBroker(overrides["amqp_url"], overrides["events_exchange"], drop_after=20)
    await asyncio.wait_for(flaky.connect_forever(), 30)
    relay = OutboxRelay(pool, flaky, schema=SCHEMA, poll_seconds=0.1, batch=500)
    task = asyncio.create_task(relay.run())
    try:
        events = await emit_committed(pool, receiver.event_type, 200)
        ids = {str(e.id) for e in events}
        await eventually(flaky.dropped.is_set, "the connection to be cut")
        await eventually(
            lambda: task.done() or receiver.has_all(ids), "every event after the reconnect", 60.0
        )
        assert not task.done(), f"the relay stopped on a lost connection: {task.exception()!r}"
        await eventually(lambda: all_published(pool, events), "every row marked published")
        assert receiver.missing(ids) == set()
    finally:
        task.cancel()
        # A relay that died has been reported above; here it only has to be gone.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        await flaky.close()


async def test_run_publishes_committed_events_on_notify(
    pool: asyncpg.Pool, broker: Broker, receiver: Receiver
) -> None:
    # A poll interval far beyond the waits below: only NOTIFY can wake the relay in time.
    relay = OutboxRelay(pool, broker, schema=SCHEMA, poll_seconds=600)
    before = await listening_backends(pool)
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: more_listening_backends(pool, before), "the relay to LISTEN", 10.0)

        # Each commit wakes the relay again, including commits that land while it is busy.
        events: list[Event] = []
        for _ in range(30):
            (event,) = await emit_committed(pool, receiver.event_type, 1)
            events.append(event)
            await eventually(
                partial(receiver.has_all, {str(event.id)}), "a NOTIFY-driven publish", 20.0
            )
        burst = await asyncio.gather(
            *(emit_committed(pool, receiver.event_type, 3) for _ in range(10))
        )
        events += [e for batch in burst for e in batch]
        ids = {str(e.id) for batch in burst for e in batch}
        await eventually(lambda: receiver.has_all(ids), "a burst of concurrent commits", 20.0)
        assert not task.done()
        await eventually(lambda: all_published(pool, events), "the relay to mark what it published")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_two_relays_share_a_round_without_double_publishing(
    pool: asyncpg.Pool, broker: Broker, receiver: Receiver
) -> None:
    await drain(pool, broker)
    events = await emit_committed(pool, receiver.event_type, 100)
    ids = {str(e.id) for e in events}

    first = OutboxRelay(pool, broker, schema=SCHEMA, batch=60)
    second = OutboxRelay(pool, broker, schema=SCHEMA, batch=60)
    sent_first, sent_second = await asyncio.gather(
        first.publish_pending(), second.publish_pending()
    )
    # SKIP LOCKED hands each row to one relay: together they marked every row exactly once.
    assert sent_first > 0
    assert sent_second > 0
    assert sent_first + sent_second == len(events)
    assert await unpublished(pool, events) == set()
    attempts = await pool.fetch(
        "SELECT attempts FROM outbox WHERE event_id = ANY($1::uuid[])", [e.id for e in events]
    )
    assert {r["attempts"] for r in attempts} == {1}

    await eventually(lambda: receiver.has_all(ids), "every event from both relays")
    assert receiver.missing(ids) == set()
