"""Edge rules of token issuance: repeated parameters, group grants, the clinic's own entry."""

from __future__ import annotations

import asyncio

import aiohttp
import jwt
import pytest

from tests.conftest import Admin, TokenFactory, basic_auth


async def test_repeated_parameter_is_invalid_request(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin
) -> None:
    tenant = await admin.tenant()
    body = (
        f"grant_type=client_credentials&clinic_id={tenant.clinic_id}&clinic_id={tenant.clinic_id}"
    )
    headers = {
        **basic_auth(tenant.client_id, tenant.client_secret),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    async with http.post(auth_url + "/oauth/token", data=body, headers=headers) as response:
        answer = await response.json()
        assert response.status == 400
        assert answer["error"] == "invalid_request"
        assert "clinic_id" in answer["error_description"]


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=client_credentials&clinic_id=\xff\xfe",
        b"grant_type=client_credentials&clinic_id=%FF%FE",
    ],
    ids=["raw-bytes", "percent-encoded"],
)
async def test_a_form_that_is_not_utf8_is_invalid_request(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, body: bytes
) -> None:
    tenant = await admin.tenant()
    headers = {
        **basic_auth(tenant.client_id, tenant.client_secret),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    async with http.post(auth_url + "/oauth/token", data=body, headers=headers) as response:
        answer = await response.json()
        assert response.status == 400
        assert response.content_type == "application/json"
        assert answer["error"] == "invalid_request"
        assert "UTF-8" in answer["error_description"]


async def test_revoking_a_group_grant_spares_tokens_of_a_clinic_grant(
    http: aiohttp.ClientSession,
    admin: Admin,
    get_token: TokenFactory,
    resource_url: str,
) -> None:
    tenant = await admin.tenant(scopes=["bookings:read"])
    group_grant = await admin.call(
        "POST",
        "/v1/admin/grants",
        {
            "application_id": tenant.application_id,
            "group_id": tenant.group_id,
            "scopes": ["bookings:write"],
        },
        201,
    )
    # Both grants stand behind this token, so it names the group ...
    both = (await get_token(tenant, clinic_id=tenant.clinic_id))["access_token"]
    assert jwt.decode(both, options={"verify_signature": False})["group_id"] == tenant.group_id
    await admin.call("DELETE", f"/v1/admin/grants/{group_grant['id']}", None, 200)
    # ... and falls with the group grant; a token issued on the clinic grant alone does not.
    await asyncio.sleep(2.1)  # past the revocation margin and the whole-second iat
    clinic_only = (await get_token(tenant, clinic_id=tenant.clinic_id))["access_token"]
    assert "group_id" not in jwt.decode(clinic_only, options={"verify_signature": False})
    url = f"{resource_url}/v1/clinics/{tenant.clinic_id}/probe"
    statuses: dict[str, int] = {}
    for _ in range(50):
        for name, token in (("both", both), ("clinic_only", clinic_only)):
            async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                statuses[name] = r.status
        if statuses["both"] == 401:
            break
        await asyncio.sleep(0.1)
    assert statuses == {"both": 401, "clinic_only": 200}


async def test_a_clinic_token_reads_its_own_clinic_but_not_others(
    http: aiohttp.ClientSession, auth_url: str, admin: Admin, get_token: TokenFactory
) -> None:
    tenant = await admin.tenant()
    token = (await get_token(tenant, clinic_id=tenant.clinic_id))["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{auth_url}/v1/clinics/{tenant.clinic_id}", headers=headers) as r:
        assert r.status == 200
        assert (await r.json())["time_zone"] == "Europe/London"
    other = await admin.tenant()
    async with http.get(f"{auth_url}/v1/clinics/{other.clinic_id}", headers=headers) as r:
        assert r.status == 403
        assert (await r.json())["type"].endswith("insufficient-scope")
