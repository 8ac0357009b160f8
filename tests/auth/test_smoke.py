from __future__ import annotations

import aiohttp

from tests.conftest import Tenant, TokenFactory


async def test_clinic_token_reaches_resource_server(
    tenant: Tenant, get_token: TokenFactory, http: aiohttp.ClientSession, resource_url: str
) -> None:
    token = await get_token(tenant, clinic_id=tenant.clinic_id)
    assert token["scope"] == "bookings:read bookings:write"
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    async with http.get(
        f"{resource_url}/v1/clinics/{tenant.clinic_id}/probe", headers=headers
    ) as r:
        assert r.status == 200, await r.text()
        assert (await r.json())["client_id"] == tenant.client_id
