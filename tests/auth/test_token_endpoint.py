"""The token endpoint (RFC 6749 §4.4, §5.2), client-failure slowing, secret rotation, and what an
application-level token reaches in the clinic directory."""

from __future__ import annotations

import base64
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
import pytest

from services.auth.settings import AuthSettings
from shared.scopes import APPLICATION_SCOPES
from tests.conftest import Admin, Tenant, TokenFactory, basic_auth

PROBLEMS = "https://vetgate.dev/problems/"


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: dict[str, Any]


async def post_token(
    http: aiohttp.ClientSession,
    auth_url: str,
    form: dict[str, str],
    headers: dict[str, str] | None = None,
) -> Answer:
    """POST a form to /oauth/token exactly as given: no client authentication is added."""
    async with http.post(auth_url + "/oauth/token", data=form, headers=headers or {}) as r:
        return Answer(r.status, r.headers, await r.json(content_type=None))


async def token_for(http: aiohttp.ClientSession, auth_url: str, t: Tenant, **form: str) -> Answer:
    """A client_credentials request authenticated with the tenant's Basic credentials."""
    data = {"grant_type": "client_credentials", **form}
    return await post_token(http, auth_url, data, basic_auth(t.client_id, t.client_secret))


def assert_oauth_error(answer: Answer, status: int, error: str) -> None:
    """An RFC 6749 §5.2 error body: ``error`` and a human ``error_description``."""
    assert answer.status == status, answer.body
    assert answer.body["error"] == error, answer.body
    assert isinstance(answer.body["error_description"], str)
    assert answer.body["error_description"]
    assert answer.headers["Cache-Control"] == "no-store"


def assert_invalid_client(answer: Answer) -> None:
    assert_oauth_error(answer, 401, "invalid_client")
    assert answer.headers["WWW-Authenticate"].startswith('Basic realm="vetgate"')


def bearer(token: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['access_token']}"}


async def get_json(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with http.get(url, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def list_all_clinics(
    http: aiohttp.ClientSession, auth_url: str, headers: dict[str, str], limit: int
) -> list[str]:
    """Walk /v1/clinics page by page; each page holds at most ``limit`` items."""
    ids: list[str] = []
    url = f"{auth_url}/v1/clinics?limit={limit}"
    for _ in range(100):
        status, page = await get_json(http, url, headers)
        assert status == 200, page
        assert len(page["items"]) <= limit
        ids.extend(item["id"] for item in page["items"])
        if page["next_cursor"] is None:
            return ids
        url = f"{auth_url}/v1/clinics?limit={limit}&cursor={page['next_cursor']}"
    raise AssertionError("pagination did not end")


async def add_group_with_clinics(admin: Admin, count: int) -> tuple[str, list[str]]:
    tag = uuid.uuid4().hex[:8]
    group = await admin.call("POST", "/v1/admin/groups", {"name": f"Group {tag}"}, 201)
    clinic_ids = []
    for n in range(count):
        body = {
            "group_id": group["id"],
            "name": f"Clinic {tag}-{n}",
            "time_zone": "Europe/Dublin",
            "sandbox": True,
        }
        clinic_ids.append((await admin.call("POST", "/v1/admin/clinics", body, 201))["id"])
    return group["id"], clinic_ids


async def add_group_grant(admin: Admin, t: Tenant, group_id: str) -> None:
    body = {"application_id": t.application_id, "group_id": group_id, "scopes": ["bookings:read"]}
    await admin.call("POST", "/v1/admin/grants", body, 201)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# --- request shape and client authentication --------------------------------------------------


async def test_missing_grant_type_is_invalid_request(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant
) -> None:
    headers = basic_auth(tenant.client_id, tenant.client_secret)
    answer = await post_token(http, auth_url, {"scope": "clinics:read"}, headers)
    assert_oauth_error(answer, 400, "invalid_request")


async def test_unknown_grant_type_is_unsupported(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant
) -> None:
    answer = await post_token(
        http,
        auth_url,
        {"grant_type": "authorization_code", "code": "x"},
        basic_auth(tenant.client_id, tenant.client_secret),
    )
    assert_oauth_error(answer, 400, "unsupported_grant_type")


async def test_json_body_is_invalid_request(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant
) -> None:
    async with http.post(
        auth_url + "/oauth/token",
        json={"grant_type": "client_credentials"},
        headers=basic_auth(tenant.client_id, tenant.client_secret),
    ) as r:
        answer = Answer(r.status, r.headers, await r.json(content_type=None))
    assert_oauth_error(answer, 400, "invalid_request")


async def test_no_client_authentication_is_invalid_client(
    http: aiohttp.ClientSession, auth_url: str
) -> None:
    answer = await post_token(http, auth_url, {"grant_type": "client_credentials"})
    assert_invalid_client(answer)


BadCredentials = Callable[[Tenant], dict[str, str]]


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param(lambda t: basic_auth(t.client_id, t.client_secret + "x"), id="wrong-secret"),
        pytest.param(
            lambda t: basic_auth("vgsbx_" + uuid.uuid4().hex, t.client_secret), id="unknown-client"
        ),
        pytest.param(lambda t: {"Authorization": "Basic %%%not-base64%%%"}, id="not-base64"),
        pytest.param(lambda t: {"Authorization": "Basic " + b64(b"no-colon")}, id="no-colon"),
        pytest.param(lambda t: {"Authorization": "Basic " + b64(b"\xff\xfe:x")}, id="not-utf8"),
        pytest.param(
            lambda t: {"Authorization": "Basic " + b64(t.client_id.encode() + b":%FF%FE")},
            id="percent-encoded-not-utf8",
        ),
        pytest.param(lambda t: {"Authorization": "Bearer " + t.client_secret}, id="wrong-scheme"),
    ],
)
async def test_bad_client_credentials_are_invalid_client(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant, credentials: BadCredentials
) -> None:
    answer = await post_token(
        http, auth_url, {"grant_type": "client_credentials"}, credentials(tenant)
    )
    assert_invalid_client(answer)


async def test_basic_and_body_secret_together_is_invalid_request(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant
) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": tenant.client_id,
        "client_secret": tenant.client_secret,
    }
    answer = await post_token(
        http, auth_url, form, basic_auth(tenant.client_id, tenant.client_secret)
    )
    assert_oauth_error(answer, 400, "invalid_request")


async def test_client_secret_post_is_accepted(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant
) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": tenant.client_id,
        "client_secret": tenant.client_secret,
        "clinic_id": tenant.clinic_id,
    }
    answer = await post_token(http, auth_url, form)
    assert answer.status == 200, answer.body
    assert answer.body["token_type"] == "Bearer"
    assert answer.body["scope"] == "bookings:read bookings:write"
    claims = jwt.decode(answer.body["access_token"], options={"verify_signature": False})
    assert claims["client_id"] == tenant.client_id


# --- scopes and clinics -----------------------------------------------------------------------


async def test_unknown_scope_is_invalid_scope(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant
) -> None:
    answer = await token_for(
        http, auth_url, tenant, clinic_id=tenant.clinic_id, scope="bookings:read pets:eat"
    )
    assert_oauth_error(answer, 400, "invalid_scope")
    assert "pets:eat" in answer.body["error_description"]


async def test_scope_beyond_the_grant_is_invalid_scope(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin
) -> None:
    t = await admin.tenant(scopes=["bookings:read"])
    answer = await token_for(
        http, auth_url, t, clinic_id=t.clinic_id, scope="bookings:read bookings:write"
    )
    assert_oauth_error(answer, 400, "invalid_scope")
    assert "bookings:write" in answer.body["error_description"]


async def test_clinic_scope_without_a_clinic_is_invalid_scope(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant
) -> None:
    answer = await token_for(http, auth_url, tenant, scope="bookings:read")
    assert_oauth_error(answer, 400, "invalid_scope")


async def test_clinic_without_grant_is_invalid_grant(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, tenant: Tenant
) -> None:
    other = await admin.tenant()
    for clinic_id in (other.clinic_id, str(uuid.uuid4())):
        answer = await token_for(http, auth_url, tenant, clinic_id=clinic_id)
        assert_oauth_error(answer, 400, "invalid_grant")


async def test_malformed_clinic_id_is_invalid_request(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant
) -> None:
    answer = await token_for(http, auth_url, tenant, clinic_id="clinic-42")
    assert_oauth_error(answer, 400, "invalid_request")


async def test_sandbox_application_gets_no_token_for_a_real_clinic(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, tenant: Tenant
) -> None:
    # A group grant is not checked per clinic when created; the token endpoint must still refuse.
    real = await admin.tenant(environment="production")
    await add_group_grant(admin, tenant, real.group_id)
    answer = await token_for(http, auth_url, tenant, clinic_id=real.clinic_id)
    assert_oauth_error(answer, 400, "invalid_grant")


# --- application status -----------------------------------------------------------------------


async def test_pending_application_is_unauthorized_client(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin
) -> None:
    t = await admin.tenant(approve=False)
    answer = await token_for(http, auth_url, t, clinic_id=t.clinic_id)
    assert_oauth_error(answer, 400, "unauthorized_client")
    assert "pending" in answer.body["error_description"]


async def test_suspended_application_is_unauthorized_client(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, get_token: TokenFactory
) -> None:
    t = await admin.tenant()
    await get_token(t, clinic_id=t.clinic_id)
    app = await admin.call("POST", f"/v1/admin/applications/{t.application_id}/suspend", None, 200)
    assert app["status"] == "suspended"
    answer = await token_for(http, auth_url, t, clinic_id=t.clinic_id)
    assert_oauth_error(answer, 400, "unauthorized_client")
    assert "suspended" in answer.body["error_description"]


async def test_clinic_owned_production_application_needs_dpa_for_approval(
    admin: Admin,
) -> None:
    tag = uuid.uuid4().hex[:8]
    partner = await admin.call(
        "POST",
        "/v1/admin/partners",
        {"name": f"Clinic-owned {tag}", "contact_email": f"own{tag}@example.com"},
        201,
    )
    app = await admin.call(
        "POST",
        f"/v1/admin/partners/{partner['id']}/applications",
        {
            "name": f"In-house {tag}",
            "environment": "production",
            "contact_email": f"it{tag}@example.com",
            "clinic_owned": True,
        },
        201,
    )
    approve = f"/v1/admin/applications/{app['id']}/approve"
    problem = await admin.call("POST", approve, None, 409)
    assert problem["type"] == PROBLEMS + "dpa-required"
    assert problem["status"] == 409
    current = await admin.call("GET", f"/v1/admin/applications/{app['id']}", None, 200)
    assert current["status"] == "pending"

    await admin.call("PATCH", f"/v1/admin/applications/{app['id']}", {"dpa_signed": True}, 200)
    assert (await admin.call("POST", approve, None, 200))["status"] == "approved"


# --- the token itself -------------------------------------------------------------------------


async def test_token_response_is_not_cached(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant
) -> None:
    answer = await token_for(http, auth_url, tenant, clinic_id=tenant.clinic_id)
    assert answer.status == 200, answer.body
    assert answer.headers["Cache-Control"] == "no-store"
    assert answer.headers["Content-Type"].startswith("application/json")


async def test_clinic_token_claims(
    tenant: Tenant, get_token: TokenFactory, auth_settings: AuthSettings
) -> None:
    answer = await get_token(tenant, clinic_id=tenant.clinic_id)
    token = answer["access_token"]
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})

    assert header["typ"] == "at+jwt"
    assert header["alg"] == "EdDSA"
    assert header["kid"]
    assert claims["iss"] == auth_settings.issuer
    assert claims["sub"] == tenant.client_id
    assert claims["aud"] == auth_settings.token_audience
    assert 0 < claims["exp"] - claims["iat"] <= 900
    assert claims["jti"]
    assert claims["client_id"] == tenant.client_id
    assert claims["scope"] == "bookings:read bookings:write"
    assert claims["clinic_id"] == tenant.clinic_id
    # A clinic grant alone: the token names no group (revoking a group grant cannot touch it).
    assert "group_id" not in claims
    assert "user_id" not in claims
    assert answer["expires_in"] == claims["exp"] - claims["iat"]
    assert answer["clinic_id"] == tenant.clinic_id


async def test_two_tokens_have_distinct_ids(tenant: Tenant, get_token: TokenFactory) -> None:
    first, second = (await get_token(tenant), await get_token(tenant))
    jtis = {
        jwt.decode(t["access_token"], options={"verify_signature": False})["jti"]
        for t in (first, second)
    }
    assert len(jtis) == 2


async def test_application_token_gets_application_scopes(
    tenant: Tenant, get_token: TokenFactory
) -> None:
    answer = await get_token(tenant)
    claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
    assert answer["scope"] == "clinics:read events:read webhooks:manage"
    assert set(claims["scope"].split()) == APPLICATION_SCOPES
    assert "clinic_id" not in claims
    assert answer["clinic_id"] is None


async def test_scope_can_be_narrowed(tenant: Tenant, get_token: TokenFactory) -> None:
    clinic = await get_token(tenant, clinic_id=tenant.clinic_id, scope="bookings:read")
    assert clinic["scope"] == "bookings:read"
    application = await get_token(tenant, scope="events:read")
    assert application["scope"] == "events:read"
    claims = jwt.decode(application["access_token"], options={"verify_signature": False})
    assert claims["scope"] == "events:read"


# --- failure slowing and secret rotation ------------------------------------------------------


async def test_repeated_wrong_secrets_slow_down_that_client_only(
    http: aiohttp.ClientSession,
    auth_url: str,
    admin: Admin,
    auth_settings: AuthSettings,
    tenant: Tenant,
    get_token: TokenFactory,
) -> None:
    target = await admin.tenant()
    wrong = basic_auth(target.client_id, "vgs_wrong")
    form = {"grant_type": "client_credentials"}
    for _ in range(auth_settings.auth_failure_burst):
        assert_invalid_client(await post_token(http, auth_url, form, wrong))

    slowed = await post_token(http, auth_url, form, wrong)
    assert slowed.status == 429, slowed.body
    assert slowed.body["type"] == PROBLEMS + "rate-limited"
    # One failure is forgiven every 1 / rate seconds: that is how long to wait.
    wait = str(math.ceil(1 / auth_settings.auth_failure_rate))
    assert slowed.headers["Retry-After"] == wait
    assert slowed.body["retry_after"] == int(wait)

    # The right secret still works: slowing only failures means nobody who merely knows a
    # (public) client id can lock its partner out.
    right = await token_for(http, auth_url, target)
    assert right.status == 200, right.body

    # Another application's client id is counted on its own.
    assert (await get_token(tenant, clinic_id=tenant.clinic_id))["access_token"]


async def test_rotated_secret_and_previous_one_both_work(
    http: aiohttp.ClientSession,
    auth_url: str,
    admin: Admin,
    tenant: Tenant,
    get_token: TokenFactory,
) -> None:
    await get_token(tenant, clinic_id=tenant.clinic_id)
    rotated = await admin.call(
        "POST", f"/v1/admin/applications/{tenant.application_id}/secret", None, 200
    )
    assert rotated["client_id"] == tenant.client_id
    assert rotated["client_secret"] != tenant.client_secret
    assert rotated["client_secret"].startswith("vgs_")
    assert rotated["previous_secret_expires_at"] is not None

    for secret in (rotated["client_secret"], tenant.client_secret):
        answer = await post_token(
            http,
            auth_url,
            {"grant_type": "client_credentials", "clinic_id": tenant.clinic_id},
            basic_auth(tenant.client_id, secret),
        )
        assert answer.status == 200, answer.body


# --- the clinic directory with an application-level token -------------------------------------


async def test_clinic_list_holds_exactly_the_granted_clinics(
    http: aiohttp.ClientSession,
    auth_url: str,
    admin: Admin,
    tenant: Tenant,
    get_token: TokenFactory,
) -> None:
    other = await admin.tenant()
    group_id, group_clinics = await add_group_with_clinics(admin, 2)
    await add_group_grant(admin, tenant, group_id)
    headers = bearer(await get_token(tenant))

    status, page = await get_json(http, f"{auth_url}/v1/clinics", headers)
    assert status == 200, page
    listed = [item["id"] for item in page["items"]]
    assert sorted(listed) == sorted([tenant.clinic_id, *group_clinics])
    assert other.clinic_id not in listed
    assert page["next_cursor"] is None

    walked = await list_all_clinics(http, auth_url, headers, limit=1)
    assert walked == sorted(walked)
    assert sorted(walked) == sorted(listed)


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("%%%", id="not-base64"),
        pytest.param(base64.urlsafe_b64encode(b"{}").decode(), id="not-a-list"),
        pytest.param(base64.urlsafe_b64encode(b'["a", "b"]').decode(), id="wrong-arity"),
        pytest.param(base64.urlsafe_b64encode(b'["not-an-id"]').decode(), id="not-an-id"),
    ],
)
async def test_tampered_cursor_is_a_validation_problem(
    http: aiohttp.ClientSession,
    auth_url: str,
    tenant: Tenant,
    get_token: TokenFactory,
    cursor: str,
) -> None:
    headers = bearer(await get_token(tenant))
    async with http.get(f"{auth_url}/v1/clinics", params={"cursor": cursor}, headers=headers) as r:
        body = await r.json(content_type=None)
        assert r.status == 422, body
        assert r.content_type == "application/problem+json"
    assert body["type"] == PROBLEMS + "validation-error"
    assert body["status"] == 422
    assert body["errors"][0]["field"] == "query.cursor"


async def test_clinic_list_needs_clinics_read(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant, get_token: TokenFactory
) -> None:
    headers = bearer(await get_token(tenant, scope="webhooks:manage"))
    status, body = await get_json(http, f"{auth_url}/v1/clinics", headers)
    assert status == 403, body
    assert body["type"] == PROBLEMS + "insufficient-scope"
    assert body["status"] == 403


async def test_other_tenants_clinic_is_not_found(
    http: aiohttp.ClientSession,
    auth_url: str,
    admin: Admin,
    tenant: Tenant,
    get_token: TokenFactory,
) -> None:
    other = await admin.tenant()
    headers = bearer(await get_token(tenant))

    status, own = await get_json(http, f"{auth_url}/v1/clinics/{tenant.clinic_id}", headers)
    assert status == 200, own
    assert own["id"] == tenant.clinic_id
    assert own["group_id"] == tenant.group_id

    status, body = await get_json(http, f"{auth_url}/v1/clinics/{other.clinic_id}", headers)
    assert status == 404, body
    assert body["type"] == PROBLEMS + "not-found"
    assert body["status"] == 404
