"""Event consumers: idempotent by event id, effects and the id committed in one transaction."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable

import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from pydantic import ValidationError

from shared.broker import MessageHandler
from shared.db import Connection, transaction_opened_with
from shared.events import Event

log = logging.getLogger("vetgate.consumer")

UNAVAILABLE_BACKOFF_SECONDS = 2.0
_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)

EventHandler = Callable[[Event, Connection], Awaitable[None]]

_CONSUMER_NAME = re.compile(r"[A-Za-z0-9._-]+")


def parse_message(message: AbstractIncomingMessage) -> Event | None:
    try:
        return Event.model_validate_json(message.body)
    except ValidationError:
        log.error("unparseable message %s dead-lettered", message.message_id)
        return None


class HandlerMisuse(Exception):
    """The handler used its connection wrongly (asyncpg's own refusal, on a live connection):
    a bug to fail on, not the database being away to wait out."""


async def _handled(handle: EventHandler, event: Event, conn: Connection) -> None:
    try:
        await handle(event, conn)
    except asyncpg.InterfaceError as exc:
        if conn.is_closed():
            raise
        raise HandlerMisuse(str(exc)) from exc


def idempotent_handler(pool: asyncpg.Pool, consumer: str, handle: EventHandler) -> MessageHandler:
    """Wrap ``handle`` so each event id takes effect once, however often it is delivered.

    ``handle`` runs inside the transaction that records the id, and must not open one of its
    own (asyncpg refuses ``conn.transaction()`` inside a transaction it did not start).

    A handler failure rolls back and requeues; the quorum queue's delivery limit then parks a
    message that keeps failing in the dead-letter queue. A database out of reach is waited out
    with the message held, so an outage never dead-letters what was in flight.
    """

    if not _CONSUMER_NAME.fullmatch(consumer):
        raise ValueError(f"consumer name {consumer!r}: letters, digits, '.', '_' and '-' only")

    async def on_message(message: AbstractIncomingMessage) -> None:
        event = parse_message(message)
        if event is None:
            await message.reject(requeue=False)
            return
        delay = UNAVAILABLE_BACKOFF_SECONDS
        while True:
            try:
                # The id is recorded by the statement that opens the transaction: one round
                # trip for both. Its text is safe to inline (a checked name and a UUID).
                record = (
                    "INSERT INTO processed_events (consumer, event_id) "
                    f"VALUES ('{consumer}', '{event.id}') ON CONFLICT DO NOTHING"
                )
                async with (
                    pool.acquire() as conn,
                    transaction_opened_with(conn, record) as status,
                ):
                    if status == "INSERT 0 1":  # not handled before
                        await _handled(handle, event, conn)
                break
            except _UNAVAILABLE as exc:
                # The database, not the message, is at fault: keep the message (unacknowledged,
                # so that an outage never uses up its delivery limit and dead-letters it) and
                # try again once the database may be back.
                log.warning(
                    "database unavailable for %s %s: %s; retrying in %g s",
                    event.type,
                    event.id,
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except Exception:  # the consumer boundary: log, requeue, let the delivery limit decide
                log.exception("handling %s %s failed", event.type, event.id)
                await message.nack(requeue=True)
                return
        await message.ack()

    return on_message
