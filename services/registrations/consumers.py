"""The clinic directory kept from the auth service's ``clinic.*`` events."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.registrations import store
from services.registrations.keys import DIRECTORY
from shared import events
from shared.consumers import idempotent_handler
from shared.db import Connection
from shared.events import ClinicChanged, Event, event_data
from shared.keys import BROKER, DB_POOL, SETTINGS

BINDINGS = ("clinic.*",)
QUEUE = "registrations.directory"


async def handle_clinic_changed(event: Event, conn: Connection) -> None:
    clinic = event_data(event, ClinicChanged)
    await store.upsert_clinic(
        conn,
        clinic.clinic_id,
        group_id=clinic.group_id,
        country=clinic.country.upper(),
        time_zone=clinic.time_zone,
        updated_at=clinic.changed_at,
    )


HANDLERS = {
    events.CLINIC_CREATED: handle_clinic_changed,
    events.CLINIC_UPDATED: handle_clinic_changed,
}


async def dispatch(event: Event, conn: Connection) -> None:
    """Route an event to its handler; types this service does not project are ignored."""
    handler = HANDLERS.get(event.type)
    if handler is not None:
        await handler(event, conn)


async def directory_events_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: competing consumers of the directory queue."""
    settings = app[SETTINGS]
    directory = app[DIRECTORY]

    async def dispatch_and_forget(event: Event, conn: Connection) -> None:
        await dispatch(event, conn)
        if event.clinic_id is not None:
            directory.forget(event.clinic_id)

    await app[BROKER].consume_durable(
        f"{settings.queue_prefix}.{QUEUE}",
        BINDINGS,
        idempotent_handler(app[DB_POOL], QUEUE, dispatch_and_forget),
    )
    yield
