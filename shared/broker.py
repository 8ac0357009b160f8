"""RabbitMQ plumbing: one robust connection per process, a confirming publisher, consumers.

Topology: every event goes to one durable topic exchange keyed by event type. Each durable
consumer owns a quorum queue with a dead-letter exchange and a delivery limit, so a poison
message ends up parked in ``<queue>.dead`` instead of looping. Broadcast subscribers (one per
process, e.g. token revocation) get an exclusive, auto-deleted queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
)
from aiohttp import web

from shared.keys import BROKER, SETTINGS
from shared.settings import ServiceSettings

log = logging.getLogger("vetgate.broker")

MessageHandler = Callable[[AbstractIncomingMessage], Awaitable[None]]


class BrokerUnavailable(Exception):
    """The broker cannot take a message now; the caller keeps it and tries again later."""


class Broker:
    def __init__(self, url: str, exchange: str, *, publish_timeout: float = 10.0) -> None:
        self._url = url
        self._exchange_name = exchange
        self._publish_timeout = publish_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._exchange: AbstractRobustExchange | None = None
        self._dlx: AbstractRobustExchange | None = None
        self._connected = asyncio.Event()
        self._subscriptions: list[Callable[[], Awaitable[None]]] = []
        self._connected_callbacks: list[Callable[[], Awaitable[None]]] = []
        self._tasks: set[asyncio.Future[None]] = set()

    @property
    def exchange_name(self) -> str:
        return self._exchange_name

    @property
    def dead_letter_exchange(self) -> str:
        return self._exchange_name + ".dlx"

    def is_ready(self) -> bool:
        conn = self._connection
        # ``connected`` is cleared while aio-pika is reconnecting, ``is_closed`` only at the end.
        return (
            self._connected.is_set()
            and conn is not None
            and not conn.is_closed
            and conn.connected.is_set()
        )

    async def wait_ready(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), seconds)
        return self.is_ready()

    async def connect_forever(self) -> None:
        """Connect, retrying with backoff; after that aio-pika reconnects by itself."""
        delay = 0.5
        while True:
            try:
                await self._connect_once()
                return
            except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
                log.warning(
                    "broker not reachable (%s); retrying in %.1fs", type(exc).__name__, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _connect_once(self) -> None:
        connection = await aio_pika.connect_robust(self._url, timeout=5)
        try:
            channel = await connection.channel(publisher_confirms=True)
            self._exchange = await channel.declare_exchange(
                self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
            self._dlx = await channel.declare_exchange(
                self.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
            )
            self._connection, self._channel = connection, channel
            for subscribe in self._subscriptions:
                await subscribe()
        except BaseException:
            # A half-set-up robust connection would keep reconnecting on its own forever.
            self._connection = self._channel = None
            await connection.close()
            raise
        connection.reconnect_callbacks.add(lambda _sender: self._fire_connected())
        self._connected.set()
        self._fire_connected()

    def on_connected(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` after every (re)connection, once subscriptions are in place.

        Exclusive queues die with a connection, so whatever was broadcast meanwhile is lost;
        this is where a subscriber catches up.
        """
        self._connected_callbacks.append(callback)
        if self.is_ready():
            self._spawn(callback())

    def _fire_connected(self) -> None:
        for callback in self._connected_callbacks:
            self._spawn(callback())

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def publish(self, routing_key: str, body: dict[str, Any], message_id: uuid.UUID) -> None:
        """Publish and wait for the broker's confirm; raise BrokerUnavailable otherwise."""
        if not self.is_ready() or self._exchange is None:
            raise BrokerUnavailable("not connected")
        message = aio_pika.Message(
            json.dumps(body, separators=(",", ":")).encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(message_id),
            type=routing_key,
        )
        try:
            await asyncio.wait_for(
                self._exchange.publish(message, routing_key=routing_key, mandatory=False),
                self._publish_timeout,
            )
        except Exception as exc:
            # A lost connection fails in-flight publishes with AMQPError, RuntimeError or even a
            # bare Exception (aiormq); whatever it is, the message was not confirmed.
            raise BrokerUnavailable(type(exc).__name__) from exc

    async def consume_durable(
        self,
        queue_name: str,
        bindings: Sequence[str],
        handler: MessageHandler,
        *,
        prefetch: int = 32,
        delivery_limit: int = 5,
    ) -> None:
        """Competing consumers on a quorum queue with a dead-letter queue beside it."""

        async def subscribe() -> None:
            assert self._connection is not None
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=prefetch)
            dlx = await channel.declare_exchange(
                self.dead_letter_exchange, aio_pika.ExchangeType.DIRECT, durable=True
            )
            dead = await channel.declare_queue(
                queue_name + ".dead", durable=True, arguments={"x-queue-type": "quorum"}
            )
            await dead.bind(dlx, routing_key=queue_name)
            queue = await channel.declare_queue(
                queue_name,
                durable=True,
                arguments={
                    "x-queue-type": "quorum",
                    "x-dead-letter-exchange": self.dead_letter_exchange,
                    "x-dead-letter-routing-key": queue_name,
                    "x-delivery-limit": delivery_limit,
                },
            )
            await self._bind(queue, channel, bindings)
            await queue.consume(handler)

        await self._add_subscription(subscribe)

    async def subscribe_broadcast(self, bindings: Sequence[str], handler: MessageHandler) -> None:
        """Every process gets its own copy (an exclusive queue that dies with the connection)."""

        async def subscribe() -> None:
            assert self._connection is not None
            channel = await self._connection.channel()
            await channel.set_qos(prefetch_count=64)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await self._bind(queue, channel, bindings)
            await queue.consume(handler)

        await self._add_subscription(subscribe)

    async def _bind(
        self, queue: AbstractQueue, channel: aio_pika.abc.AbstractChannel, bindings: Sequence[str]
    ) -> None:
        exchange = await channel.declare_exchange(
            self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        for key in bindings:
            await queue.bind(exchange, routing_key=key)

    async def _add_subscription(self, subscribe: Callable[[], Awaitable[None]]) -> None:
        # Robust channels re-declare and re-consume after a reconnect by themselves; the list only
        # covers subscriptions registered before the first connection succeeded.
        self._subscriptions.append(subscribe)
        if self.is_ready():
            await subscribe()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        self._connected.clear()
        if self._connection is not None:
            await self._connection.close()


async def broker_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the process's broker connection, established in the background."""
    settings: ServiceSettings = app[SETTINGS]
    broker = Broker(settings.amqp_url, settings.events_exchange)
    app[BROKER] = broker
    connecting = asyncio.create_task(broker.connect_forever(), name="broker-connect")
    # Give a running broker a moment so that the first requests find it ready.
    await broker.wait_ready(3.0)
    yield
    connecting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await connecting
    try:
        # A connection caught mid-reconnect can take its time to close; shutdown goes on.
        await asyncio.wait_for(broker.close(), timeout=10)
    except TimeoutError:
        log.warning("broker connection did not close within 10 s")
