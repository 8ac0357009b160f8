"""Erasure: personal data anonymised for good, ids and history kept, ``client.erased`` sent;
by the clinic (registrations:write) or by an operator (admin token, by group)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from shared import events
from shared.db import create_pool
from tests.conftest import Admin, TokenFactory
from tests.registrations.conftest import (
    Bus,
    Operator,
    Registrar,
    assert_problem,
    make_registrar,
    narrowed,
    pet,
    registration,
    sibling,
)


@pytest.fixture(scope="module")
async def registrations_db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, schema="registrations", min_size=1, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture
async def client(registrar: Registrar) -> dict[str, Any]:
    _, body, _ = await registrar.register(
        registration(
            first="Erin",
            last="Gone",
            email="erin.gone@example.com",
            phone="020 7946 0958",
            title="Ms",
            address={"line1": "1 Lane", "city": "Leeds", "postcode": "LS1 1BA"},
            pets=[pet("Patch", "dog", breed="Beagle", microchip="985112345670001")],
            consents={"marketing": True},
        ),
        key=f"erase-{uuid.uuid4()}",
    )
    return dict(body)


PERSONAL = (
    "Erin",
    "Gone",
    "erin",
    "2079460958",
    "LS1",
    "Leeds",
    "Lane",
    "Patch",
    "985112345670001",
)


def assert_anonymous(erased: dict[str, Any], original: dict[str, Any]) -> None:
    assert erased["id"] == original["id"]
    assert erased["erased"] is True
    assert erased["erased_at"] is not None
    for name in ("title", "first_name", "last_name", "email", "phone", "address"):
        assert erased[name] is None, name
    assert [p["id"] for p in erased["patients"]] == [p["id"] for p in original["patients"]]
    for patient in erased["patients"]:
        assert patient["name"] is None
        assert patient["microchip"] is None
        assert patient["species"] == "dog"  # clinical history stays readable
    text = str(erased)
    for personal in PERSONAL:
        assert personal not in text, personal


async def test_a_clinic_erases_a_client(
    registrar: Registrar,
    client: dict[str, Any],
    bus: Bus,
    registrations_db: asyncpg.Pool,
) -> None:
    path = f"/registrations/clients/{client['id']}"
    _, erased, headers = await registrar.call("POST", path + "/erase", expect=200)
    assert_anonymous(erased, client)
    assert headers["ETag"] == f'"{erased["version"]}"'
    assert await registrar.client(client["id"]) == erased

    # Nothing personal is left in the service's tables.
    async with registrations_db.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM clients WHERE id = $1", uuid.UUID(client["id"]))
        pets = await conn.fetch(
            "SELECT * FROM patients WHERE client_id = $1", uuid.UUID(client["id"])
        )
        requests = await conn.fetchval(
            "SELECT count(*) FROM create_requests WHERE client_id = $1", uuid.UUID(client["id"])
        )
    assert row is not None
    stored = str(dict(row)) + str([dict(p) for p in pets])
    for personal in PERSONAL:
        assert personal not in stored, personal
    assert requests == 0

    # Every service and partner is told to forget the client.
    seen = await bus.wait_for(client["id"], [events.CLIENT_ERASED])
    erasure = next(e for e in seen if e.type == events.CLIENT_ERASED)
    assert erasure.data["group_id"] == registrar.group_id
    assert str(erasure.clinic_id) == registrar.clinic_id
    assert erasure.sequence > max(e.sequence for e in seen if e.type != events.CLIENT_ERASED)

    # The person may register again, as a new client; the erased one never matches.
    _, match, _ = await registrar.call(
        "POST", "/registrations/match", {"email": "erin.gone@example.com"}, expect=200
    )
    assert match == {"result": "none", "client_id": None}
    _, again, _ = await registrar.register(
        registration(
            first="Erin",
            last="Gone",
            email="erin.gone@example.com",
            pets=[pet("Patch", microchip="985112345670001")],
        )
    )
    assert again["id"] != client["id"]


async def test_an_erased_client_cannot_change_and_erasing_again_changes_nothing(
    registrar: Registrar, client: dict[str, Any], bus: Bus
) -> None:
    path = f"/registrations/clients/{client['id']}"
    _, erased, _ = await registrar.call("POST", path + "/erase", expect=200)
    status, problem, _ = await registrar.call("PATCH", path, {"first_name": "Back"})
    assert_problem(status, problem, 409, "client-erased")
    status, problem, _ = await registrar.call("POST", path + "/patients", pet())
    assert_problem(status, problem, 409, "client-erased")
    status, problem, _ = await registrar.call(
        "PATCH", f"/patients/{client['patients'][0]['id']}", {"name": "Back"}
    )
    assert_problem(status, problem, 409, "client-erased")
    _, twice, _ = await registrar.call("POST", path + "/erase", expect=200)
    assert twice == erased
    await bus.wait_for(client["id"], [events.CLIENT_ERASED])
    assert [e.type for e in bus.about(client["id"])].count(events.CLIENT_ERASED) == 1


async def test_a_clinic_erases_only_with_registrations_write_and_in_its_group(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    registrations_url: str,
    registrar: Registrar,
    client: dict[str, Any],
) -> None:
    path = f"/registrations/clients/{client['id']}/erase"
    reader = await narrowed(get_token, registrar, "clients:read")
    status, problem, _ = await reader.call("POST", path)
    assert_problem(status, problem, 403, "insufficient-scope")
    stranger = await make_registrar(admin, get_token, http, registrations_url)
    status, problem, _ = await stranger.call("POST", path)
    assert_problem(status, problem, 404, "not-found")
    assert (await registrar.client(client["id"]))["erased"] is False
    # Any clinic of the group may.
    near = await sibling(admin, get_token, registrar)
    _, erased, _ = await near.call("POST", path, expect=200)
    assert erased["erased"] is True


async def test_an_operator_erases_a_client_of_a_group(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    registrations_url: str,
    operator: Operator,
    registrar: Registrar,
    client: dict[str, Any],
    bus: Bus,
) -> None:
    path = f"/v1/groups/{registrar.group_id}/clients/{client['id']}/erase"
    status, problem = await operator.call("POST", path, token="wrong")
    assert_problem(status, problem, 401, "unauthorized")
    status, problem = await operator.call("POST", path, token=registrar.token)
    assert_problem(status, problem, 401, "unauthorized")
    stranger = await make_registrar(admin, get_token, http, registrations_url)
    status, problem = await operator.call(
        "POST", f"/v1/groups/{stranger.group_id}/clients/{client['id']}/erase"
    )
    assert_problem(status, problem, 404, "not-found")
    status, problem = await operator.call(
        "POST", f"/v1/groups/{registrar.group_id}/clients/{uuid.uuid4()}/erase"
    )
    assert_problem(status, problem, 404, "not-found")
    assert (await registrar.client(client["id"]))["erased"] is False

    _, erased = await operator.call("POST", path, expect=200)
    assert_anonymous(erased, client)
    seen = await bus.wait_for(client["id"], [events.CLIENT_ERASED])
    erasure = next(e for e in seen if e.type == events.CLIENT_ERASED)
    # Nobody acted for a clinic: the event is the client's registering clinic's.
    assert str(erasure.clinic_id) == registrar.clinic_id
    assert await registrar.client(client["id"]) == erased
