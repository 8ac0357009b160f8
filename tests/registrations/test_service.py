"""The service as a process: operational routes, its OpenAPI document, and the clinic directory
it keeps from the auth service's ``clinic.*`` events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from shared.db import create_pool
from tests.conftest import Admin
from tests.registrations.conftest import eventually


@pytest.fixture(scope="module")
async def registrations_db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, schema="registrations", min_size=1, max_size=2)
    yield pool
    await pool.close()


async def test_operational_routes(http: aiohttp.ClientSession, registrations_url: str) -> None:
    async with http.get(registrations_url + "/healthz") as r:
        assert (r.status, (await r.json())["service"]) == (200, "registrations")
    async with http.get(registrations_url + "/readyz") as r:
        assert r.status == 200, await r.text()


async def test_openapi_describes_every_route(
    http: aiohttp.ClientSession, registrations_url: str
) -> None:
    async with http.get(registrations_url + "/openapi.json") as r:
        doc = await r.json()
    assert set(doc["paths"]) == {
        "/v1/clinics/{clinic_id}/registration-form",
        "/v1/clinics/{clinic_id}/registrations",
        "/v1/clinics/{clinic_id}/registrations/match",
        "/v1/clinics/{clinic_id}/registrations/clients",
        "/v1/clinics/{clinic_id}/registrations/clients/{client_id}",
        "/v1/clinics/{clinic_id}/registrations/clients/{client_id}/patients",
        "/v1/clinics/{clinic_id}/registrations/clients/{client_id}/erase",
        "/v1/clinics/{clinic_id}/patients/{patient_id}",
        "/v1/groups/{group_id}/registration-form",
        "/v1/groups/{group_id}/clients/{client_id}/erase",
    }
    register = doc["paths"]["/v1/clinics/{clinic_id}/registrations"]["post"]
    assert register["x-scopes"] == ["registrations:write"]
    assert {"201", "409", "422"} <= set(register["responses"])
    assert "RegistrationCreate" in doc["components"]["schemas"]


async def test_new_clinics_reach_the_directory_by_event(
    admin: Admin, registrations_url: str, registrations_db: asyncpg.Pool
) -> None:
    group = await admin.call("POST", "/v1/admin/groups", {"name": "Directory"}, 201)
    clinic = await admin.call(
        "POST",
        "/v1/admin/clinics",
        {
            "group_id": group["id"],
            "name": "Dublin",
            "time_zone": "Europe/Dublin",
            "country": "IE",
        },
        201,
    )

    async def projected() -> asyncpg.Record | None:
        async with registrations_db.acquire() as conn:
            return await conn.fetchrow(
                "SELECT group_id, country, time_zone FROM clinics WHERE id = $1",
                uuid.UUID(clinic["id"]),
            )

    row = await eventually(projected, "the clinic in the registrations directory")
    assert (str(row["group_id"]), row["country"], row["time_zone"]) == (
        group["id"],
        "IE",
        "Europe/Dublin",
    )
