"""Event consumers: idempotent by event id, effects and the id committed in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from shared.broker import MessageHandler
from shared.events import Event

log = logging.getLogger("vetgate.consumer")

EventHandler = Callable[[Event, asyncpg.Connection], Awaitable[None]]


def parse_message(message: AbstractIncomingMessage) -> Event | None:
    try:
        return Event.model_validate_json(message.body)
    except ValidationError:
        log.error("unparseable message %s dead-lettered", message.message_id)
        return None


def idempotent_handler(pool: asyncpg.Pool, consumer: str, handle: EventHandler) -> MessageHandler:
    """Wrap ``handle`` so each event id takes effect once, however often it is delivered.

    A handler failure rolls back and requeues; the quorum queue's delivery limit then parks a
    message that keeps failing in the dead-letter queue.
    """

    async def on_message(message: AbstractIncomingMessage) -> None:
        event = parse_message(message)
        if event is None:
            await message.reject(requeue=False)
            return
        try:
            async with pool.acquire() as conn, conn.transaction():
                first = await conn.fetchval(
                    "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) "
                    "ON CONFLICT DO NOTHING RETURNING true",
                    consumer,
                    event.id,
                )
                if first:
                    await handle(event, conn)
        except Exception:  # the consumer boundary: log, requeue, let the delivery limit decide
            log.exception("handling %s %s failed", event.type, event.id)
            await message.nack(requeue=True)
            return
        await message.ack()

    return on_message
