"""Rules for what a clinic offers: practitioners, services, insurances, mappings, settings."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
from pydantic import BaseModel

from services.bookings import store
from services.bookings.directory import ClinicDirectory
from services.bookings.schemas import (
    BookingSettingsRead,
    BookingSettingsUpdate,
    InsuranceCreate,
    InsuranceRead,
    InsuranceUpdate,
    ListQuery,
    MappingPage,
    MappingQuery,
    MappingRead,
    PractitionerCreate,
    PractitionerRead,
    PractitionerUpdate,
    ServiceCreate,
    ServiceRead,
    ServiceUpdate,
)
from shared import events
from shared.db import Connection, Record
from shared.errors import Conflict, FieldError, NotFound, ValidationProblem
from shared.outbox import emit
from shared.pagination import decode_cursor, encode_cursor, time_cursor

ReadModel = type[PractitionerRead] | type[ServiceRead] | type[InsuranceRead]

_KINDS: dict[str, tuple[store.Kind, ReadModel, str, str]] = {
    "practitioner": (
        store.PRACTITIONER,
        PractitionerRead,
        events.PRACTITIONER_CREATED,
        events.PRACTITIONER_UPDATED,
    ),
    "service": (store.SERVICE, ServiceRead, events.SERVICE_CREATED, events.SERVICE_UPDATED),
    "insurance": (
        store.INSURANCE,
        InsuranceRead,
        events.INSURANCE_CREATED,
        events.INSURANCE_UPDATED,
    ),
}


#: Fields a PATCH may set to null ("any species"); null for any other field is refused.
_NULLABLE = frozenset({"species"})


def page_cursor(rows: list[Record], limit: int) -> str | None:
    if len(rows) <= limit:
        return None
    last = rows[limit - 1]
    return encode_cursor(last["updated_at"], last["id"])


def _public(model: BaseModel) -> dict[str, Any]:
    """An event's ``data``: the resource as the API returns it, less the caller's own ids."""
    return model.model_dump(mode="json", exclude={"external_id"})


async def _put_external_id(
    conn: Connection,
    app_id: uuid.UUID,
    clinic_id: uuid.UUID,
    resource_type: str,
    external_id: str,
    resource_id: uuid.UUID,
) -> None:
    """Map a new resource to the caller's id; an id already mapped elsewhere is a conflict."""
    taken = await store.insert_mapping(
        conn, app_id, clinic_id, resource_type, external_id, resource_id
    )
    if taken is not None:
        raise Conflict(
            f"external_id {external_id!r} already maps to another {resource_type}",
            slug="external-id-taken",
            extra={"resource_id": str(taken)},
        )


def _unknown_practitioners(exc: asyncpg.ForeignKeyViolationError) -> ValidationProblem:
    return ValidationProblem(
        [FieldError("body.practitioner_ids", "Each id must be a practitioner of this clinic")]
    )


async def create_resource(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    resource_type: str,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    data: PractitionerCreate | ServiceCreate | InsuranceCreate,
) -> BaseModel:
    """Create a practitioner, service or insurance (and map the caller's id to it)."""
    kind, read, created_type, _ = _KINDS[resource_type]
    await directory.get(clinic_id)
    values = data.model_dump(exclude={"external_id", "practitioner_ids"})
    resource_id = uuid.uuid4()
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                await store.insert_resource(conn, kind, resource_id, clinic_id, values)
                if isinstance(data, ServiceCreate):
                    await store.set_service_practitioners(
                        conn, clinic_id, resource_id, data.practitioner_ids
                    )
                if data.external_id is not None:
                    await _put_external_id(
                        conn, app_id, clinic_id, resource_type, data.external_id, resource_id
                    )
                row = await store.get_resource(conn, kind, clinic_id, resource_id, app_id)
                assert row is not None
                model = read.model_validate(dict(row))
                await emit(
                    conn,
                    created_type,
                    _public(model),
                    aggregate=f"{resource_type}:{resource_id}",
                    clinic_id=clinic_id,
                )
        except asyncpg.ForeignKeyViolationError as exc:
            raise _unknown_practitioners(exc) from None
    return model


async def update_resource(
    pool: asyncpg.Pool,
    *,
    resource_type: str,
    clinic_id: uuid.UUID,
    resource_id: uuid.UUID,
    app_id: uuid.UUID,
    data: PractitionerUpdate | ServiceUpdate | InsuranceUpdate,
) -> BaseModel:
    """Change (or deactivate, with ``active: false``) a practitioner, service or insurance."""
    kind, read, _, updated_type = _KINDS[resource_type]
    changes = data.model_dump(exclude_unset=True, exclude={"practitioner_ids"})
    nulls = [name for name, value in changes.items() if value is None and name not in _NULLABLE]
    if nulls:
        raise ValidationProblem([FieldError(f"body.{name}", "May not be null") for name in nulls])
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                if not await store.update_resource(conn, kind, clinic_id, resource_id, changes):
                    raise NotFound(f"No such {resource_type} in this clinic")
                if isinstance(data, ServiceUpdate) and data.practitioner_ids is not None:
                    await store.set_service_practitioners(
                        conn, clinic_id, resource_id, data.practitioner_ids
                    )
                row = await store.get_resource(conn, kind, clinic_id, resource_id, app_id)
                assert row is not None
                model = read.model_validate(dict(row))
                await emit(
                    conn,
                    updated_type,
                    _public(model),
                    aggregate=f"{resource_type}:{resource_id}",
                    clinic_id=clinic_id,
                )
        except asyncpg.ForeignKeyViolationError as exc:
            raise _unknown_practitioners(exc) from None
    return model


async def get_resource(
    pool: asyncpg.Pool,
    *,
    resource_type: str,
    clinic_id: uuid.UUID,
    resource_id: uuid.UUID,
    app_id: uuid.UUID,
) -> BaseModel:
    """One practitioner, service or insurance of the clinic."""
    kind, read, _, _ = _KINDS[resource_type]
    async with pool.acquire() as conn:
        row = await store.get_resource(conn, kind, clinic_id, resource_id, app_id)
    if row is None:
        raise NotFound(f"No such {resource_type} in this clinic")
    return read.model_validate(dict(row))


async def list_resources(
    pool: asyncpg.Pool,
    *,
    resource_type: str,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    query: ListQuery,
) -> tuple[list[BaseModel], str | None]:
    """A page of the clinic's resources in sync order, filterable by the caller's ids."""
    kind, read, _, _ = _KINDS[resource_type]
    async with pool.acquire() as conn:
        rows = await store.list_resources(
            conn,
            kind,
            clinic_id,
            app_id,
            after=time_cursor(query.cursor),
            updated_since=query.updated_since,
            active=query.active,
            external_id=query.external_id,
            limit=query.limit + 1,
        )
    items: list[BaseModel] = [read.model_validate(dict(r)) for r in rows[: query.limit]]
    return items, page_cursor(rows, query.limit)


# --- mappings ---------------------------------------------------------------------------------


async def put_mapping(
    pool: asyncpg.Pool,
    *,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    resource_type: str,
    external_id: str,
    resource_id: uuid.UUID,
) -> tuple[MappingRead, bool]:
    """Map the caller's id to one of ours; True when the mapping is new."""
    async with pool.acquire() as conn:
        if not await store.resource_exists(conn, resource_type, clinic_id, resource_id):
            raise ValidationProblem(
                [FieldError("body.resource_id", f"No such {resource_type} in this clinic")]
            )
        try:
            row, created = await store.put_mapping(
                conn, app_id, clinic_id, resource_type, external_id, resource_id
            )
        except asyncpg.UniqueViolationError:
            raise Conflict(
                f"This {resource_type} is already mapped to another external id",
                slug="resource-already-mapped",
            ) from None
    return MappingRead.model_validate(dict(row)), created


async def get_mapping(
    pool: asyncpg.Pool,
    *,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    resource_type: str,
    external_id: str,
) -> MappingRead:
    """The caller's mapping of one external id."""
    async with pool.acquire() as conn:
        row = await store.get_mapping(conn, app_id, clinic_id, resource_type, external_id)
    if row is None:
        raise NotFound(f"No {resource_type} mapped to {external_id!r}")
    return MappingRead.model_validate(dict(row))


async def delete_mapping(
    pool: asyncpg.Pool,
    *,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    resource_type: str,
    external_id: str,
) -> None:
    """Forget the caller's mapping of one external id (the resource stays)."""
    async with pool.acquire() as conn:
        if not await store.delete_mapping(conn, app_id, clinic_id, resource_type, external_id):
            raise NotFound(f"No {resource_type} mapped to {external_id!r}")


async def list_mappings(
    pool: asyncpg.Pool,
    *,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    resource_type: str,
    query: MappingQuery,
) -> MappingPage:
    """The caller's mappings of one resource type, by external id."""
    key = decode_cursor(query.cursor, 1)
    async with pool.acquire() as conn:
        rows = await store.list_mappings(
            conn,
            app_id,
            clinic_id,
            resource_type,
            after=key[0] if key else None,
            resource_id=query.resource_id,
            updated_since=query.updated_since,
            limit=query.limit + 1,
        )
    items = [MappingRead.model_validate(dict(r)) for r in rows[: query.limit]]
    cursor = encode_cursor(items[-1].external_id) if len(rows) > query.limit else None
    return MappingPage(items=items, next_cursor=cursor)


# --- booking settings -------------------------------------------------------------------------


async def get_settings(directory: ClinicDirectory, clinic_id: uuid.UUID) -> BookingSettingsRead:
    """The clinic's zone, slot grid and minimum lead time."""
    rules = await directory.get(clinic_id)
    return BookingSettingsRead(
        clinic_id=clinic_id,
        time_zone=rules.time_zone.key,
        slot_minutes=rules.slot_minutes,
        min_lead_minutes=rules.min_lead_minutes,
    )


async def update_settings(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    clinic_id: uuid.UUID,
    data: BookingSettingsUpdate,
) -> BookingSettingsRead:
    """Change the clinic's slot grid or minimum lead time."""
    await directory.get(clinic_id)
    async with pool.acquire() as conn:
        await store.update_clinic_settings(conn, clinic_id, data.model_dump(exclude_none=True))
    directory.forget(clinic_id)
    return await get_settings(directory, clinic_id)
