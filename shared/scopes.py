"""The scope catalogue. Clinic scopes are granted per clinic; application scopes need no grant."""

from __future__ import annotations

from typing import Literal

BOOKINGS_READ = "bookings:read"
BOOKINGS_WRITE = "bookings:write"
REGISTRATIONS_WRITE = "registrations:write"
CLIENTS_READ = "clients:read"
CLINICS_READ = "clinics:read"
WEBHOOKS_MANAGE = "webhooks:manage"
EVENTS_READ = "events:read"

CLINIC_SCOPES: frozenset[str] = frozenset(
    {BOOKINGS_READ, BOOKINGS_WRITE, REGISTRATIONS_WRITE, CLIENTS_READ}
)
APPLICATION_SCOPES: frozenset[str] = frozenset({CLINICS_READ, WEBHOOKS_MANAGE, EVENTS_READ})
ALL_SCOPES: frozenset[str] = CLINIC_SCOPES | APPLICATION_SCOPES

ClinicScope = Literal["bookings:read", "bookings:write", "registrations:write", "clients:read"]
