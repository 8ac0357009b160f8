"""Token introspection (RFC 7662) and revocation (RFC 7009)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest

from tests.conftest import Admin, Tenant, TokenFactory, basic_auth


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: Any


async def post_form(
    http: aiohttp.ClientSession, url: str, form: dict[str, str], headers: dict[str, str]
) -> Answer:
    async with http.post(url, data=form, headers=headers) as r:
        text = await r.text()
        body = await r.json(content_type=None) if text else None
        return Answer(r.status, r.headers, body)


async def introspect(
    http: aiohttp.ClientSession, auth_url: str, caller: Tenant, token: str
) -> Answer:
    """POST /oauth/introspect as ``caller`` (HTTP Basic)."""
    headers = basic_auth(caller.client_id, caller.client_secret)
    return await post_form(http, auth_url + "/oauth/introspect", {"token": token}, headers)


async def revoke(
    http: aiohttp.ClientSession, auth_url: str, caller: Tenant, token: str, **form: str
) -> Answer:
    """POST /oauth/revoke as ``caller`` (HTTP Basic)."""
    headers = basic_auth(caller.client_id, caller.client_secret)
    data = {"token": token, **form}
    return await post_form(http, auth_url + "/oauth/revoke", data, headers)


async def clinic_token(get_token: TokenFactory, t: Tenant) -> str:
    token: str = (await get_token(t, clinic_id=t.clinic_id))["access_token"]
    return token


def jti_of(token: str) -> str:
    jti: str = jwt.decode(token, options={"verify_signature": False})["jti"]
    return jti


def assert_inactive(answer: Answer) -> None:
    """RFC 7662 §2.2: an inactive token is answered with ``active`` alone."""
    assert answer.status == 200, answer.body
    assert answer.body == {"active": False}
    assert answer.headers["Cache-Control"] == "no-store"


def assert_oauth_error(answer: Answer, status: int, error: str) -> None:
    assert answer.status == status, answer.body
    assert answer.body["error"] == error, answer.body
    assert answer.body["error_description"]


async def probe(http: aiohttp.ClientSession, resource_url: str, t: Tenant, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{resource_url}/v1/clinics/{t.clinic_id}/probe", headers=headers) as r:
        await r.read()
        return r.status


async def wait_for_status(
    http: aiohttp.ClientSession,
    resource_url: str,
    t: Tenant,
    token: str,
    expected: int,
    within: float = 10.0,
) -> int:
    """Poll the resource server until it answers ``expected`` or ``within`` seconds pass."""
    deadline = time.monotonic() + within
    status = await probe(http, resource_url, t, token)
    while status != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        status = await probe(http, resource_url, t, token)
    return status


def segment(value: dict[str, Any]) -> str:
    return jwt.utils.base64url_encode(json.dumps(value).encode()).decode()


def forged_tokens(genuine: str) -> list[str]:
    """Tokens that look like ours but were not signed by the auth service."""
    header = jwt.get_unverified_header(genuine)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    head, _, signature = genuine.split(".")
    widened = {**claims, "scope": "bookings:read bookings:write clients:read"}
    symmetric = {k: v for k, v in header.items() if k != "alg"}
    return [
        # The payload changed under the genuine signature.
        f"{head}.{segment(widened)}.{signature}",
        # Signed with a shared secret instead of the published key, same kid.
        jwt.encode(claims, "k" * 32, algorithm="HS256", headers=symmetric),
        # Not signed at all.
        f"{segment({**header, 'alg': 'none'})}.{segment(claims)}.",
    ]


# --- introspection ----------------------------------------------------------------------------


async def test_own_active_token_is_described(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant, get_token: TokenFactory
) -> None:
    token = await clinic_token(get_token, tenant)
    answer = await introspect(http, auth_url, tenant, token)
    assert answer.status == 200, answer.body
    assert answer.headers["Cache-Control"] == "no-store"
    body = answer.body
    assert body["active"] is True
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "bookings:read bookings:write"
    assert body["client_id"] == tenant.client_id
    assert body["clinic_id"] == tenant.clinic_id
    assert body["sub"] == tenant.client_id
    assert body["jti"] == jti_of(token)
    assert body["exp"] > time.time()
    assert body["exp"] - body["iat"] <= 900


async def test_application_token_is_described(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant, get_token: TokenFactory
) -> None:
    token = (await get_token(tenant))["access_token"]
    body = (await introspect(http, auth_url, tenant, token)).body
    assert body["active"] is True
    assert body["scope"] == "clinics:read events:read webhooks:manage"
    assert "clinic_id" not in body


async def test_another_clients_token_is_inactive(
    http: aiohttp.ClientSession,
    auth_url: str,
    admin: Admin,
    tenant: Tenant,
    get_token: TokenFactory,
) -> None:
    other = await admin.tenant()
    token = await clinic_token(get_token, other)
    assert_inactive(await introspect(http, auth_url, tenant, token))
    assert (await introspect(http, auth_url, other, token)).body["active"] is True


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.sig", " "])
async def test_garbage_token_is_inactive(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant, token: str
) -> None:
    assert_inactive(await introspect(http, auth_url, tenant, token))


async def test_forged_token_is_inactive(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant, get_token: TokenFactory
) -> None:
    for forged in forged_tokens(await clinic_token(get_token, tenant)):
        assert_inactive(await introspect(http, auth_url, tenant, forged))


async def test_token_of_revoked_grant_is_inactive(
    http: aiohttp.ClientSession,
    auth_url: str,
    admin: Admin,
    tenant: Tenant,
    get_token: TokenFactory,
) -> None:
    token = await clinic_token(get_token, tenant)
    await admin.call("DELETE", f"/v1/admin/grants/{tenant.grant_id}", None, 200)
    assert_inactive(await introspect(http, auth_url, tenant, token))


async def test_token_of_suspended_application_is_inactive(
    http: aiohttp.ClientSession,
    auth_url: str,
    admin: Admin,
    tenant: Tenant,
    get_token: TokenFactory,
) -> None:
    token = await clinic_token(get_token, tenant)
    await admin.call("POST", f"/v1/admin/applications/{tenant.application_id}/suspend", None, 200)
    assert_inactive(await introspect(http, auth_url, tenant, token))


async def test_introspection_needs_client_authentication(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant, get_token: TokenFactory
) -> None:
    token = await clinic_token(get_token, tenant)
    url = auth_url + "/oauth/introspect"
    anonymous = await post_form(http, url, {"token": token}, {})
    assert_oauth_error(anonymous, 401, "invalid_client")
    assert anonymous.headers["WWW-Authenticate"].startswith('Basic realm="vetgate"')
    wrong = await post_form(
        http, url, {"token": token}, basic_auth(tenant.client_id, "vgs_not-the-secret")
    )
    assert_oauth_error(wrong, 401, "invalid_client")


async def test_introspection_needs_a_token(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant
) -> None:
    headers = basic_auth(tenant.client_id, tenant.client_secret)
    answer = await post_form(http, auth_url + "/oauth/introspect", {}, headers)
    assert_oauth_error(answer, 400, "invalid_request")


# --- revocation -------------------------------------------------------------------------------


async def test_revoked_token_is_inactive_and_recorded(
    http: aiohttp.ClientSession,
    auth_url: str,
    tenant: Tenant,
    get_token: TokenFactory,
    auth_pool: asyncpg.Pool,
) -> None:
    token = await clinic_token(get_token, tenant)
    answer = await revoke(http, auth_url, tenant, token)
    assert answer.status == 200, answer.body
    assert answer.headers["Cache-Control"] == "no-store"
    assert_inactive(await introspect(http, auth_url, tenant, token))

    row = await auth_pool.fetchrow(
        "SELECT client_id, expires_at FROM revoked_tokens WHERE jti = $1", jti_of(token)
    )
    assert row is not None
    assert row["client_id"] == tenant.client_id
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert row["expires_at"] == datetime.fromtimestamp(exp, UTC)


async def test_access_token_hint_is_accepted(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant, get_token: TokenFactory
) -> None:
    token = await clinic_token(get_token, tenant)
    answer = await revoke(http, auth_url, tenant, token, token_type_hint="access_token")
    assert answer.status == 200, answer.body
    assert_inactive(await introspect(http, auth_url, tenant, token))


async def test_revoking_garbage_is_accepted(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant
) -> None:
    answer = await revoke(http, auth_url, tenant, "garbage")
    assert answer.status == 200, answer.body


async def test_revoking_another_clients_token_is_refused(
    http: aiohttp.ClientSession,
    auth_url: str,
    admin: Admin,
    tenant: Tenant,
    get_token: TokenFactory,
    auth_pool: asyncpg.Pool,
) -> None:
    other = await admin.tenant()
    token = await clinic_token(get_token, other)
    answer = await revoke(http, auth_url, tenant, token)
    assert_oauth_error(answer, 400, "unauthorized_client")
    assert (await introspect(http, auth_url, other, token)).body["active"] is True
    assert not await auth_pool.fetchval(
        "SELECT true FROM revoked_tokens WHERE jti = $1", jti_of(token)
    )


async def test_refresh_token_hint_is_unsupported(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant, get_token: TokenFactory
) -> None:
    token = await clinic_token(get_token, tenant)
    answer = await revoke(http, auth_url, tenant, token, token_type_hint="refresh_token")
    assert_oauth_error(answer, 400, "unsupported_token_type")
    assert (await introspect(http, auth_url, tenant, token)).body["active"] is True


async def test_revocation_needs_client_authentication(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant, get_token: TokenFactory
) -> None:
    token = await clinic_token(get_token, tenant)
    answer = await post_form(http, auth_url + "/oauth/revoke", {"token": token}, {})
    assert_oauth_error(answer, 401, "invalid_client")
    assert (await introspect(http, auth_url, tenant, token)).body["active"] is True


async def test_revocation_is_published_once(
    http: aiohttp.ClientSession,
    auth_url: str,
    tenant: Tenant,
    get_token: TokenFactory,
    auth_pool: asyncpg.Pool,
) -> None:
    token = await clinic_token(get_token, tenant)
    jti = jti_of(token)
    for _ in range(2):
        assert (await revoke(http, auth_url, tenant, token)).status == 200
    rows = await auth_pool.fetch(
        "SELECT payload FROM outbox WHERE event_type = 'token.revoked' "
        "AND payload->'data'->>'jti' = $1",
        jti,
    )
    assert len(rows) == 1
    event = rows[0]["payload"]
    assert event["type"] == "token.revoked"
    assert event["clinic_id"] == tenant.clinic_id
    assert event["data"]["client_id"] == tenant.client_id
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert datetime.fromisoformat(event["data"]["expires_at"]).timestamp() == exp


async def test_resource_server_refuses_a_revoked_token(
    http: aiohttp.ClientSession,
    auth_url: str,
    resource_url: str,
    tenant: Tenant,
    get_token: TokenFactory,
) -> None:
    token = await clinic_token(get_token, tenant)
    assert await probe(http, resource_url, tenant, token) == 200
    assert (await revoke(http, auth_url, tenant, token)).status == 200
    # The resource server learns of the revocation over the bus: an asynchronous effect.
    assert await wait_for_status(http, resource_url, tenant, token, 401) == 401
    fresh = await clinic_token(get_token, tenant)
    assert await probe(http, resource_url, tenant, fresh) == 200


async def test_unknown_token_revocation_leaves_no_row(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant, auth_pool: asyncpg.Pool
) -> None:
    before = await auth_pool.fetchval(
        "SELECT count(*) FROM revoked_tokens WHERE client_id = $1", tenant.client_id
    )
    assert (await revoke(http, auth_url, tenant, str(uuid.uuid4()))).status == 200
    after = await auth_pool.fetchval(
        "SELECT count(*) FROM revoked_tokens WHERE client_id = $1", tenant.client_id
    )
    assert after == before == 0
