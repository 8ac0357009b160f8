"""Transactional outbox: ``emit`` inside the business transaction, ``OutboxRelay`` publishes after.

The relay wakes on ``NOTIFY`` (sent at commit) and also polls, takes unpublished rows with
``FOR UPDATE SKIP LOCKED`` so that several copies of a service share the work, publishes each
with a publisher confirm and only then marks it sent. A broker outage leaves rows waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel

from shared.broker import Broker, BrokerUnavailable
from shared.db import Connection
from shared.errors import PayloadTooLarge
from shared.events import Event, utcnow
from shared.keys import BROKER, DB_POOL, SETTINGS
from shared.waiting import wait_until_set

log = logging.getLogger("vetgate.outbox")

NOTIFY_PREFIX = "vetgate_outbox_"
#: The largest event envelope (serialised JSON) that may be emitted: a webhook's body.
MAX_EVENT_BYTES = 256 * 1024


def notify_channel(schema: str) -> str:
    """One channel per service schema, so a service's commits wake only its own relays."""
    return NOTIFY_PREFIX + schema


def emit_ctes(first: int) -> str:
    """The common-table expressions that write prepared events (``Outgoing.args``, bound from
    parameter ``$first`` on), ending in ``emitted (event_id, sequence, notified)``; for a
    statement that writes a row and its events in one round trip.

    They allocate each aggregate's next sequences (rolled back with the transaction), write the
    envelopes with them in the order given, and notify the schema's relays (delivered at commit).
    """
    a, e, t, b = (f"${first + k}" for k in range(4))
    return f"""
    input AS (
        SELECT * FROM unnest({a}::text[], {e}::uuid[], {t}::text[], {b}::text[])
            WITH ORDINALITY AS i(aggregate, event_id, event_type, body, n)
    ), counts AS (
        SELECT aggregate, count(*) AS k FROM input GROUP BY aggregate
    ), seq AS (
        INSERT INTO event_sequences (aggregate, last_sequence) SELECT aggregate, k FROM counts
        ON CONFLICT (aggregate)
        DO UPDATE SET last_sequence = event_sequences.last_sequence + EXCLUDED.last_sequence
        RETURNING aggregate, last_sequence
    ), numbered AS (
        SELECT i.event_id, i.event_type, i.body, i.n,
               seq.last_sequence - count(*) OVER w + row_number() OVER (w ORDER BY i.n) AS sequence
        FROM input i JOIN seq USING (aggregate)
        WINDOW w AS (PARTITION BY i.aggregate)
    ), emitted AS (
        INSERT INTO outbox (event_id, event_type, payload)
        SELECT event_id, event_type, jsonb_set(body::jsonb, '{{sequence}}', to_jsonb(sequence))
        FROM numbered ORDER BY n
        RETURNING event_id, (payload ->> 'sequence')::bigint AS sequence,
                  pg_notify('{NOTIFY_PREFIX}' || current_schema(), '') AS notified
    )"""


_EMIT = f"WITH {emit_ctes(1)} SELECT event_id, sequence FROM emitted"


@dataclass(frozen=True)
class Draft:
    """An event to emit: its type, payload, the aggregate it counts in, and its clinic."""

    event_type: str
    data: BaseModel | dict[str, Any]
    aggregate: str
    clinic_id: uuid.UUID | None = None


async def emit(
    conn: Connection,
    event_type: str,
    data: BaseModel | dict[str, Any],
    *,
    aggregate: str,
    clinic_id: uuid.UUID | None = None,
) -> Event:
    """Write an event to the outbox in the caller's transaction."""
    (event,) = await emit_many(conn, [Draft(event_type, data, aggregate, clinic_id)])
    return event


@dataclass(frozen=True)
class Outgoing:
    """Events checked and serialised, ready to be written by ``emit_ctes``."""

    events: list[Event]
    args: tuple[list[str], list[uuid.UUID], list[str], list[str]]

    def sequenced(self, sequences: Mapping[uuid.UUID, int]) -> list[Event]:
        """The events with the sequences the write gave them (by event id)."""
        return [e.model_copy(update={"sequence": sequences[e.id]}) for e in self.events]


def prepare(drafts: Sequence[Draft]) -> Outgoing:
    """Build and serialise the events; one too large to deliver as a webhook is refused here,
    before anything is written."""
    events: list[Event] = []
    bodies: list[str] = []
    for d in drafts:
        payload = d.data.model_dump(mode="json") if isinstance(d.data, BaseModel) else d.data
        event = Event(
            type=d.event_type,
            clinic_id=d.clinic_id,
            aggregate=d.aggregate,
            occurred_at=utcnow(),
            data=payload,
        )
        body = event.model_dump_json()
        if len(body) > MAX_EVENT_BYTES:
            raise PayloadTooLarge(
                f"The {d.event_type} event would be {len(body)} bytes; events are limited to "
                f"{MAX_EVENT_BYTES} bytes so that every webhook receiver can take them",
                slug="event-too-large",
                title="Event too large",
            )
        events.append(event)
        bodies.append(body)
    args = ([d.aggregate for d in drafts], [e.id for e in events], [e.type for e in events], bodies)
    return Outgoing(events, args)


async def emit_many(conn: Connection, drafts: Sequence[Draft]) -> list[Event]:
    """Write events to the outbox in the caller's transaction, in one round trip; events of one
    aggregate get consecutive sequences in the order given.

    An event too large to deliver as a webhook is refused here, before anything is written.
    """
    outgoing = prepare(drafts)
    if not outgoing.events:
        return []
    rows = await conn.fetch(_EMIT, *outgoing.args)
    return outgoing.sequenced({r["event_id"]: r["sequence"] for r in rows})


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: Broker,
        *,
        schema: str,
        poll_seconds: float = 1.0,
        batch: int = 100,
    ) -> None:
        self._pool = pool
        self._channel = notify_channel(schema)
        self._broker = broker
        self._poll_seconds = poll_seconds
        self._batch = batch
        self._wake = asyncio.Event()
        # After an outage the waiting rows go as soon as the broker is back, not at the end of
        # the relay's backoff.
        broker.on_connected(self._on_broker_connected)

    async def publish_pending(self) -> int:
        """Publish one batch; return how many rows were marked sent."""
        failure: BrokerUnavailable | None = None
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """
                SELECT seq, event_id, event_type, payload FROM outbox
                WHERE published_at IS NULL ORDER BY seq LIMIT $1
                FOR UPDATE SKIP LOCKED
                """,
                self._batch,
            )
            # The whole batch is in flight at once: waiting for each confirm in turn would cap the
            # relay at one broker round trip per event, below what a busy service writes.
            results = await asyncio.gather(
                *(
                    self._broker.publish(row["event_type"], row["payload"], row["event_id"])
                    for row in rows
                ),
                return_exceptions=True,
            )
            sent = [row["seq"] for row, result in zip(rows, results, strict=True) if result is None]
            for result in results:
                if isinstance(result, BrokerUnavailable):
                    failure = result
                elif isinstance(result, BaseException):
                    raise result
            # Confirmed rows are marked, the rest stay for the next round. The failure is raised
            # only after the commit: raised in here it would roll the marks back.
            if sent:
                await conn.execute(
                    "UPDATE outbox SET published_at = now(), attempts = attempts + 1 "
                    "WHERE seq = ANY($1::bigint[])",
                    sent,
                )
        if failure is not None:
            raise failure
        return len(sent)

    async def run(self) -> None:
        listener = asyncio.create_task(self._listen())
        backoff = self._poll_seconds
        try:
            while True:
                # Cleared before the round, not after: a NOTIFY that arrives while publishing
                # must wake the next wait instead of being thrown away.
                self._wake.clear()
                try:
                    while await self.publish_pending() == self._batch:
                        pass
                    backoff = self._poll_seconds
                except (
                    BrokerUnavailable,
                    OSError,
                    TimeoutError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    # A connection left mid-operation by a server restart; the pool replaces it.
                    asyncpg.InternalClientError,
                ) as exc:
                    log.warning("outbox relay paused: %s", exc.__class__.__name__)
                    backoff = min(backoff * 2, 15.0)
                await wait_until_set(self._wake, backoff)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _listen(self) -> None:
        """Hold a LISTEN connection so committed events leave within milliseconds."""
        while True:
            try:
                async with self._pool.acquire() as conn:
                    closed = asyncio.Event()
                    conn.add_termination_listener(lambda _, done=closed: done.set())
                    await conn.add_listener(self._channel, self._on_notify)
                    try:
                        await closed.wait()
                    finally:
                        with contextlib.suppress(asyncpg.InterfaceError, OSError):
                            await conn.remove_listener(self._channel, self._on_notify)
            except (
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
            ):
                await asyncio.sleep(2)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _on_broker_connected(self) -> None:
        self._wake.set()


async def relay_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: run the outbox relay for the life of the app."""
    settings = app[SETTINGS]
    relay = OutboxRelay(
        app[DB_POOL],
        app[BROKER],
        schema=settings.db_schema,
        poll_seconds=settings.outbox_poll_seconds,
    )
    task = asyncio.create_task(relay.run(), name="outbox-relay")
    yield
    task.cancel()
    # A query cancelled mid-flight can leave its connection waiting on the server; shutdown
    # must not wait with it (unpublished rows simply wait for the next process).
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(task, timeout=5)
