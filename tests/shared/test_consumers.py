"""Durable consumers on the real broker: idempotent by event id, poison messages parked."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractIncomingMessage

from shared.broker import Broker
from shared.consumers import EventHandler, idempotent_handler
from shared.events import Event
from tests.conftest import private_schema_pool

SCHEMA = "consumers_test"
EFFECTS = f"consumer_effects_{uuid.uuid4().hex[:8]}"


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


@dataclass
class Subscription:
    """One test's durable queue, its routing keys and what its consumer saw."""

    queue: str
    prefix: str
    consumer: str
    handled: list[str] = field(default_factory=list)
    attempts: list[str] = field(default_factory=list)

    @property
    def event_type(self) -> str:
        return f"{self.prefix}.happened"

    @property
    def dead_queue(self) -> str:
        return self.queue + ".dead"


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await private_schema_pool(database_url, SCHEMA)
    await pool.execute(
        f"CREATE TABLE {EFFECTS} (event_id uuid NOT NULL, consumer text NOT NULL, note text)"
    )
    yield pool
    await pool.execute(f"DROP TABLE IF EXISTS {EFFECTS}")
    await pool.close()


@pytest.fixture
async def amqp(overrides: dict[str, Any]) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A plain channel of the test's own, for publishing raw bodies and inspecting queues."""
    connection = await aio_pika.connect(overrides["amqp_url"])
    channel = await connection.channel()
    yield channel
    await connection.close()


@pytest.fixture
async def broker(
    overrides: dict[str, Any], amqp: aio_pika.abc.AbstractChannel
) -> AsyncIterator[tuple[Broker, list[str]]]:
    """A connected broker; queues a test names in the list are deleted after it is closed."""
    broker = Broker(overrides["amqp_url"], overrides["events_exchange"])
    await asyncio.wait_for(broker.connect_forever(), 30)
    queues: list[str] = []
    yield broker, queues
    await broker.close()
    for name in queues:
        await amqp.queue_delete(name)
        await amqp.queue_delete(name + ".dead")


async def subscribe(
    broker: tuple[Broker, list[str]],
    overrides: dict[str, Any],
    pool: asyncpg.Pool,
    make_handler: Callable[[Subscription], EventHandler],
    *,
    delivery_limit: int = 5,
) -> Subscription:
    bus, queues = broker
    tag = uuid.uuid4().hex[:12]
    sub = Subscription(
        queue=f"{overrides['queue_prefix']}.consumertest.{tag}",
        prefix=f"consumertest.{tag}",
        consumer=f"consumertest-{tag}",
    )
    queues.append(sub.queue)
    inner = idempotent_handler(pool, sub.consumer, make_handler(sub))

    async def tracked(message: AbstractIncomingMessage) -> None:
        await inner(message)
        sub.handled.append(message.message_id or "")

    await bus.consume_durable(
        sub.queue, [f"{sub.prefix}.#"], tracked, delivery_limit=delivery_limit
    )
    return sub


def recording(sub: Subscription, *, fail: bool = False) -> EventHandler:
    """A handler that writes one effect row per call, then fails if asked to."""

    async def handle(event: Event, conn: asyncpg.Connection) -> None:
        sub.attempts.append(str(event.id))
        await conn.execute(
            f"INSERT INTO {EFFECTS} (event_id, consumer, note) VALUES ($1, $2, $3)",
            event.id,
            sub.consumer,
            event.data["note"],
        )
        if fail:
            raise RuntimeError("handler bug")

    return handle


def failing(sub: Subscription) -> EventHandler:
    return recording(sub, fail=True)


async def effects(pool: asyncpg.Pool, event: Event) -> int:
    count: int = await pool.fetchval(
        f"SELECT count(*) FROM {EFFECTS} WHERE event_id = $1", event.id
    )
    return count


async def processed(pool: asyncpg.Pool, sub: Subscription, event: Event) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = $2",
        sub.consumer,
        event.id,
    )
    return count


async def dead_letters(
    amqp: aio_pika.abc.AbstractChannel, sub: Subscription, expected: int
) -> list[AbstractIncomingMessage]:
    """Take ``expected`` messages off the dead-letter queue, waiting for them to arrive."""
    queue = await amqp.declare_queue(sub.dead_queue, passive=True)
    taken: list[AbstractIncomingMessage] = []

    async def take() -> bool:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            taken.append(message)
        return len(taken) >= expected

    await eventually(take, f"{expected} message(s) in {sub.dead_queue}")
    return taken


async def queue_depth(amqp: aio_pika.abc.AbstractChannel, name: str) -> int:
    queue = await amqp.declare_queue(name, passive=True)
    assert queue.declaration_result.message_count is not None
    return int(queue.declaration_result.message_count)


async def test_a_consumer_name_must_be_safe_to_inline(pool: asyncpg.Pool) -> None:
    async def handle(event: Event, conn: asyncpg.Connection) -> None:
        pass

    # The name is written into the statement that opens the handler's transaction.
    with pytest.raises(ValueError, match="consumer name"):
        idempotent_handler(pool, "bookings'); DROP TABLE processed_events; --", handle)
    assert callable(idempotent_handler(pool, "bookings.projections-2_b", handle))


async def test_same_event_twice_takes_effect_once(
    pool: asyncpg.Pool, broker: tuple[Broker, list[str]], overrides: dict[str, Any]
) -> None:
    sub = await subscribe(broker, overrides, pool, recording)
    bus, _ = broker
    event = Event(type=sub.event_type, data={"note": "once"})
    other = Event(type=sub.event_type, data={"note": "another event"})
    body = event.model_dump(mode="json")
    await bus.publish(event.type, body, event.id)
    await bus.publish(event.type, body, event.id)
    await bus.publish(other.type, other.model_dump(mode="json"), other.id)

    await eventually(lambda: len(sub.handled) == 3, "three deliveries handled")
    assert sorted(sub.handled) == sorted([str(event.id), str(event.id), str(other.id)])
    assert sub.attempts.count(str(event.id)) == 1
    assert await effects(pool, event) == 1
    assert await processed(pool, sub, event) == 1
    assert await effects(pool, other) == 1
    assert await processed(pool, sub, other) == 1


async def dead_lettered(
    sub: Subscription, broker: tuple[Broker, list[str]], amqp: aio_pika.abc.AbstractChannel
) -> tuple[Event, AbstractIncomingMessage]:
    """Publish one event to ``sub`` and take it off its dead-letter queue."""
    bus, _ = broker
    event = Event(type=sub.event_type, data={"note": "poison"})
    await bus.publish(event.type, event.model_dump(mode="json"), event.id)
    (dead,) = await dead_letters(amqp, sub, 1)
    return event, dead


async def test_failing_handler_is_retried_then_dead_lettered(
    pool: asyncpg.Pool,
    broker: tuple[Broker, list[str]],
    overrides: dict[str, Any],
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    sub = await subscribe(broker, overrides, pool, failing, delivery_limit=2)
    event, dead = await dead_lettered(sub, broker, amqp)
    assert dead.message_id == str(event.id)
    assert Event.model_validate_json(dead.body) == event
    assert dead.headers.get("x-first-death-reason") == "delivery_limit"
    # Retried after the first failure, and each failed attempt rolled its effects back.
    assert len(sub.attempts) >= 2
    assert set(sub.attempts) == {str(event.id)}
    assert await effects(pool, event) == 0
    assert await processed(pool, sub, event) == 0
    assert await queue_depth(amqp, sub.queue) == 0


async def test_a_handler_misusing_its_connection_is_dead_lettered_not_waited_on(
    pool: asyncpg.Pool,
    broker: tuple[Broker, list[str]],
    overrides: dict[str, Any],
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    def nesting(sub: Subscription) -> EventHandler:
        async def handle(event: Event, conn: asyncpg.Connection) -> None:
            sub.attempts.append(str(event.id))
            async with conn.transaction():  # refused inside the consumer's transaction
                await conn.execute("SELECT 1")

        return handle

    sub = await subscribe(broker, overrides, pool, nesting, delivery_limit=2)
    # Were it taken for the database being away, the message would be held and retried for
    # ever; as a handler failure it uses up its delivery limit.
    event, dead = await dead_lettered(sub, broker, amqp)
    assert dead.message_id == str(event.id)
    assert await processed(pool, sub, event) == 0


async def test_unparseable_bodies_go_straight_to_the_dead_queue(
    pool: asyncpg.Pool,
    broker: tuple[Broker, list[str]],
    overrides: dict[str, Any],
    amqp: aio_pika.abc.AbstractChannel,
) -> None:
    sub = await subscribe(broker, overrides, pool, recording, delivery_limit=5)
    exchange = await amqp.declare_exchange(
        overrides["events_exchange"], aio_pika.ExchangeType.TOPIC, durable=True
    )
    bodies = {
        "garbage": b"this is {not json",
        "not-an-event": b'{"type": "x", "unexpected": true}',
        "not-utf8": b"\xff\xfe\x00",
    }
    for name, body in bodies.items():
        await exchange.publish(
            aio_pika.Message(body, message_id=name, content_type="application/json"),
            routing_key=sub.event_type,
        )

    dead = await dead_letters(amqp, sub, len(bodies))
    assert sorted(m.message_id or "" for m in dead) == sorted(bodies)
    assert {m.message_id: m.body for m in dead} == bodies
    # Rejected on the first delivery: the handler never ran and nothing was redelivered.
    assert sub.attempts == []
    assert {m.headers.get("x-first-death-reason") for m in dead} == {"rejected"}
    assert sorted(sub.handled) == sorted(bodies)
    assert await queue_depth(amqp, sub.queue) == 0
