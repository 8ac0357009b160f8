"""The sandbox: a seeded test group, clinic, partner, approved application and staff user.

Seeding is idempotent: fixed ids, and credentials derived from the deployment's admin token
(never stored in clear, never hard-coded), so every run prints the same working credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable
from datetime import date
from typing import Any

import asyncpg

from services.auth import crypto, store
from services.auth import service as auth_service
from services.auth.settings import AuthSettings
from services.bookings import store as bookings_store
from shared import scopes
from shared.db import create_pool

_NS = uuid.UUID("6b1f4c52-8f0e-4d6b-9a53-0c1f2a3b4c5d")
GROUP_ID = uuid.uuid5(_NS, "sandbox-group")
CLINIC_ID = uuid.uuid5(_NS, "sandbox-clinic")
PARTNER_ID = uuid.uuid5(_NS, "sandbox-partner")
APPLICATION_ID = uuid.uuid5(_NS, "sandbox-application")
STAFF_USER_ID = uuid.uuid5(_NS, "sandbox-staff-user")
GRANT_ID = uuid.uuid5(_NS, "sandbox-grant")
VET_ID = uuid.uuid5(_NS, "sandbox-vet")
NURSE_ID = uuid.uuid5(_NS, "sandbox-nurse")
CONSULTATION_ID = uuid.uuid5(_NS, "sandbox-consultation")
VACCINATION_ID = uuid.uuid5(_NS, "sandbox-vaccination")
CLIENT_ID = "vgsbx_sandbox0000000000000001"
STAFF_USERNAME = "sandbox.vet"


def _derive(settings: AuthSettings, purpose: str) -> str:
    key = settings.admin_token.get_secret_value().encode()
    digest = hmac.new(key, f"vetgate-sandbox:{purpose}".encode(), hashlib.sha256).digest()
    return crypto.SECRET_PREFIX + digest.hex()


def partner_credentials(settings: AuthSettings) -> dict[str, str]:
    """What the sandbox partner signs in with; derived, so nothing needs to be looked up."""
    return {
        "client_id": CLIENT_ID,
        "client_secret": _derive(settings, "client-secret"),
        "clinic_id": str(CLINIC_ID),
    }


SEED_STEPS = 3


async def seed(
    pool: asyncpg.Pool,
    settings: AuthSettings,
    *,
    on_step: Callable[[int, str], None] = lambda step, label: None,
) -> dict[str, Any]:
    """Create or refresh the sandbox tenant; return what a partner needs to start.

    ``on_step(done, label)`` is told after each of the ``SEED_STEPS`` steps.
    """
    on_step(0, "hashing the sandbox credentials")
    client_secret = _derive(settings, "client-secret")
    staff_password = _derive(settings, "staff-password")[:28]
    password_hash = crypto.hash_password(staff_password)
    async with pool.acquire() as conn, conn.transaction():
        await store.upsert_sandbox(
            conn,
            group_id=GROUP_ID,
            clinic_id=CLINIC_ID,
            partner_id=PARTNER_ID,
            application_id=APPLICATION_ID,
            client_id=CLIENT_ID,
            secret_hash=crypto.hash_secret(client_secret),
            grant_id=GRANT_ID,
            scopes=sorted(scopes.CLINIC_SCOPES),
            staff_user_id=STAFF_USER_ID,
            staff_username=STAFF_USERNAME,
            password_hash=password_hash,
        )
        on_step(1, "sandbox tenant written")
        # Services that follow the directory by its events (callbacks routes webhooks by the
        # grants) learn of the sandbox as of any other tenant.
        await auth_service.announce_tenant(
            conn, clinic_id=CLINIC_ID, application_id=APPLICATION_ID, grant_id=GRANT_ID
        )
    on_step(2, "sandbox tenant announced")
    await _seed_bookings(settings.database_url)
    on_step(3, "sandbox catalogue written")
    return {
        "base_url": settings.issuer.rstrip("/"),
        "token_url": settings.issuer.rstrip("/") + "/oauth/token",
        "client_id": CLIENT_ID,
        "client_secret": client_secret,
        "clinic_id": str(CLINIC_ID),
        "group_id": str(GROUP_ID),
        "scopes": sorted(scopes.CLINIC_SCOPES | scopes.APPLICATION_SCOPES),
        "staff_username": STAFF_USERNAME,
        "staff_password": staff_password,
        "practitioner_ids": [str(VET_ID), str(NURSE_ID)],
        "service_ids": {"consultation": str(CONSULTATION_ID), "vaccination": str(VACCINATION_ID)},
    }


async def _seed_bookings(database_url: str) -> None:
    """Two practitioners offering two services, Monday to Friday 09:00-17:00 London time."""
    pool = await create_pool(database_url, schema="bookings", min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn, conn.transaction():
            await bookings_store.upsert_sandbox_catalogue(
                conn,
                clinic_id=CLINIC_ID,
                group_id=GROUP_ID,
                time_zone="Europe/London",
                practitioners=[(VET_ID, "Dr Sandra Box", "vet"), (NURSE_ID, "Sam Box", "nurse")],
                services=[
                    (CONSULTATION_ID, "Consultation", 30),
                    (VACCINATION_ID, "Vaccination", 15),
                ],
                weekly_hours=[(day, "09:00", "17:00") for day in range(5)],
                effective_from=date(2026, 1, 1),
            )
    finally:
        await pool.close()
