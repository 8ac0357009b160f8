""" "Does this client exist?": none, possible or exact, normalised inputs, an id only for an exact
match and only with clients:read, no personal data, and a per-application rate limit."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.conftest import Admin, TokenFactory
from tests.registrations.conftest import (
    Registrar,
    assert_problem,
    field_errors,
    make_registrar,
    narrowed,
    registration,
    sibling,
)


async def match(registrar: Registrar, **given: str) -> dict[str, Any]:
    _, answer, headers = await registrar.call("POST", "/registrations/match", given, expect=200)
    assert headers["Cache-Control"] == "no-store"
    return dict(answer)


@pytest.fixture
async def known(registrar: Registrar) -> dict[str, Any]:
    """Mary Ann Jones, SW1A 2AA, registered in the registrar's group."""
    _, client, _ = await registrar.register(
        registration(
            first="Mary Ann",
            last="Jones",
            email="mary.jones@example.com",
            phone="020 7946 0958",
            address={"postcode": "SW1A 2AA"},
        )
    )
    return dict(client)


@pytest.mark.parametrize(
    "given",
    [
        {"email": "mary.jones@example.com"},
        {"email": "  MARY.JONES@Example.Com "},
        {"phone": "+44 20 7946 0958", "last_name": "Jones"},
        {"phone": "020 7946 0958", "last_name": "JONES"},
        {"phone": "0044 20 7946 0958", "last_name": " ｊｏｎｅｓ "},
        {"email": "someone.else@example.com", "phone": "02079460958", "last_name": "jones"},
    ],
)
async def test_exact_matches_name_the_client(
    registrar: Registrar, known: dict[str, Any], given: dict[str, str]
) -> None:
    assert await match(registrar, **given) == {"result": "exact", "client_id": known["id"]}


@pytest.mark.parametrize(
    "given",
    [
        {"phone": "020 7946 0958"},  # the phone alone
        {"phone": "020 7946 0958", "last_name": "Smith"},  # the phone, under another name
        {"first_name": "mary  ann", "last_name": "JONES"},  # the full name
        {"last_name": "Jones", "postcode": "sw1a2aa"},  # name and postcode
        {"email": "mj@example.org", "last_name": "Jones", "postcode": " SW1A 2aa"},
    ],
)
async def test_possible_matches_name_no_one(
    registrar: Registrar, known: dict[str, Any], given: dict[str, str]
) -> None:
    assert await match(registrar, **given) == {"result": "possible", "client_id": None}


@pytest.mark.parametrize(
    "given",
    [
        {"email": "mary.jones@example.org"},
        {"phone": "020 7946 0959", "last_name": "Jones"},
        {"last_name": "Jones"},
        {"first_name": "Mary", "last_name": "Jones"},
        {"last_name": "Jones", "postcode": "SW1A 1AA"},
        {"first_name": "Mary Ann", "last_name": "Smith"},
    ],
)
async def test_no_match(registrar: Registrar, known: dict[str, Any], given: dict[str, str]) -> None:
    assert await match(registrar, **given) == {"result": "none", "client_id": None}


async def test_the_id_needs_clients_read(
    get_token: TokenFactory, registrar: Registrar, known: dict[str, Any]
) -> None:
    writer = await narrowed(get_token, registrar, "registrations:write")
    assert await match(writer, email="mary.jones@example.com") == {
        "result": "exact",
        "client_id": None,
    }
    reader = await narrowed(get_token, registrar, "clients:read")
    status, problem, _ = await reader.call(
        "POST", "/registrations/match", {"email": "mary.jones@example.com"}
    )
    assert_problem(status, problem, 403, "insufficient-scope")


async def test_answers_carry_no_personal_data(registrar: Registrar, known: dict[str, Any]) -> None:
    for given in (
        {"email": "mary.jones@example.com"},
        {"phone": "020 7946 0958"},
        {"email": "nobody@example.com"},
    ):
        answer = await match(registrar, **given)
        assert set(answer) == {"result", "client_id"}
        text = str(answer).lower()
        for personal in ("mary", "jones", "2079460958", "sw1a", "example"):
            assert personal not in text


async def test_matching_covers_the_group_and_nothing_else(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    registrations_url: str,
    registrar: Registrar,
    known: dict[str, Any],
) -> None:
    near = await sibling(admin, get_token, registrar)
    assert await match(near, email="mary.jones@example.com") == {
        "result": "exact",
        "client_id": known["id"],
    }
    stranger = await make_registrar(admin, get_token, http, registrations_url)
    for given in (
        {"email": "mary.jones@example.com"},
        {"phone": "020 7946 0958", "last_name": "Jones"},
        {"first_name": "Mary Ann", "last_name": "Jones"},
    ):
        assert await match(stranger, **given) == {"result": "none", "client_id": None}


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({}, "body"),
        ({"first_name": "Mary"}, "body"),
        ({"email": "not-an-address"}, "body.email"),
        ({"phone": "12"}, "body.phone"),
        ({"last_name": "Jones", "postcode": "12345"}, "body.postcode"),
        ({"email": "a@example.com", "date_of_birth": "2000-01-01"}, "body.date_of_birth"),
    ],
)
async def test_malformed_questions_are_named(
    registrar: Registrar, given: dict[str, str], field: str
) -> None:
    status, problem, _ = await registrar.call("POST", "/registrations/match", given)
    assert_problem(status, problem, 422, "validation-error")
    assert field in field_errors(problem), problem


async def test_matching_is_rate_limited_per_application(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    registrations_url: str,
    registrar: Registrar,
) -> None:
    # Burst 20 at 10 per second: 40 at once cannot all pass, and not much more than 20 do.
    answers = await asyncio.gather(
        *(
            registrar.call("POST", "/registrations/match", {"email": f"n{i}@example.com"})
            for i in range(40)
        )
    )
    statuses = [status for status, _, _ in answers]
    limited = [(problem, headers) for status, problem, headers in answers if status == 429]
    assert 20 <= statuses.count(200) <= 25, statuses
    assert len(limited) == 40 - statuses.count(200)
    problem, headers = limited[0]
    assert_problem(429, problem, 429, "rate-limited")
    assert int(headers["Retry-After"]) >= 1
    # Another application's allowance is its own.
    other = await make_registrar(admin, get_token, http, registrations_url)
    await other.call("POST", "/registrations/match", {"email": "x@example.com"}, expect=200)
    # Other calls of the limited application are not held back by the match limit.
    await registrar.call("GET", "/registration-form", expect=200)
    # The bucket refills at 10 per second.
    await asyncio.sleep(0.3)
    await registrar.call("POST", "/registrations/match", {"email": "y@example.com"}, expect=200)
