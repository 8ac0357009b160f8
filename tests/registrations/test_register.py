"""Registering a client with pets: field-by-field validation, exact duplicates refused with the
existing id (also when identical registrations race), idempotent retries, and group isolation."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest

from shared.db import create_pool
from tests.conftest import Admin, TokenFactory
from tests.registrations.conftest import (
    Registrar,
    assert_problem,
    field_errors,
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


async def test_register_a_client_with_pets_and_consents(registrar: Registrar) -> None:
    body = registration(
        first="  Mary   Ann ",
        last="Jones",
        email="Mary.Jones@Example.COM",
        phone="020 7946 0958",
        title="mrs",
        address={
            "line1": "10  Downing Street",
            "city": "London",
            "postcode": "sw1a2aa",
        },
        referral_source="Friend or family",
        pets=[
            pet(
                "Biscuit",
                "Dog",
                breed="labrador retriever",
                sex="Female",
                date_of_birth="2020-05-01",
                neutered=True,
                microchip="985 112 345 678 901",
            ),
            pet("Tom", "cat"),
        ],
        consents={"reminders": True, "marketing": False},
    )
    status, client, headers = await registrar.register(body)
    assert status == 201
    assert headers["Location"] == (
        f"/v1/clinics/{registrar.clinic_id}/registrations/clients/{client['id']}"
    )
    assert headers["ETag"] == '"1"'
    assert "Idempotent-Replayed" not in headers
    assert client["group_id"] == registrar.group_id
    assert client["registered_clinic_id"] == registrar.clinic_id
    assert client["title"] == "Mrs"
    assert (client["first_name"], client["last_name"]) == ("Mary Ann", "Jones")
    assert client["email"] == "Mary.Jones@example.com"
    assert client["phone"] == "+442079460958"
    assert client["address"] == {
        "line1": "10 Downing Street",
        "line2": None,
        "city": "London",
        "region": None,
        "postcode": "SW1A 2AA",
        "country": "GB",
    }
    assert client["referral_source"] == "friend_family"
    dog, cat = client["patients"]
    assert dog["name"] == "Biscuit"
    assert (dog["species"], dog["breed"], dog["sex"]) == ("dog", "Labrador Retriever", "female")
    assert (dog["date_of_birth"], dog["neutered"]) == ("2020-05-01", True)
    assert dog["microchip"] == "985112345678901"
    assert (cat["name"], cat["species"], cat["breed"]) == ("Tom", "cat", None)
    consents = {c["code"]: c["granted"] for c in client["consents"]}
    assert consents == {"reminders": True, "marketing": False}
    assert client["erased"] is False
    # Read back, the same.
    assert await registrar.client(client["id"]) == client


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (
            {"client": {"first_name": "A", "last_name": "B", "email": "not-an-email"}},
            "body.client.email",
        ),
        ({"client": {"first_name": "A", "last_name": "B", "email": "a@b"}}, "body.client.email"),
        ({"client": {"first_name": "", "last_name": "B"}}, "body.client.first_name"),
        ({"client": {"last_name": "B"}}, "body.client.first_name"),
        ({"patients": []}, "body.patients"),
        ({"patients": [{"name": "Rex"}]}, "body.patients.0.species"),
        ({"patients": [pet(date_of_birth="01/02/2020")]}, "body.patients.0.date_of_birth"),
        ({"patients": [pet(microchip="12345")]}, "body.patients.0.microchip"),
        ({"patients": [pet(microchip="98511234567890X")]}, "body.patients.0.microchip"),
        ({"patients": [pet(), pet(neutered="perhaps")]}, "body.patients.1.neutered"),
        ({"consents": {"Marketing!": True}}, "body.consents.Marketing!.[key]"),
        ({"shoe_size": 9}, "body.shoe_size"),
    ],
)
async def test_malformed_fields_are_named(
    registrar: Registrar, change: dict[str, Any], field: str
) -> None:
    body = {**registration(), **change}
    status, problem, _ = await registrar.register(body, expect=None)
    assert_problem(status, problem, 422, "validation-error")
    assert field in field_errors(problem), problem


async def test_answers_are_checked_against_the_form_and_reported_together(
    registrar: Registrar,
) -> None:
    tomorrow = datetime.now(ZoneInfo("Europe/London")).date() + timedelta(days=1)
    body = registration(
        phone="12345",
        title="Lord",
        referral_source="carrier pigeon",
        address={"postcode": "not a postcode", "country": "XZ"},
        pets=[
            pet("Rex", "dragon"),
            pet("Tom", "cat", breed="Labrador Retriever", sex="both", date_of_birth=str(tomorrow)),
            pet("Fuzz", "ferret", breed="Sable"),
        ],
        consents={"reminders": True, "newsletter": True},
    )
    status, problem, _ = await registrar.register(body, expect=None)
    assert_problem(status, problem, 422, "validation-error")
    errors = field_errors(problem)
    assert set(errors) == {
        "body.client.phone",
        "body.client.title",
        "body.client.referral_source",
        "body.client.address.country",
        "body.client.address.postcode",
        "body.patients.0.species",
        "body.patients.1.breed",
        "body.patients.1.sex",
        "body.patients.1.date_of_birth",
        "body.patients.2.breed",
        "body.consents.newsletter",
    }, errors
    assert errors["body.patients.1.date_of_birth"] == "Lies in the future"
    assert "Mrs" in errors["body.client.title"]
    assert "phone number" in errors["body.client.phone"]


async def test_date_of_birth_today_is_fine(registrar: Registrar) -> None:
    today = datetime.now(ZoneInfo("Europe/London")).date()
    _, client, _ = await registrar.register(
        registration(pets=[pet(date_of_birth=today.isoformat())])
    )
    assert client["patients"][0]["date_of_birth"] == today.isoformat()


async def test_required_fields_of_the_default_form(registrar: Registrar) -> None:
    status, problem, _ = await registrar.register(registration(email=None, phone=None), expect=None)
    assert_problem(status, problem, 422, "validation-error")
    assert set(field_errors(problem)) == {"body.client.email", "body.client.phone"}


async def test_one_microchip_for_two_pets_is_refused(registrar: Registrar) -> None:
    chip = "985112345678901"
    body = registration(
        pets=[pet("A", microchip=chip), pet("B", microchip=f"{chip[:3]} {chip[3:]}")]
    )
    status, problem, _ = await registrar.register(body, expect=None)
    assert_problem(status, problem, 422, "validation-error")
    assert set(field_errors(problem)) == {"body.patients.1.microchip"}


async def test_a_registered_microchip_is_a_conflict(registrar: Registrar) -> None:
    chip = "985112345678902"
    _, first, _ = await registrar.register(registration(pets=[pet("A", microchip=chip)]))
    body = registration(
        email="other@example.com", phone="020 7946 0001", pets=[pet("B"), pet("C", microchip=chip)]
    )
    status, problem, _ = await registrar.register(body, expect=None)
    assert_problem(status, problem, 409, "microchip-registered")
    assert problem["client_id"] == first["id"]
    assert problem["patient_id"] == first["patients"][0]["id"]
    assert set(field_errors(problem)) == {"body.patients.1.microchip"}


# --- exact duplicates ------------------------------------------------------------------------


async def test_same_email_in_any_case_is_a_duplicate(registrar: Registrar) -> None:
    _, first, _ = await registrar.register(registration(email="ann.lee@example.com"))
    again = registration(email="  ANN.LEE@EXAMPLE.COM ", phone="020 7946 0111", last="Other")
    status, problem, _ = await registrar.register(again, expect=None)
    assert_problem(status, problem, 409, "client-exists")
    assert problem["client_id"] == first["id"]
    assert set(field_errors(problem)) == {"body.client.email"}
    # No second copy was written.
    _, page, _ = await registrar.call("GET", "/registrations/clients", expect=200)
    assert [c["id"] for c in page["items"]] == [first["id"]]


@pytest.mark.parametrize(
    ("phone", "last"),
    [
        ("+44 20 7946 0958", "Lee"),
        ("020 7946 0958", "LEE"),
        ("0044 (0)20 7946-0958", "  lee "),
        ("02079460958", "Ｌｅｅ"),
    ],
)
async def test_same_phone_and_last_name_is_a_duplicate(
    registrar: Registrar, phone: str, last: str
) -> None:
    _, first, _ = await registrar.register(
        registration(email="first@example.com", phone="020 7946 0958", last="Lee")
    )
    again = registration(email="second@example.com", phone=phone, last=last, first="Bob")
    status, problem, _ = await registrar.register(again, expect=None)
    assert_problem(status, problem, 409, "client-exists")
    assert problem["client_id"] == first["id"]
    assert set(field_errors(problem)) == {"body.client.phone"}


async def test_same_phone_with_another_last_name_is_another_client(registrar: Registrar) -> None:
    await registrar.register(registration(email="a@example.com", last="Lee"))
    _, other, _ = await registrar.register(registration(email="b@example.com", last="Leigh"))
    assert other["phone"] == "+442079460958"


async def test_a_client_is_known_at_every_clinic_of_the_group(
    admin: Admin, get_token: TokenFactory, registrar: Registrar
) -> None:
    _, first, _ = await registrar.register(registration())
    near = await sibling(admin, get_token, registrar)
    status, problem, _ = await near.register(registration(), expect=None)
    assert_problem(status, problem, 409, "client-exists")
    assert problem["client_id"] == first["id"]
    assert (await near.client(first["id"]))["id"] == first["id"]


async def test_phones_are_read_in_the_clinics_country(
    admin: Admin, get_token: TokenFactory, registrar: Registrar
) -> None:
    us = await sibling(admin, get_token, registrar, country="US", time_zone="America/New_York")
    _, client, _ = await us.register(registration(phone="(202) 555-0143"))
    assert client["phone"] == "+12025550143"
    assert client["address"] is None
    # The London clinic of the group sees the same number written internationally as a duplicate.
    status, problem, _ = await registrar.register(
        registration(email="x@example.com", phone="+1 202-555-0143"), expect=None
    )
    assert_problem(status, problem, 409, "client-exists")
    assert problem["client_id"] == client["id"]


async def test_other_groups_never_see_each_others_clients(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    registrations_url: str,
    registrar: Registrar,
) -> None:
    _, mine, _ = await registrar.register(registration())
    stranger = await make_registrar(admin, get_token, http, registrations_url)
    # The same person registers in another group: a client of its own there.
    _, theirs, _ = await stranger.register(registration())
    assert theirs["id"] != mine["id"]
    assert theirs["group_id"] == stranger.group_id
    status, problem, _ = await stranger.call("GET", f"/registrations/clients/{mine['id']}")
    assert_problem(status, problem, 404, "not-found")
    status, problem, _ = await stranger.call(
        "PATCH", f"/registrations/clients/{mine['id']}", {"last_name": "X"}
    )
    assert_problem(status, problem, 404, "not-found")
    status, problem, _ = await stranger.call(
        "POST", f"/registrations/clients/{mine['id']}/patients", pet()
    )
    assert_problem(status, problem, 404, "not-found")
    status, problem, _ = await stranger.call("GET", f"/patients/{mine['patients'][0]['id']}")
    assert_problem(status, problem, 404, "not-found")
    status, problem, _ = await stranger.call("POST", f"/registrations/clients/{mine['id']}/erase")
    assert_problem(status, problem, 404, "not-found")
    _, page, _ = await stranger.call("GET", "/registrations/clients", expect=200)
    assert [c["id"] for c in page["items"]] == [theirs["id"]]
    # A token acting for one clinic cannot act on another's path.
    stranger.tenant.clinic_id = registrar.clinic_id
    status, problem, _ = await stranger.register(registration(email="z@example.com"), expect=None)
    assert_problem(status, problem, 403, "clinic-not-granted")


async def test_registering_needs_registrations_write(
    get_token: TokenFactory, registrar: Registrar
) -> None:
    reader = await narrowed(get_token, registrar, "clients:read")
    status, problem, _ = await reader.register(registration(), expect=None)
    assert_problem(status, problem, 403, "insufficient-scope")


async def test_racing_identical_registrations_one_wins(
    registrar: Registrar, registrations_db: asyncpg.Pool
) -> None:
    body = registration(email="race@example.com", phone="020 7946 0555", last="Racer")
    answers = await asyncio.gather(*(registrar.register(body, expect=None) for _ in range(12)))
    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {201: 1, 409: 11}, statuses
    winner = next(body for status, body, _ in answers if status == 201)
    for status, problem, _ in answers:
        if status == 409:
            assert slug_is(problem, "client-exists")
            assert problem["client_id"] == winner["id"]
    async with registrations_db.acquire() as conn:
        count = await conn.fetchval(
            "SELECT count(*) FROM clients WHERE group_id = $1", uuid.UUID(registrar.group_id)
        )
        pets = await conn.fetchval(
            "SELECT count(*) FROM patients WHERE group_id = $1", uuid.UUID(registrar.group_id)
        )
    assert (count, pets) == (1, 1)


async def test_racing_registrations_by_phone_and_name_one_wins(registrar: Registrar) -> None:
    # Different e-mail addresses, the same phone and last name: the second rule decides.
    bodies = [
        registration(email=f"r{i}@example.com", phone="+44 20 7946 0777", last="Same")
        for i in range(8)
    ]
    answers = await asyncio.gather(*(registrar.register(b, expect=None) for b in bodies))
    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {201: 1, 409: 7}, statuses
    winner = next(body for status, body, _ in answers if status == 201)
    assert {p["client_id"] for s, p, _ in answers if s == 409} == {winner["id"]}


def slug_is(problem: Any, slug: str) -> bool:
    return str(problem.get("type", "")).endswith("/" + slug)


# --- idempotency -----------------------------------------------------------------------------


async def test_same_key_and_body_gives_the_same_client_again(registrar: Registrar) -> None:
    body = registration(email="retry@example.com")
    key = f"reg-{uuid.uuid4()}"
    _, first, headers = await registrar.register(body, key=key)
    assert "Idempotent-Replayed" not in headers
    status, again, headers = await registrar.register(body, key=key)
    assert status == 201
    assert headers["Idempotent-Replayed"] == "true"
    assert again["id"] == first["id"]
    assert headers["Location"].endswith(first["id"])
    # A retry in another spelling of the same validated content is the same body too.
    respelt = {**body, "client": {**body["client"], "email": "retry@EXAMPLE.com"}}
    respelt["client"]["first_name"] = " Ann "
    status, third, headers = await registrar.register(respelt, key=key)
    assert (status, third["id"], headers["Idempotent-Replayed"]) == (201, first["id"], "true")


async def test_same_key_with_another_body_is_refused(registrar: Registrar) -> None:
    key = f"reg-{uuid.uuid4()}"
    await registrar.register(registration(email="one@example.com"), key=key)
    status, problem, _ = await registrar.register(
        registration(email="two@example.com"), key=key, expect=None
    )
    assert_problem(status, problem, 422, "idempotency-key-reused")
    assert set(field_errors(problem)) == {"header.Idempotency-Key"}


async def test_keys_belong_to_their_application_and_clinic(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    registrations_url: str,
    registrar: Registrar,
) -> None:
    key = "shared-key"
    _, mine, _ = await registrar.register(registration(), key=key)
    stranger = await make_registrar(admin, get_token, http, registrations_url)
    _, theirs, headers = await stranger.register(registration(email="x@example.com"), key=key)
    assert theirs["id"] != mine["id"]
    assert "Idempotent-Replayed" not in headers


async def test_racing_retries_with_one_key_make_one_client(registrar: Registrar) -> None:
    body = registration(email="same-key@example.com")
    key = f"reg-{uuid.uuid4()}"
    answers = await asyncio.gather(*(registrar.register(body, key=key) for _ in range(8)))
    assert {client["id"] for _, client, _ in answers} == {answers[0][1]["id"]}
    replayed = Counter(headers.get("Idempotent-Replayed") for _, _, headers in answers)
    assert replayed == {None: 1, "true": 7}, replayed


async def test_an_idempotency_key_that_is_too_long_is_refused(registrar: Registrar) -> None:
    status, problem, _ = await registrar.register(registration(), key="k" * 256, expect=None)
    assert_problem(status, problem, 422, "validation-error")
    assert set(field_errors(problem)) == {"header.Idempotency-Key"}


async def test_a_body_that_is_not_json_is_a_problem(registrar: Registrar) -> None:
    async with registrar.http.post(
        f"{registrar.base}/v1/clinics/{registrar.clinic_id}/registrations",
        data=b"{not json",
        headers={"Authorization": f"Bearer {registrar.token}", "Content-Type": "application/json"},
    ) as r:
        problem = await r.json(content_type=None)
        assert r.content_type == "application/problem+json"
        assert_problem(r.status, problem, 422, "validation-error")


async def test_registrations_racing_for_the_same_microchips_never_fail_oddly(
    registrar: Registrar,
) -> None:
    # The same two chips in opposite orders: the server may pick a deadlock victim, which is
    # run again and then refused like any other duplicate — never a 500.
    for round_ in range(4):
        chips = [f"98511234560{round_}{n:03d}" for n in (1, 2)]
        bodies = [
            registration(
                email=f"chip{round_}{side}@example.com",
                phone=f"020 7946 06{round_}{side}",
                pets=[pet(f"P{n}", microchip=chip) for n, chip in enumerate(order)],
            )
            for side, order in enumerate((chips, chips[::-1]))
        ]
        answers = await asyncio.gather(*(registrar.register(b, expect=None) for b in bodies))
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [201, 409], answers
        problem = next(body for status, body, _ in answers if status == 409)
        assert slug_is(problem, "microchip-registered")
