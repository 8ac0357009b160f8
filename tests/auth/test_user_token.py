"""Clinic staff users and the password grant (RFC 6749 §4.3): tokens that carry a person."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt

from tests.conftest import Admin, Tenant, basic_auth

PROBLEMS = "https://vetgate.dev/problems/"
PASSWORD = "correct horse battery"


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]
    body: dict[str, Any]


@dataclass
class Staff:
    id: str
    clinic_id: str
    username: str
    password: str


async def create_staff(
    admin: Admin, clinic_id: str, *, password: str = PASSWORD, role: str = "vet"
) -> Staff:
    username = f"vet.{uuid.uuid4().hex[:10]}@clinic.example"
    user = await admin.call(
        "POST",
        f"/v1/admin/clinics/{clinic_id}/staff",
        {"username": username, "display_name": "Dr Test", "password": password, "role": role},
        201,
    )
    return Staff(user["id"], user["clinic_id"], user["username"], password)


async def password_token(
    http: aiohttp.ClientSession,
    auth_url: str,
    t: Tenant,
    username: str,
    password: str,
    **form: str,
) -> Answer:
    """A password-grant request authenticated with the tenant's Basic credentials."""
    data = {"grant_type": "password", "username": username, "password": password, **form}
    headers = basic_auth(t.client_id, t.client_secret)
    async with http.post(auth_url + "/oauth/token", data=data, headers=headers) as r:
        return Answer(r.status, r.headers, await r.json(content_type=None))


def claims_of(answer: Answer) -> dict[str, Any]:
    assert answer.status == 200, answer.body
    claims: dict[str, Any] = jwt.decode(
        answer.body["access_token"], options={"verify_signature": False}
    )
    return claims


def assert_oauth_error(answer: Answer, status: int, error: str) -> None:
    assert answer.status == status, answer.body
    assert answer.body["error"] == error, answer.body
    assert answer.body["error_description"]


# --- staff users ------------------------------------------------------------------------------


async def test_staff_user_is_created_without_its_password(admin: Admin, tenant: Tenant) -> None:
    username = f"nurse.{uuid.uuid4().hex[:10]}"
    user = await admin.call(
        "POST",
        f"/v1/admin/clinics/{tenant.clinic_id}/staff",
        {"username": username, "display_name": "Nurse Test", "password": PASSWORD},
        201,
    )
    assert user["clinic_id"] == tenant.clinic_id
    assert user["username"] == username
    assert user["role"] == "staff"
    assert user["active"] is True
    assert uuid.UUID(user["id"])
    assert not {"password", "password_hash"} & set(user)


async def test_short_password_is_refused(admin: Admin, tenant: Tenant) -> None:
    problem = await admin.call(
        "POST",
        f"/v1/admin/clinics/{tenant.clinic_id}/staff",
        {"username": f"u{uuid.uuid4().hex[:8]}", "display_name": "Short", "password": "x" * 11},
        422,
    )
    assert problem["type"] == PROBLEMS + "validation-error"
    assert [e["field"] for e in problem["errors"]] == ["body.password"]


async def test_usernames_are_unique_regardless_of_case(admin: Admin, tenant: Tenant) -> None:
    staff = await create_staff(admin, tenant.clinic_id)
    problem = await admin.call(
        "POST",
        f"/v1/admin/clinics/{tenant.clinic_id}/staff",
        {"username": staff.username.upper(), "display_name": "Twin", "password": PASSWORD},
        409,
    )
    assert problem["type"] == PROBLEMS + "username-taken"


async def test_staff_user_for_unknown_clinic_is_not_found(admin: Admin) -> None:
    problem = await admin.call(
        "POST",
        f"/v1/admin/clinics/{uuid.uuid4()}/staff",
        {"username": f"u{uuid.uuid4().hex[:8]}", "display_name": "Nobody", "password": PASSWORD},
        404,
    )
    assert problem["type"] == PROBLEMS + "not-found"


# --- the password grant -----------------------------------------------------------------------


async def test_user_token_carries_the_user_and_the_clinic(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, tenant: Tenant
) -> None:
    staff = await create_staff(admin, tenant.clinic_id)
    answer = await password_token(http, auth_url, tenant, staff.username, staff.password)
    claims = claims_of(answer)
    assert claims["user_id"] == staff.id
    assert claims["sub"] == staff.id
    assert claims["clinic_id"] == tenant.clinic_id
    # A clinic grant alone: the token names no group (revoking a group grant cannot touch it).
    assert "group_id" not in claims
    assert claims["client_id"] == tenant.client_id
    assert claims["scope"] == "bookings:read bookings:write"
    assert answer.body["clinic_id"] == tenant.clinic_id
    assert answer.headers["Cache-Control"] == "no-store"


async def test_user_token_scope_can_be_narrowed_but_not_widened(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, tenant: Tenant
) -> None:
    staff = await create_staff(admin, tenant.clinic_id)
    narrowed = await password_token(
        http, auth_url, tenant, staff.username, staff.password, scope="bookings:read"
    )
    assert claims_of(narrowed)["scope"] == "bookings:read"
    widened = await password_token(
        http, auth_url, tenant, staff.username, staff.password, scope="clients:read"
    )
    assert_oauth_error(widened, 400, "invalid_scope")


async def test_wrong_password_and_unknown_user_look_the_same(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, tenant: Tenant
) -> None:
    staff = await create_staff(admin, tenant.clinic_id)
    wrong = await password_token(http, auth_url, tenant, staff.username, PASSWORD + "!")
    unknown = await password_token(http, auth_url, tenant, f"ghost.{uuid.uuid4().hex}", PASSWORD)
    assert_oauth_error(wrong, 400, "invalid_grant")
    assert_oauth_error(unknown, 400, "invalid_grant")
    assert wrong.body["error_description"] == unknown.body["error_description"]
    assert wrong.body == unknown.body


async def test_password_grant_needs_username_and_password(
    http: aiohttp.ClientSession, auth_url: str, tenant: Tenant
) -> None:
    headers = basic_auth(tenant.client_id, tenant.client_secret)
    for form in ({"username": "someone"}, {"password": PASSWORD}):
        async with http.post(
            auth_url + "/oauth/token", data={"grant_type": "password", **form}, headers=headers
        ) as r:
            answer = Answer(r.status, r.headers, await r.json(content_type=None))
        assert_oauth_error(answer, 400, "invalid_request")


async def test_password_grant_still_authenticates_the_client(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, tenant: Tenant
) -> None:
    staff = await create_staff(admin, tenant.clinic_id)
    data = {"grant_type": "password", "username": staff.username, "password": staff.password}
    headers = basic_auth(tenant.client_id, "vgs_not-the-secret")
    async with http.post(auth_url + "/oauth/token", data=data, headers=headers) as r:
        answer = Answer(r.status, r.headers, await r.json(content_type=None))
    assert_oauth_error(answer, 401, "invalid_client")


async def test_staff_of_an_ungranted_clinic_cannot_sign_in(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, tenant: Tenant
) -> None:
    other = await admin.tenant()
    staff = await create_staff(admin, other.clinic_id)
    answer = await password_token(http, auth_url, tenant, staff.username, staff.password)
    assert_oauth_error(answer, 400, "invalid_grant")
    # The same person signs in through an application that is granted their clinic.
    assert claims_of(await password_token(http, auth_url, other, staff.username, PASSWORD))


async def test_resource_server_sees_the_user(
    http: aiohttp.ClientSession, auth_url: str, resource_url: str, admin: Admin, tenant: Tenant
) -> None:
    staff = await create_staff(admin, tenant.clinic_id)
    answer = await password_token(http, auth_url, tenant, staff.username, staff.password)
    assert answer.status == 200, answer.body
    headers = {"Authorization": f"Bearer {answer.body['access_token']}"}
    async with http.get(
        f"{resource_url}/v1/clinics/{tenant.clinic_id}/probe", headers=headers
    ) as r:
        seen = await r.json(content_type=None)
        assert r.status == 200, seen
    assert seen == {
        "clinic_id": tenant.clinic_id,
        "client_id": tenant.client_id,
        "user_id": staff.id,
    }
