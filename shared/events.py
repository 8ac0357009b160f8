"""The one event envelope of the platform and the typed payloads of the events defined so far.

``type`` doubles as the RabbitMQ routing key; ``sequence`` counts per aggregate (one grant, one
booking) so that a receiver can order the updates of one resource.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    occurred_at: datetime = Field(default_factory=utcnow)
    clinic_id: uuid.UUID | None = None
    sequence: int = 1
    # What ``sequence`` counts: one resource, e.g. ``booking:<id>``; receivers order by it.
    aggregate: str | None = None
    data: dict[str, Any]


DataT = TypeVar("DataT", bound=BaseModel)


def event_data(event: Event, model: type[DataT]) -> DataT:
    """The envelope's ``data`` as its typed payload."""
    return model.model_validate(event.data)


# --- auth ------------------------------------------------------------------------------------


class GrantChanged(BaseModel):
    """``grant.created`` / ``grant.revoked``: an application's access to a clinic or group."""

    grant_id: uuid.UUID
    application_id: uuid.UUID
    client_id: str
    clinic_id: uuid.UUID | None
    group_id: uuid.UUID | None
    scopes: list[str]
    changed_at: datetime


class TokenRevoked(BaseModel):
    """``token.revoked``: one access token (by ``jti``) must be refused until it expires."""

    jti: str
    client_id: str
    expires_at: datetime


class ApplicationChanged(BaseModel):
    """``application.suspended`` / ``application.approved`` / ``application.updated``."""

    application_id: uuid.UUID
    client_id: str
    status: str
    environment: str
    tier: int
    contact_email: str
    changed_at: datetime


APPLICATION_CREATED = "application.created"
GRANT_CREATED = "grant.created"
GRANT_REVOKED = "grant.revoked"
TOKEN_REVOKED = "token.revoked"
APPLICATION_APPROVED = "application.approved"
APPLICATION_SUSPENDED = "application.suspended"
APPLICATION_UPDATED = "application.updated"

#: Events after which a resource service must refuse tokens it would have accepted before.
REVOCATION_EVENTS = (GRANT_REVOKED, TOKEN_REVOKED, APPLICATION_SUSPENDED)


# --- directory (auth) -------------------------------------------------------------------------


class ClinicChanged(BaseModel):
    """``clinic.created`` / ``clinic.updated``: the directory entry other services project."""

    clinic_id: uuid.UUID
    group_id: uuid.UUID
    name: str
    time_zone: str
    country: str
    sandbox: bool
    changed_at: datetime


CLINIC_CREATED = "clinic.created"
CLINIC_UPDATED = "clinic.updated"


# --- registrations ----------------------------------------------------------------------------


class ClientChanged(BaseModel):
    """``client.registered`` / ``client.updated``: a pet owner, known across the clinic's group."""

    client_id: uuid.UUID
    group_id: uuid.UUID
    clinic_id: uuid.UUID
    title: str | None = None
    first_name: str
    last_name: str
    email: str | None = None
    phone: str | None = None
    changed_at: datetime


class PatientChanged(BaseModel):
    """``patient.registered`` / ``patient.updated``: a pet of a client."""

    patient_id: uuid.UUID
    client_id: uuid.UUID
    group_id: uuid.UUID
    name: str
    species: str
    breed: str | None = None
    changed_at: datetime


class ClientErased(BaseModel):
    """``client.erased``: forget the client's personal data; ids stay for history."""

    client_id: uuid.UUID
    group_id: uuid.UUID
    erased_at: datetime


CLIENT_REGISTERED = "client.registered"
CLIENT_UPDATED = "client.updated"
CLIENT_ERASED = "client.erased"
PATIENT_REGISTERED = "patient.registered"
PATIENT_UPDATED = "patient.updated"


# --- bookings ---------------------------------------------------------------------------------

BOOKING_CREATED = "booking.created"
BOOKING_RESCHEDULED = "booking.rescheduled"
BOOKING_CANCELLED = "booking.cancelled"
BOOKING_STATUS_CHANGED = "booking.status_changed"
SLOTS_REPLACED = "slots.replaced"
WORKING_HOURS_UPDATED = "working_hours.updated"
BREAK_CREATED = "break.created"
BREAK_DELETED = "break.deleted"
PRACTITIONER_CREATED = "practitioner.created"
PRACTITIONER_UPDATED = "practitioner.updated"
SERVICE_CREATED = "service.created"
SERVICE_UPDATED = "service.updated"
INSURANCE_CREATED = "insurance.created"
INSURANCE_UPDATED = "insurance.updated"

#: Everything a partner can subscribe to; the rest (tokens, applications) stays inside.
PARTNER_EVENT_TYPES: frozenset[str] = frozenset(
    {
        BOOKING_CREATED,
        BOOKING_RESCHEDULED,
        BOOKING_CANCELLED,
        BOOKING_STATUS_CHANGED,
        SLOTS_REPLACED,
        WORKING_HOURS_UPDATED,
        BREAK_CREATED,
        BREAK_DELETED,
        PRACTITIONER_CREATED,
        PRACTITIONER_UPDATED,
        SERVICE_CREATED,
        SERVICE_UPDATED,
        INSURANCE_CREATED,
        INSURANCE_UPDATED,
        CLIENT_REGISTERED,
        CLIENT_UPDATED,
        CLIENT_ERASED,
        PATIENT_REGISTERED,
        PATIENT_UPDATED,
        CLINIC_UPDATED,
        GRANT_CREATED,
        GRANT_REVOKED,
    }
)
