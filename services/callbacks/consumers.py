"""Events in: who may see what (auth's directory), and every partner event kept and fanned out.

One durable queue takes every event. The directory events (``clinic.*``, ``application.*``,
``grant.*``) update the projection that decides who may see a clinic's events; every partner
event is kept for the feed and becomes one delivery per subscribed endpoint, all in the
transaction that marks the event handled.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web

from services.callbacks import store
from services.callbacks.keys import CALLBACKS_SETTINGS, DISPATCHER
from shared import events
from shared.consumers import idempotent_handler
from shared.db import Connection
from shared.events import ApplicationChanged, ClinicChanged, Event, GrantChanged, event_data
from shared.keys import BROKER, DB_POOL, HTTP_CLIENT

log = logging.getLogger("vetgate.callbacks.intake")

QUEUE = "callbacks.intake"
BINDINGS = ("#",)

_APPLICATION_EVENTS = (
    events.APPLICATION_CREATED,
    events.APPLICATION_UPDATED,
    events.APPLICATION_APPROVED,
    events.APPLICATION_SUSPENDED,
)


async def apply_directory_event(event: Event, conn: Connection) -> None:
    """Keep the projection of clinics, applications and grants; other events pass by."""
    if event.type in (events.CLINIC_CREATED, events.CLINIC_UPDATED):
        clinic = event_data(event, ClinicChanged)
        await store.upsert_clinic(
            conn, clinic.clinic_id, clinic.group_id, clinic.sandbox, clinic.changed_at
        )
    elif event.type in _APPLICATION_EVENTS:
        app = event_data(event, ApplicationChanged)
        await store.upsert_application(
            conn,
            app.application_id,
            client_id=app.client_id,
            environment=app.environment,
            status=app.status,
            contact_email=app.contact_email,
            changed_at=app.changed_at,
        )
    elif event.type in (events.GRANT_CREATED, events.GRANT_REVOKED):
        grant = event_data(event, GrantChanged)
        await store.upsert_grant(
            conn,
            grant.grant_id,
            application_id=grant.application_id,
            clinic_id=grant.clinic_id,
            group_id=grant.group_id,
            scopes=grant.scopes,
            revoked=event.type == events.GRANT_REVOKED,
        )


def addressed_to(event: Event) -> uuid.UUID | None:
    """The one application an event is for (grants), or None for a clinic's event."""
    if event.type in (events.GRANT_CREATED, events.GRANT_REVOKED):
        return event_data(event, GrantChanged).application_id
    return None


async def handle_event(event: Event, conn: Connection, *, gap_seconds: float) -> int:
    """Project, keep and fan out one event; return how many deliveries it made."""
    await apply_directory_event(event, conn)
    if event.type not in events.PARTNER_EVENT_TYPES:
        return 0
    return await store.keep_event(
        conn,
        event_id=event.id,
        event_type=event.type,
        clinic_id=event.clinic_id,
        application_id=addressed_to(event),
        aggregate=event.aggregate,
        sequence=event.sequence,
        occurred_at=event.occurred_at,
        body=event.model_dump_json(),
        gap_seconds=gap_seconds,
    )


#: Entries of the access snapshot asked for at once: each page is applied in a transaction of
#: its own, so a directory of any size is loaded in bounded memory.
ACCESS_PAGE = 1000


async def load_access_snapshot(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    *,
    auth_url: str,
    internal_token: str,
    page_size: int = ACCESS_PAGE,
) -> int:
    """Start the projection from the auth service's own tables, a page at a time; return how
    many entries. Entries apply idempotently, so pages read at different moments (events keep
    arriving meanwhile) add up to a valid start."""
    url = auth_url.rstrip("/") + "/internal/v1/access"
    headers = {"Authorization": f"Bearer {internal_token}"}
    params = {"limit": str(page_size)}
    count = 0
    while True:
        async with session.get(url, headers=headers, params=params) as response:
            response.raise_for_status()
            body = await response.json()
        page = [Event.model_validate(e) for e in body["events"]]
        async with pool.acquire() as conn, conn.transaction():
            for event in page:
                await apply_directory_event(event, conn)
        count += len(page)
        cursor = body.get("next_cursor")
        if cursor is None:
            return count
        if cursor == params.get("after"):
            raise RuntimeError("the access snapshot's cursor did not move")
        params["after"] = cursor


async def intake_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the projection's snapshot (in the background) and the intake consumers."""
    settings = app[CALLBACKS_SETTINGS]
    pool = app[DB_POOL]
    dispatcher = app[DISPATCHER]

    async def handle(event: Event, conn: Connection) -> None:
        await handle_event(event, conn, gap_seconds=settings.ordering_gap_seconds)

    handled = idempotent_handler(pool, QUEUE, handle)

    async def on_message(message: AbstractIncomingMessage) -> None:
        await handled(message)
        # Deliveries just committed are due now: no need to wait for the next poll.
        dispatcher.wake()

    async def snapshot() -> None:
        delay = 0.5
        while True:
            try:
                count = await load_access_snapshot(
                    pool,
                    app[HTTP_CLIENT],
                    auth_url=settings.auth_url,
                    internal_token=settings.internal_token.get_secret_value(),
                )
                log.info("access snapshot loaded: %d entries", count)
                return
            except RuntimeError as exc:
                # Auth answered something other than a snapshot: retrying would not mend it.
                log.error("access snapshot not loaded: %s", exc)
                return
            except (aiohttp.ClientError, TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("access snapshot not loaded (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    loading = asyncio.create_task(snapshot(), name="access-snapshot")
    await app[BROKER].consume_durable(
        f"{settings.queue_prefix}.{QUEUE}", BINDINGS, on_message, prefetch=64
    )
    yield
    loading.cancel()
