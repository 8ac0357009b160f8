"""Reading a client and its pets, changing contact details and pets, adding a pet, and the
group's client list in sync order."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import Admin, TokenFactory
from tests.registrations.conftest import (
    Registrar,
    assert_problem,
    field_errors,
    narrowed,
    pet,
    registration,
    sibling,
)


@pytest.fixture
async def client(registrar: Registrar) -> dict[str, Any]:
    _, body, _ = await registrar.register(
        registration(pets=[pet("Rex", "dog", breed="Beagle")], consents={"marketing": True})
    )
    return dict(body)


def url(client: dict[str, Any]) -> str:
    return f"/registrations/clients/{client['id']}"


async def test_read_a_client_with_etag_from_any_clinic_of_the_group(
    admin: Admin, get_token: TokenFactory, registrar: Registrar, client: dict[str, Any]
) -> None:
    _, body, headers = await registrar.call("GET", url(client), expect=200)
    assert body == client
    assert headers["ETag"] == '"1"'
    near = await sibling(admin, get_token, registrar)
    _, there, _ = await near.call("GET", url(client), expect=200)
    assert there == client


async def test_reading_needs_clients_read(
    get_token: TokenFactory, registrar: Registrar, client: dict[str, Any]
) -> None:
    writer = await narrowed(get_token, registrar, "registrations:write")
    for path in (url(client), "/registrations/clients", f"/patients/{client['patients'][0]['id']}"):
        status, problem, _ = await writer.call("GET", path)
        assert_problem(status, problem, 403, "insufficient-scope")


async def test_unknown_and_malformed_ids(registrar: Registrar) -> None:
    status, problem, _ = await registrar.call("GET", f"/registrations/clients/{uuid.uuid4()}")
    assert_problem(status, problem, 404, "not-found")
    status, problem, _ = await registrar.call("GET", "/registrations/clients/nope")
    assert_problem(status, problem, 422, "validation-error")
    assert set(field_errors(problem)) == {"path.client_id"}
    status, problem, _ = await registrar.call("GET", f"/patients/{uuid.uuid4()}")
    assert_problem(status, problem, 404, "not-found")


async def test_update_contact_details(registrar: Registrar, client: dict[str, Any]) -> None:
    change = {
        "email": "Ann.New@Example.com",
        "phone": "+44 113 496 0123",
        "address": {"line1": "1 High St", "postcode": "ls11ba"},
        "title": "dr",
        "consents": {"marketing": False, "reminders": True},
    }
    _, updated, headers = await registrar.call(
        "PATCH", url(client), change, expect=200, headers={"If-Match": '"1"'}
    )
    assert headers["ETag"] == '"2"'
    assert updated["version"] == 2
    assert updated["email"] == "Ann.New@example.com"
    assert updated["phone"] == "+441134960123"
    assert updated["address"]["postcode"] == "LS1 1BA"
    assert updated["address"]["country"] == "GB"
    assert updated["title"] == "Dr"
    assert {c["code"]: c["granted"] for c in updated["consents"]} == {
        "marketing": False,
        "reminders": True,
    }
    assert (updated["first_name"], updated["last_name"]) == ("Ann", "Lee")
    assert await registrar.client(client["id"]) == updated

    # The old e-mail address is free again, the new one taken.
    _, _, _ = await registrar.register(
        registration(email="ann.lee@example.com", phone="020 7946 0100")
    )
    status, problem, _ = await registrar.register(
        registration(email="ann.new@example.com", phone="020 7946 0200"), expect=None
    )
    assert_problem(status, problem, 409, "client-exists")
    assert problem["client_id"] == client["id"]

    # Removing the address; a null name is refused, and so is removing a required field.
    _, cleared, _ = await registrar.call("PATCH", url(client), {"address": None}, expect=200)
    assert cleared["address"] is None
    status, problem, _ = await registrar.call(
        "PATCH", url(client), {"last_name": None, "email": None, "phone": "nope"}
    )
    assert_problem(status, problem, 422, "validation-error")
    assert set(field_errors(problem)) == {"body.last_name", "body.email", "body.phone"}


async def test_an_update_onto_another_clients_details_is_a_conflict(
    registrar: Registrar, client: dict[str, Any]
) -> None:
    _, other, _ = await registrar.register(
        registration(email="bob@example.com", phone="020 7946 0300", first="Bob", last="Ray")
    )
    status, problem, _ = await registrar.call("PATCH", url(other), {"email": "ANN.LEE@example.com"})
    assert_problem(status, problem, 409, "client-exists")
    assert problem["client_id"] == client["id"]
    assert set(field_errors(problem)) == {"body.email"}
    # Taking Ann's phone is fine until the last name matches hers too.
    await registrar.call("PATCH", url(other), {"phone": "020 7946 0958"}, expect=200)
    status, problem, _ = await registrar.call("PATCH", url(other), {"last_name": "lee"})
    assert_problem(status, problem, 409, "client-exists")
    assert set(field_errors(problem)) == {"body.phone"}
    assert (await registrar.client(other["id"]))["last_name"] == "Ray"


async def test_a_stale_if_match_is_refused(registrar: Registrar, client: dict[str, Any]) -> None:
    await registrar.call("PATCH", url(client), {"first_name": "Annie"}, expect=200)
    status, problem, headers = await registrar.call(
        "PATCH", url(client), {"first_name": "Anna"}, headers={"If-Match": '"1"'}
    )
    assert_problem(status, problem, 412, "stale-resource")
    assert headers["ETag"] == '"2"'
    await registrar.call(
        "PATCH", url(client), {"first_name": "Anna"}, headers={"If-Match": '"2"'}, expect=200
    )


async def test_an_empty_patch_changes_nothing(registrar: Registrar, client: dict[str, Any]) -> None:
    _, same, headers = await registrar.call("PATCH", url(client), {}, expect=200)
    assert same == client
    assert headers["ETag"] == '"1"'


async def test_updates_need_registrations_write(
    get_token: TokenFactory, registrar: Registrar, client: dict[str, Any]
) -> None:
    reader = await narrowed(get_token, registrar, "clients:read")
    status, problem, _ = await reader.call("PATCH", url(client), {"first_name": "X"})
    assert_problem(status, problem, 403, "insufficient-scope")
    status, problem, _ = await reader.call("POST", url(client) + "/patients", pet())
    assert_problem(status, problem, 403, "insufficient-scope")


async def test_add_a_pet_idempotently(registrar: Registrar, client: dict[str, Any]) -> None:
    body = pet("Mittens", "cat", breed="siamese", microchip="985112345678999")
    key = f"pet-{uuid.uuid4()}"
    _, added, headers = await registrar.call(
        "POST", url(client) + "/patients", body, expect=201, headers={"Idempotency-Key": key}
    )
    assert headers["Location"] == f"/v1/clinics/{registrar.clinic_id}/patients/{added['id']}"
    assert "Idempotent-Replayed" not in headers
    assert (added["client_id"], added["breed"]) == (client["id"], "Siamese")
    _, again, headers = await registrar.call(
        "POST", url(client) + "/patients", body, expect=201, headers={"Idempotency-Key": key}
    )
    assert (again["id"], headers["Idempotent-Replayed"]) == (added["id"], "true")
    status, problem, _ = await registrar.call(
        "POST", url(client) + "/patients", pet("Other"), headers={"Idempotency-Key": key}
    )
    assert_problem(status, problem, 422, "idempotency-key-reused")
    names = [p["name"] for p in (await registrar.client(client["id"]))["patients"]]
    assert names == ["Rex", "Mittens"]
    # The same microchip for another pet is refused, naming the pet that has it.
    status, problem, _ = await registrar.call(
        "POST", url(client) + "/patients", pet("Copy", microchip="985-112-345-678-999")
    )
    assert_problem(status, problem, 409, "microchip-registered")
    assert problem["patient_id"] == added["id"]
    assert set(field_errors(problem)) == {"body.microchip"}


async def test_a_pets_answers_are_checked(registrar: Registrar, client: dict[str, Any]) -> None:
    status, problem, _ = await registrar.call(
        "POST",
        url(client) + "/patients",
        pet("X", "cat", breed="Beagle", sex="?", date_of_birth="2999-01-01"),
    )
    assert_problem(status, problem, 422, "validation-error")
    assert set(field_errors(problem)) == {"body.breed", "body.sex", "body.date_of_birth"}


async def test_change_a_pet(registrar: Registrar, client: dict[str, Any]) -> None:
    rex = client["patients"][0]
    path = f"/patients/{rex['id']}"
    _, read, headers = await registrar.call("GET", path, expect=200)
    assert read == rex
    assert headers["ETag"] == '"1"'
    _, changed, headers = await registrar.call(
        "PATCH",
        path,
        {"neutered": True, "sex": "male", "microchip": "985112345678000", "name": " Rex  II "},
        headers={"If-Match": '"1"'},
        expect=200,
    )
    assert headers["ETag"] == '"2"'
    assert (changed["neutered"], changed["sex"], changed["name"]) == (True, "male", "Rex II")
    assert changed["breed"] == "Beagle"
    # A new species needs a breed of its own: the beagle is not a cat.
    status, problem, _ = await registrar.call("PATCH", path, {"species": "cat"})
    assert_problem(status, problem, 422, "validation-error")
    assert set(field_errors(problem)) == {"body.breed"}
    _, cat, _ = await registrar.call("PATCH", path, {"species": "cat", "breed": None}, expect=200)
    assert (cat["species"], cat["breed"]) == ("cat", None)
    status, problem, _ = await registrar.call("PATCH", path, {"name": None, "species": None})
    assert_problem(status, problem, 422, "validation-error")
    assert set(field_errors(problem)) == {"body.name", "body.species"}
    status, problem, _ = await registrar.call(
        "PATCH", path, {"neutered": False}, headers={"If-Match": '"2"'}
    )
    assert_problem(status, problem, 412, "stale-resource")


async def test_list_the_groups_clients_in_sync_order(
    admin: Admin, get_token: TokenFactory, registrar: Registrar
) -> None:
    near = await sibling(admin, get_token, registrar)
    made = []
    for i in range(5):
        who = registrar if i % 2 else near
        _, c, _ = await who.register(
            registration(email=f"c{i}@example.com", phone=f"020 7946 04{i:02d}", last=f"L{i}")
        )
        made.append(c["id"])
    seen: list[str] = []
    params = {"limit": "2"}
    while True:
        _, page, _ = await registrar.call(
            "GET", "/registrations/clients", params=params, expect=200
        )
        assert len(page["items"]) <= 2
        seen += [c["id"] for c in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == made
    # updated_since: only what changed since then.
    _, changed, _ = await registrar.call(
        "PATCH", f"/registrations/clients/{made[1]}", {"first_name": "Changed"}, expect=200
    )
    _, page, _ = await registrar.call(
        "GET",
        "/registrations/clients",
        params={"updated_since": changed["updated_at"]},
        expect=200,
    )
    assert [c["id"] for c in page["items"]] == [made[1]]
    assert page["items"][0]["patients"]
    status, problem, _ = await registrar.call(
        "GET", "/registrations/clients", params={"cursor": "garbage"}
    )
    assert_problem(status, problem, 422, "validation-error")
    assert set(field_errors(problem)) == {"query.cursor"}
