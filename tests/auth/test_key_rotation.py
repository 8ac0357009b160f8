"""Signing-key rotation: publish first, sign later, retire after the last old token expires.

Other tests share the auth server, and any of them may rotate too, so nothing here assumes how
many keys exist: assertions compare with the kids this test observes.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import jwt

from services.auth.settings import AuthSettings
from tests.conftest import Admin, Tenant, TokenFactory

#: How long to keep polling for an asynchronous effect before giving up.
POLL_LIMIT = 5.0


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


async def published_kids(http: aiohttp.ClientSession, auth_url: str) -> set[str]:
    async with http.get(auth_url + "/.well-known/jwks.json") as r:
        assert r.status == 200
        document: dict[str, Any] = await r.json()
    return {k["kid"] for k in document["keys"]}


async def no_key_pending(auth_pool: asyncpg.Pool) -> None:
    """Wait until no key published by an earlier rotation is still waiting to activate."""
    deadline = time.monotonic() + POLL_LIMIT
    while True:
        pending = await auth_pool.fetchval(
            "SELECT count(*) FROM signing_keys WHERE activates_at > now()"
        )
        if pending == 0:
            return
        assert time.monotonic() < deadline, "a signing key never activated"
        await asyncio.sleep(0.1)


async def resource_status(http: aiohttp.ClientSession, url: str, token: str) -> int:
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        await r.read()
        return r.status


async def test_rotation_publishes_then_signs_then_retires(
    http: aiohttp.ClientSession,
    auth_url: str,
    resource_url: str,
    auth_pool: asyncpg.Pool,
    auth_settings: AuthSettings,
    admin: Admin,
    tenant: Tenant,
    get_token: TokenFactory,
) -> None:
    async def clinic_token() -> str:
        return str((await get_token(tenant, clinic_id=tenant.clinic_id))["access_token"])

    probe_url = f"{resource_url}/v1/clinics/{tenant.clinic_id}/probe"
    await no_key_pending(auth_pool)
    t1 = await clinic_token()
    k1 = kid_of(t1)
    # The resource server has seen the current key before the rotation.
    assert await resource_status(http, probe_url, t1) == 200

    before = datetime.now(UTC)
    rotated = await admin.call("POST", "/v1/admin/signing-keys/rotate", None, 201)
    k2 = rotated["kid"]
    assert k2 != k1
    assert rotated["algorithm"] == "EdDSA"
    assert rotated["retires_at"] is None
    created_at = datetime.fromisoformat(rotated["created_at"])
    activates_at = datetime.fromisoformat(rotated["activates_at"])
    delay = timedelta(seconds=auth_settings.key_publish_delay_seconds)
    assert activates_at - created_at == delay
    assert activates_at > before

    # Published at once, next to the key that still signs.
    assert {k1, k2} <= await published_kids(http, auth_url)

    # During the delay new tokens still carry the old key.
    during = await clinic_token()
    if datetime.now(UTC) < activates_at:
        assert kid_of(during) == k1
    assert await resource_status(http, probe_url, during) == 200

    # After the delay (and the auth server's short key cache) new tokens carry the new key.
    deadline = time.monotonic() + POLL_LIMIT
    t2 = during
    while kid_of(t2) != k2:
        assert time.monotonic() < deadline, "the new key never started signing"
        await asyncio.sleep(0.1)
        t2 = await clinic_token()
    # Never before its time.
    assert claims_of(t2)["iat"] >= int(activates_at.timestamp())

    # The resource server picks the new key up on first sight and still accepts the old one.
    assert await resource_status(http, probe_url, t2) == 200
    assert await resource_status(http, probe_url, t1) == 200
    assert {k1, k2} <= await published_kids(http, auth_url)

    # The old key stays published until the last token it signed has expired.
    row = await auth_pool.fetchrow("SELECT retires_at FROM signing_keys WHERE kid = $1", k1)
    assert row is not None
    assert row["retires_at"] is not None
    expected = activates_at + timedelta(seconds=auth_settings.access_token_ttl + 60)
    assert abs(row["retires_at"] - expected) < timedelta(seconds=1)
    assert row["retires_at"] >= datetime.fromtimestamp(claims_of(t1)["exp"], UTC)
    new_row = await auth_pool.fetchrow("SELECT retires_at FROM signing_keys WHERE kid = $1", k2)
    assert new_row is not None
    assert new_row["retires_at"] is None


async def test_rotation_requires_the_operator(http: aiohttp.ClientSession, auth_url: str) -> None:
    async with http.post(auth_url + "/v1/admin/signing-keys/rotate") as r:
        assert r.status == 401
    async with http.post(
        auth_url + "/v1/admin/signing-keys/rotate", headers={"Authorization": "Bearer nope"}
    ) as r:
        assert r.status == 401
