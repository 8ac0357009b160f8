"""Projections kept from other services' events: clinics (zone) and clients with their pets."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.bookings import store
from services.bookings.keys import DIRECTORY
from services.bookings.service import search_text
from shared import events
from shared.consumers import idempotent_handler
from shared.db import Connection
from shared.events import (
    ClientChanged,
    ClientErased,
    ClinicChanged,
    Event,
    PatientChanged,
    event_data,
)
from shared.keys import BROKER, DB_POOL, SETTINGS

BINDINGS = ("client.*", "patient.*", "clinic.*")


async def handle_client_changed(event: Event, conn: Connection) -> None:
    client = event_data(event, ClientChanged)
    await store.upsert_client(
        conn,
        {
            "id": client.client_id,
            "group_id": client.group_id,
            "display_name": f"{client.first_name} {client.last_name}",
            "email": client.email,
            "phone": client.phone,
            "search": search_text(
                client.first_name, client.last_name, client.email, phone=client.phone
            ),
            "updated_at": client.changed_at,
        },
    )


async def handle_patient_changed(event: Event, conn: Connection) -> None:
    patient = event_data(event, PatientChanged)
    await store.ensure_client_stub(conn, patient.client_id, patient.group_id)
    await store.upsert_patient(
        conn,
        {
            "id": patient.patient_id,
            "client_id": patient.client_id,
            "name": patient.name,
            "species": patient.species,
            "updated_at": patient.changed_at,
        },
    )


async def handle_client_erased(event: Event, conn: Connection) -> None:
    erased = event_data(event, ClientErased)
    await store.erase_client(conn, erased.client_id, erased.group_id)


async def handle_clinic_changed(event: Event, conn: Connection) -> None:
    clinic = event_data(event, ClinicChanged)
    await store.upsert_clinic(conn, clinic.clinic_id, clinic.group_id, clinic.time_zone)


HANDLERS = {
    events.CLIENT_REGISTERED: handle_client_changed,
    events.CLIENT_UPDATED: handle_client_changed,
    events.CLIENT_ERASED: handle_client_erased,
    events.PATIENT_REGISTERED: handle_patient_changed,
    events.PATIENT_UPDATED: handle_patient_changed,
    events.CLINIC_CREATED: handle_clinic_changed,
    events.CLINIC_UPDATED: handle_clinic_changed,
}


async def dispatch(event: Event, conn: Connection) -> None:
    """Route an event to its handler; types this service does not project are ignored."""
    handler = HANDLERS.get(event.type)
    if handler is not None:
        await handler(event, conn)


async def projections_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: competing consumers of the projection queue."""
    settings = app[SETTINGS]
    directory = app[DIRECTORY]

    async def dispatch_and_forget(event: Event, conn: Connection) -> None:
        await dispatch(event, conn)
        if event.clinic_id is not None and event.type.startswith("clinic."):
            directory.forget(event.clinic_id)

    await app[BROKER].consume_durable(
        f"{settings.queue_prefix}.bookings.projections",
        BINDINGS,
        idempotent_handler(app[DB_POOL], "bookings.projections", dispatch_and_forget),
    )
    yield
