"""Client search: the bookings service's projection of ``client.*`` and ``patient.*`` events, as a
vet-facing search over the clinic group's clients and their pets.

The events are published here the way the registrations service publishes them: the platform
envelope on the run's exchange, keyed by type.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from shared import events
from shared.broker import Broker
from shared.db import create_pool
from shared.events import ClientErased
from tests.bookings.conftest import SCOPES, Partner
from tests.bookings.test_bookings import (
    as_token,
    assert_problem,
    client_data,
    client_found,
    eventually,
    patient_data,
    publish_event,
    search_clients,
)
from tests.conftest import Admin, TokenFactory


@pytest.fixture(scope="module")
async def broker(amqp_url: str, overrides: dict[str, Any]) -> AsyncIterator[Broker]:
    """A publisher on the run's exchange, standing in for the registrations service."""
    b = Broker(amqp_url, overrides["events_exchange"])
    await b.connect_forever()
    yield b
    await b.close()


@pytest.fixture(scope="module")
async def bookings_db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, schema="bookings", min_size=1, max_size=2)
    yield pool
    await pool.close()


def tag() -> str:
    return uuid.uuid4().hex[:10]


async def ids(partner: Partner, q: str) -> set[str]:
    return {c["id"] for c in await search_clients(partner, q)}


async def gone(partner: Partner, q: str, client_id: uuid.UUID) -> None:
    async def probe() -> bool | None:
        return True if str(client_id) not in await ids(partner, q) else None

    await eventually(probe, f"client {client_id} to leave the results for q={q!r}")


async def test_search_by_name_email_and_phone_lists_pets(partner: Partner, broker: Broker) -> None:
    t = partner.tenant
    mark = tag()
    number = f"{random.randrange(1000):03d}"
    owner = client_data(
        group_id=t.group_id,
        clinic_id=t.clinic_id,
        first="Marigold",
        last=f"Quill{mark}",
        email=f"marigold_q.{mark}@example.com",
        phone=f"+44 7700 900{number}",
    )
    cat = patient_data(owner, "Whiskers", "cat")
    dog = patient_data(owner, "Bramble", "dog")
    # The pets' events may come first: they attach once their owner arrives.
    for event_type, data in (
        (events.PATIENT_REGISTERED, cat),
        (events.CLIENT_REGISTERED, owner),
        (events.PATIENT_REGISTERED, dog),
    ):
        await publish_event(broker, event_type, data, clinic_id=t.clinic_id)

    found = await client_found(partner, f"quill{mark}", owner.client_id, pets=2)
    assert found == {
        "id": str(owner.client_id),
        "display_name": f"Marigold Quill{mark}",
        "email": f"marigold_q.{mark}@example.com",
        "phone": f"+44 7700 900{number}",
        "patients": [
            {"id": str(dog.patient_id), "name": "Bramble", "species": "dog"},
            {"id": str(cat.patient_id), "name": "Whiskers", "species": "cat"},
        ],
    }
    for q in (
        f"QUILL{mark}",  # last name, any case
        f"Quill{mark[:4]}",  # part of it
        f"marigold quill{mark}",  # first and last name
        f"MARIGOLD_Q.{mark}@EXAMPLE.COM",  # e-mail, any case, with an underscore
        f"_q.{mark}",
        f"7700900{number}",  # phone digits
        f"7700 900{number}",  # the digits as written
        f"+44 (7700) 900-{number}",
        f"447700900{number}",
    ):
        assert str(owner.client_id) in await ids(partner, q), q
    # Wildcards match themselves, not everything.
    for q in ("%%", "__", "%_%", f"quill{mark}%", f"m_rigold q{mark}"):
        assert await ids(partner, q) == set(), q


async def test_pages_of_results(partner: Partner, broker: Broker) -> None:
    t = partner.tenant
    mark = tag()
    owners = [
        client_data(group_id=t.group_id, clinic_id=t.clinic_id, first=f"P{i}", last=f"Page{mark}")
        for i in range(5)
    ]
    for owner in owners:
        await publish_event(broker, events.CLIENT_REGISTERED, owner, clinic_id=t.clinic_id)
    for owner in owners:
        await client_found(partner, f"page{mark}", owner.client_id)
    seen: list[str] = []
    params = {"q": f"page{mark}", "limit": "2"}
    while True:
        _, page, _ = await partner.call("GET", "/clients", params=params, expect=200)
        seen += [c["id"] for c in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert sorted(seen) == seen
    assert set(seen) == {str(o.client_id) for o in owners}
    assert len(seen) == 5
    status, problem, _ = await partner.call(
        "GET", "/clients", params={"q": f"page{mark}", "cursor": "garbage"}
    )
    assert_problem(status, problem, 422, "validation-error")


async def test_a_client_of_another_group_never_appears(
    partner: Partner,
    broker: Broker,
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    bookings_url: str,
) -> None:
    elsewhere = await admin.tenant(scopes=SCOPES)
    token = await get_token(elsewhere, clinic_id=elsewhere.clinic_id)
    neighbour = Partner(http, bookings_url, elsewhere, token["access_token"])
    mark = tag()
    ours = client_data(
        group_id=partner.tenant.group_id,
        clinic_id=partner.tenant.clinic_id,
        first="Same",
        last=f"Name{mark}",
        email=f"same{mark}@example.com",
    )
    theirs = client_data(
        group_id=elsewhere.group_id,
        clinic_id=elsewhere.clinic_id,
        first="Same",
        last=f"Name{mark}",
        email=f"same{mark}@example.com",
    )
    await publish_event(broker, events.CLIENT_REGISTERED, theirs, clinic_id=elsewhere.clinic_id)
    await publish_event(
        broker, events.PATIENT_REGISTERED, patient_data(theirs, "Nibbles"), clinic_id=None
    )
    await publish_event(broker, events.CLIENT_REGISTERED, ours, clinic_id=partner.tenant.clinic_id)
    await client_found(neighbour, f"name{mark}", theirs.client_id, pets=1)
    await client_found(partner, f"name{mark}", ours.client_id)
    for q in (f"name{mark}", f"same{mark}@example.com", "nibbles", "same"):
        assert str(theirs.client_id) not in await ids(partner, q), q
        assert str(ours.client_id) not in await ids(neighbour, q), q


async def test_client_updated_changes_the_name(partner: Partner, broker: Broker) -> None:
    t = partner.tenant
    mark = tag()
    before = client_data(
        group_id=t.group_id, clinic_id=t.clinic_id, first="Rose", last=f"Maiden{mark}"
    )
    await publish_event(broker, events.CLIENT_REGISTERED, before, clinic_id=t.clinic_id)
    await client_found(partner, f"maiden{mark}", before.client_id)
    after = before.model_copy(
        update={
            "last_name": f"Married{mark}",
            "phone": "01632 960123",
            "changed_at": before.changed_at + timedelta(seconds=5),
        }
    )
    await publish_event(broker, events.CLIENT_UPDATED, after, clinic_id=t.clinic_id)
    found = await client_found(partner, f"married{mark}", before.client_id)
    assert found["display_name"] == f"Rose Married{mark}"
    assert found["phone"] == "01632 960123"
    assert str(before.client_id) not in await ids(partner, f"maiden{mark}")
    # An update older than what is known changes nothing.
    stale = before.model_copy(
        update={"last_name": f"Stale{mark}", "changed_at": before.changed_at - timedelta(hours=1)}
    )
    await publish_event(broker, events.CLIENT_UPDATED, stale, clinic_id=t.clinic_id)
    marker = client_data(group_id=t.group_id, clinic_id=t.clinic_id, first="M", last=f"Mk{mark}")
    await publish_event(broker, events.CLIENT_REGISTERED, marker, clinic_id=t.clinic_id)
    await client_found(partner, f"mk{mark}", marker.client_id)
    await asyncio.sleep(0.3)
    assert await ids(partner, f"stale{mark}") == set()
    assert str(before.client_id) in await ids(partner, f"married{mark}")


async def test_client_erased_leaves_the_search(
    partner: Partner, broker: Broker, bookings_db: asyncpg.Pool
) -> None:
    t = partner.tenant
    mark = tag()
    owner = client_data(
        group_id=t.group_id,
        clinic_id=t.clinic_id,
        first="Gone",
        last=f"Soon{mark}",
        email=f"gone{mark}@example.com",
        phone="07700 900555",
    )
    await publish_event(broker, events.CLIENT_REGISTERED, owner, clinic_id=t.clinic_id)
    await publish_event(
        broker, events.PATIENT_REGISTERED, patient_data(owner, f"Pet{mark}"), clinic_id=None
    )
    await client_found(partner, f"soon{mark}", owner.client_id, pets=1)
    erased = ClientErased(
        client_id=owner.client_id, group_id=owner.group_id, erased_at=datetime.now(UTC)
    )
    await publish_event(broker, events.CLIENT_ERASED, erased, clinic_id=t.clinic_id)
    await gone(partner, f"soon{mark}", owner.client_id)
    for q in (f"gone{mark}@example.com", "gone soon", f"pet{mark}"):
        assert str(owner.client_id) not in await ids(partner, q), q
    row = await bookings_db.fetchrow(
        "SELECT display_name, email, phone, erased FROM clients WHERE id = $1", owner.client_id
    )
    assert row is not None
    assert dict(row) == {"display_name": "", "email": None, "phone": None, "erased": True}
    names = await bookings_db.fetch(
        "SELECT name FROM patients WHERE client_id = $1", owner.client_id
    )
    assert [r["name"] for r in names] == [""]
    # A later update does not bring an erased client back.
    again = owner.model_copy(update={"changed_at": datetime.now(UTC) + timedelta(minutes=1)})
    await publish_event(broker, events.CLIENT_UPDATED, again, clinic_id=t.clinic_id)
    marker = client_data(group_id=t.group_id, clinic_id=t.clinic_id, first="M", last=f"Mk{mark}")
    await publish_event(broker, events.CLIENT_REGISTERED, marker, clinic_id=t.clinic_id)
    await client_found(partner, f"mk{mark}", marker.client_id)
    await asyncio.sleep(0.3)
    assert str(owner.client_id) not in await ids(partner, f"soon{mark}")


async def test_a_redelivered_event_takes_effect_once(
    partner: Partner, broker: Broker, bookings_db: asyncpg.Pool
) -> None:
    t = partner.tenant
    mark = tag()
    first = client_data(
        group_id=t.group_id, clinic_id=t.clinic_id, first="Once", last=f"Alpha{mark}"
    )
    event = await publish_event(broker, events.CLIENT_REGISTERED, first, clinic_id=t.clinic_id)
    await client_found(partner, f"alpha{mark}", first.client_id)
    # The same event id again, even carrying newer content, is recognised and skipped.
    newer = first.model_copy(
        update={"last_name": f"Omega{mark}", "changed_at": first.changed_at + timedelta(hours=1)}
    )
    for _ in range(2):
        await publish_event(
            broker, events.CLIENT_UPDATED, newer, clinic_id=t.clinic_id, event_id=event.id
        )
    marker = client_data(group_id=t.group_id, clinic_id=t.clinic_id, first="M", last=f"Mk{mark}")
    await publish_event(broker, events.CLIENT_REGISTERED, marker, clinic_id=t.clinic_id)
    await client_found(partner, f"mk{mark}", marker.client_id)
    await asyncio.sleep(0.3)
    assert await ids(partner, f"omega{mark}") == set()
    assert str(first.client_id) in await ids(partner, f"alpha{mark}")
    handled = await bookings_db.fetchval(
        "SELECT count(*) FROM processed_events WHERE event_id = $1", event.id
    )
    assert handled == 1
    # A fresh event id with the same content does take effect.
    await publish_event(broker, events.CLIENT_UPDATED, newer, clinic_id=t.clinic_id)
    await client_found(partner, f"omega{mark}", first.client_id)


@pytest.mark.parametrize("q", [None, "", "a", " b ", "x" * 101])
async def test_q_must_be_2_to_100_characters(partner: Partner, q: str | None) -> None:
    params = {"q": q} if q is not None else None
    status, problem, _ = await partner.call("GET", "/clients", params=params)
    assert_problem(status, problem, 422, "validation-error")
    assert {e["field"] for e in problem["errors"]} == {"query.q"}


async def test_search_needs_clients_read(
    partner: Partner, admin: Admin, get_token: TokenFactory
) -> None:
    narrowed = await get_token(
        partner.tenant, clinic_id=partner.tenant.clinic_id, scope="bookings:read bookings:write"
    )
    without_grant = await admin.tenant(scopes=["bookings:read", "bookings:write"])
    token = await get_token(without_grant, clinic_id=without_grant.clinic_id)
    for reader in (
        as_token(partner, narrowed["access_token"]),
        Partner(partner.http, partner.base, without_grant, token["access_token"]),
    ):
        status, problem, headers = await reader.call("GET", "/clients", params={"q": "ann"})
        assert_problem(status, problem, 403, "insufficient-scope")
        assert 'scope="clients:read"' in headers["WWW-Authenticate"]
    await partner.call("GET", "/clients", params={"q": "ann"}, expect=200)
