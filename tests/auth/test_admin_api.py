"""The operator API: its credential, problem+json refusals, grants and what they leave behind."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.conftest import Admin, Tenant

PROBLEMS = "https://vetgate.dev/problems/"
PROBLEM_JSON = "application/problem+json"


@dataclass
class Reply:
    status: int
    content_type: str
    body: dict[str, Any]
    www_authenticate: str | None = None


async def send(
    http: aiohttp.ClientSession,
    url: str,
    method: str,
    *,
    headers: dict[str, str],
    body: Any = None,
    raw: bytes | None = None,
    content_type: str = "application/json",
) -> Reply:
    """One request with exactly these headers; ``raw`` is sent as is, ``body`` as JSON."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    sent = {**headers, "Content-Type": content_type} if data is not None else headers
    async with http.request(method, url, data=data, headers=sent) as r:
        return Reply(
            r.status,
            r.content_type,
            await r.json(content_type=None),
            r.headers.get("WWW-Authenticate"),
        )


async def admin_send(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, method: str, path: str, **kw: Any
) -> Reply:
    return await send(http, auth_url + path, method, headers=admin.headers, **kw)


def assert_problem(reply: Reply, status: int, slug: str) -> None:
    assert reply.status == status, reply.body
    assert reply.content_type == PROBLEM_JSON
    assert reply.body["type"] == PROBLEMS + slug
    assert reply.body["status"] == status
    assert reply.body["title"]


def assert_invalid_fields(reply: Reply, *fields: str) -> None:
    """A 422 validation problem naming exactly these fields."""
    assert_problem(reply, 422, "validation-error")
    assert [e["field"] for e in reply.body["errors"]] == list(fields), reply.body
    assert all(e["message"] for e in reply.body["errors"])


async def grant_rows(pool: asyncpg.Pool, application_id: str) -> int:
    count: int = await pool.fetchval(
        "SELECT count(*) FROM grants WHERE application_id = $1", uuid.UUID(application_id)
    )
    return count


async def grant_events(pool: asyncpg.Pool, event_type: str, grant_id: str) -> list[dict[str, Any]]:
    """Outbox payloads (the event envelopes) of one kind for one grant."""
    rows = await pool.fetch(
        "SELECT payload FROM outbox WHERE event_type = $1 AND payload->'data'->>'grant_id' = $2",
        event_type,
        grant_id,
    )
    return [dict(r["payload"]) for r in rows]


def new_tag() -> str:
    return uuid.uuid4().hex[:8]


# --- the operator credential ------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"Authorization": "Bearer not-the-admin-token"}, id="wrong-token"),
        pytest.param({"Authorization": "Bearer "}, id="empty-token"),
        pytest.param({"Authorization": "Basic YWRtaW46YWRtaW4="}, id="wrong-scheme"),
    ],
)
async def test_operator_api_needs_the_operator_token(
    http: aiohttp.ClientSession, auth_url: str, headers: dict[str, str]
) -> None:
    reply = await send(
        http, auth_url + "/v1/admin/groups", "POST", headers=headers, body={"name": "Nope"}
    )
    assert_problem(reply, 401, "unauthorized")
    assert reply.www_authenticate is not None
    assert reply.www_authenticate.startswith("Bearer ")


async def test_refused_operator_call_writes_nothing(
    http: aiohttp.ClientSession, auth_url: str, auth_pool: asyncpg.Pool
) -> None:
    name = f"Unauthorised {new_tag()}"
    reply = await send(http, auth_url + "/v1/admin/groups", "POST", headers={}, body={"name": name})
    assert reply.status == 401
    assert await auth_pool.fetchval("SELECT count(*) FROM groups WHERE name = $1", name) == 0


# --- validation -------------------------------------------------------------------------------


async def test_bad_time_zone_names_the_field(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, tenant: Tenant
) -> None:
    body = {"group_id": tenant.group_id, "name": "Clinic", "time_zone": "Europe/Atlantis"}
    reply = await admin_send(http, auth_url, admin, "POST", "/v1/admin/clinics", body=body)
    assert_invalid_fields(reply, "body.time_zone")


async def test_unknown_group_names_the_field(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin
) -> None:
    body = {"group_id": str(uuid.uuid4()), "name": "Clinic", "time_zone": "Europe/London"}
    reply = await admin_send(http, auth_url, admin, "POST", "/v1/admin/clinics", body=body)
    assert_invalid_fields(reply, "body.group_id")


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "two@@example.com", "sp ace@example.com"])
async def test_bad_email_names_the_field(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, email: str
) -> None:
    body = {"name": "Partner", "contact_email": email}
    reply = await admin_send(http, auth_url, admin, "POST", "/v1/admin/partners", body=body)
    assert_invalid_fields(reply, "body.contact_email")


async def test_bad_application_fields_are_all_named(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, tenant: Tenant
) -> None:
    body = {"name": "App", "contact_email": "nope", "environment": "staging", "tier": 7}
    path = f"/v1/admin/partners/{tenant.partner_id}/applications"
    reply = await admin_send(http, auth_url, admin, "POST", path, body=body)
    assert_problem(reply, 422, "validation-error")
    fields = {e["field"] for e in reply.body["errors"]}
    assert fields == {"body.contact_email", "body.environment", "body.tier"}


async def test_unknown_field_is_refused(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin
) -> None:
    body = {"name": "Group", "colour": "blue"}
    reply = await admin_send(http, auth_url, admin, "POST", "/v1/admin/groups", body=body)
    assert_invalid_fields(reply, "body.colour")


@pytest.mark.parametrize("target", ["both", "neither"])
async def test_grant_needs_exactly_one_target(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, tenant: Tenant, target: str
) -> None:
    body: dict[str, Any] = {"application_id": tenant.application_id, "scopes": ["bookings:read"]}
    if target == "both":
        body.update(clinic_id=tenant.clinic_id, group_id=tenant.group_id)
    reply = await admin_send(http, auth_url, admin, "POST", "/v1/admin/grants", body=body)
    assert_invalid_fields(reply, "body")


async def test_grant_scopes_must_be_clinic_scopes(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, tenant: Tenant
) -> None:
    base = {"application_id": tenant.application_id, "group_id": tenant.group_id}
    empty = await admin_send(
        http, auth_url, admin, "POST", "/v1/admin/grants", body={**base, "scopes": []}
    )
    assert_invalid_fields(empty, "body.scopes")
    foreign = await admin_send(
        http,
        auth_url,
        admin,
        "POST",
        "/v1/admin/grants",
        body={**base, "scopes": ["bookings:read", "webhooks:manage"]},
    )
    assert_invalid_fields(foreign, "body.scopes.1")


async def test_grant_for_unknown_clinic_or_application_names_the_field(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, tenant: Tenant
) -> None:
    unknown_clinic = {
        "application_id": tenant.application_id,
        "clinic_id": str(uuid.uuid4()),
        "scopes": ["bookings:read"],
    }
    reply = await admin_send(http, auth_url, admin, "POST", "/v1/admin/grants", body=unknown_clinic)
    assert_invalid_fields(reply, "body.clinic_id")
    unknown_app = {**unknown_clinic, "application_id": str(uuid.uuid4())}
    reply = await admin_send(http, auth_url, admin, "POST", "/v1/admin/grants", body=unknown_app)
    assert_invalid_fields(reply, "body.application_id")


async def test_malformed_path_id_names_the_parameter(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin
) -> None:
    reply = await admin_send(http, auth_url, admin, "GET", "/v1/admin/applications/42")
    assert_invalid_fields(reply, "path.app_id")


async def test_tampered_grant_cursor_names_the_parameter(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, tenant: Tenant
) -> None:
    path = f"/v1/admin/applications/{tenant.application_id}/grants?cursor=WyJub3BlIl0"
    reply = await admin_send(http, auth_url, admin, "GET", path)
    assert_invalid_fields(reply, "query.cursor")


# --- body handling ----------------------------------------------------------------------------


OVERSIZED = b'{"name": "' + b"x" * (1024 * 1024) + b'"}'
"""Valid JSON just over the 1 MiB body limit."""


async def chunked(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    """The body without a Content-Length: the server only learns its size by reading."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_oversized_body_is_refused(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, framing: str
) -> None:
    headers = {**admin.headers, "Content-Type": "application/json"}
    data = io.BytesIO(OVERSIZED) if framing == "content-length" else chunked(OVERSIZED)
    async with http.post(auth_url + "/v1/admin/groups", data=data, headers=headers) as r:
        reply = Reply(r.status, r.content_type, await r.json(content_type=None))
    assert_problem(reply, 413, "payload-too-large")


async def test_malformed_json_is_a_validation_problem(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin
) -> None:
    raw = b'{"name": "Group",'
    reply = await admin_send(http, auth_url, admin, "POST", "/v1/admin/groups", raw=raw)
    assert_invalid_fields(reply, "body")


async def test_body_that_is_not_json_is_unsupported(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin
) -> None:
    reply = await admin_send(
        http,
        auth_url,
        admin,
        "POST",
        "/v1/admin/groups",
        raw=b"name=Group",
        content_type="application/x-www-form-urlencoded",
    )
    assert_problem(reply, 415, "unsupported-media-type")


# --- grants -----------------------------------------------------------------------------------


async def test_duplicate_active_grant_is_a_conflict_and_writes_nothing(
    http: aiohttp.ClientSession,
    auth_url: str,
    admin: Admin,
    tenant: Tenant,
    auth_pool: asyncpg.Pool,
) -> None:
    before = await grant_rows(auth_pool, tenant.application_id)
    body = {
        "application_id": tenant.application_id,
        "clinic_id": tenant.clinic_id,
        "scopes": ["clients:read"],
    }
    reply = await admin_send(http, auth_url, admin, "POST", "/v1/admin/grants", body=body)
    assert_problem(reply, 409, "grant-exists")
    assert await grant_rows(auth_pool, tenant.application_id) == before


async def test_duplicate_group_grant_is_a_conflict(
    admin: Admin, tenant: Tenant, auth_pool: asyncpg.Pool
) -> None:
    body = {
        "application_id": tenant.application_id,
        "group_id": tenant.group_id,
        "scopes": ["bookings:read"],
    }
    await admin.call("POST", "/v1/admin/grants", body, 201)
    before = await grant_rows(auth_pool, tenant.application_id)
    problem = await admin.call("POST", "/v1/admin/grants", body, 409)
    assert problem["type"] == PROBLEMS + "grant-exists"
    assert await grant_rows(auth_pool, tenant.application_id) == before


async def test_sandbox_application_cannot_be_granted_a_real_clinic(
    http: aiohttp.ClientSession,
    auth_url: str,
    admin: Admin,
    tenant: Tenant,
    auth_pool: asyncpg.Pool,
) -> None:
    real = await admin.tenant(environment="production")
    before = await grant_rows(auth_pool, tenant.application_id)
    body = {
        "application_id": tenant.application_id,
        "clinic_id": real.clinic_id,
        "scopes": ["bookings:read"],
    }
    reply = await admin_send(http, auth_url, admin, "POST", "/v1/admin/grants", body=body)
    assert_problem(reply, 409, "environment-mismatch")
    assert await grant_rows(auth_pool, tenant.application_id) == before

    # And the other way round: a production application is not granted a sandbox clinic.
    reverse = {**body, "application_id": real.application_id, "clinic_id": tenant.clinic_id}
    reply = await admin_send(http, auth_url, admin, "POST", "/v1/admin/grants", body=reverse)
    assert_problem(reply, 409, "environment-mismatch")


async def test_revoking_a_grant_twice_is_a_conflict(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, tenant: Tenant
) -> None:
    revoked = await admin.call("DELETE", f"/v1/admin/grants/{tenant.grant_id}", None, 200)
    assert revoked["id"] == tenant.grant_id
    assert revoked["revoked_at"] is not None
    again = await admin_send(http, auth_url, admin, "DELETE", f"/v1/admin/grants/{tenant.grant_id}")
    assert_problem(again, 409, "grant-revoked")
    missing = await admin_send(http, auth_url, admin, "DELETE", f"/v1/admin/grants/{uuid.uuid4()}")
    assert_problem(missing, 404, "not-found")


async def test_clinic_can_be_granted_again_after_revocation(admin: Admin, tenant: Tenant) -> None:
    await admin.call("DELETE", f"/v1/admin/grants/{tenant.grant_id}", None, 200)
    body = {
        "application_id": tenant.application_id,
        "clinic_id": tenant.clinic_id,
        "scopes": ["bookings:read"],
    }
    again = await admin.call("POST", "/v1/admin/grants", body, 201)
    assert again["id"] != tenant.grant_id
    listed = await admin.call(
        "GET", f"/v1/admin/applications/{tenant.application_id}/grants", None, 200
    )
    by_id = {g["id"]: g for g in listed["items"]}
    assert by_id[tenant.grant_id]["revoked_at"] is not None
    assert by_id[again["id"]]["revoked_at"] is None


async def test_grant_changes_are_written_to_the_outbox(
    admin: Admin, tenant: Tenant, auth_pool: asyncpg.Pool
) -> None:
    [created] = await grant_events(auth_pool, "grant.created", tenant.grant_id)
    assert created["type"] == "grant.created"
    assert created["clinic_id"] == tenant.clinic_id
    assert created["data"]["client_id"] == tenant.client_id
    assert created["data"]["application_id"] == tenant.application_id
    assert created["data"]["scopes"] == sorted(tenant.scopes)
    assert await grant_events(auth_pool, "grant.revoked", tenant.grant_id) == []

    await admin.call("DELETE", f"/v1/admin/grants/{tenant.grant_id}", None, 200)
    [revoked] = await grant_events(auth_pool, "grant.revoked", tenant.grant_id)
    assert revoked["data"]["client_id"] == tenant.client_id
    assert revoked["data"]["clinic_id"] == tenant.clinic_id
    assert revoked["sequence"] > created["sequence"]


async def test_refused_grant_writes_no_event(
    admin: Admin, tenant: Tenant, auth_pool: asyncpg.Pool
) -> None:
    query = (
        "SELECT count(*) FROM outbox WHERE event_type = 'grant.created' "
        "AND payload->'data'->>'application_id' = $1"
    )
    before = await auth_pool.fetchval(query, tenant.application_id)
    body = {
        "application_id": tenant.application_id,
        "clinic_id": tenant.clinic_id,
        "scopes": ["bookings:read"],
    }
    await admin.call("POST", "/v1/admin/grants", body, 409)
    assert await auth_pool.fetchval(query, tenant.application_id) == before == 1
