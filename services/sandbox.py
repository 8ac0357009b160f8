"""The sandbox: a seeded test group, clinic, partner, approved application and staff user.

Seeding is idempotent: fixed ids, and credentials derived from the deployment's admin token
(never stored in clear, never hard-coded), so every run prints the same working credentials.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Any

import asyncpg

from services.auth import crypto, store
from services.auth.settings import AuthSettings
from shared import scopes

_NS = uuid.UUID("6b1f4c52-8f0e-4d6b-9a53-0c1f2a3b4c5d")
GROUP_ID = uuid.uuid5(_NS, "sandbox-group")
CLINIC_ID = uuid.uuid5(_NS, "sandbox-clinic")
PARTNER_ID = uuid.uuid5(_NS, "sandbox-partner")
APPLICATION_ID = uuid.uuid5(_NS, "sandbox-application")
STAFF_USER_ID = uuid.uuid5(_NS, "sandbox-staff-user")
GRANT_ID = uuid.uuid5(_NS, "sandbox-grant")
CLIENT_ID = "vgsbx_sandbox0000000000000001"
STAFF_USERNAME = "sandbox.vet"


def _derive(settings: AuthSettings, purpose: str) -> str:
    key = settings.admin_token.get_secret_value().encode()
    digest = hmac.new(key, f"vetgate-sandbox:{purpose}".encode(), hashlib.sha256).digest()
    return crypto.SECRET_PREFIX + digest.hex()


async def seed(pool: asyncpg.Pool, settings: AuthSettings) -> dict[str, Any]:
    """Create or refresh the sandbox tenant; return what a partner needs to start."""
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
    }
