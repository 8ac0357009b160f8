"""Events on the bus through the outbox — ``client.registered``, ``patient.registered``,
``client.updated``, ``patient.updated``, ``client.erased`` with one sequence per client — and the
bookings service's client search following them."""

from __future__ import annotations

from typing import Any

from shared import events
from shared.events import ClientChanged, ClientErased, Event, PatientChanged, event_data
from tests.registrations.conftest import (
    Bus,
    Registrar,
    eventually,
    pet,
    registration,
    tag,
)


def by_sequence(seen: list[Event]) -> list[Event]:
    return sorted(seen, key=lambda e: e.sequence)


async def test_every_change_is_an_event_in_client_order(registrar: Registrar, bus: Bus) -> None:
    _, client, _ = await registrar.register(
        registration(
            email="events@example.com",
            title="Mr",
            pets=[pet("Rex", "dog", breed="Pug"), pet("Tom", "cat")],
        )
    )
    cid = client["id"]
    rex, tom = client["patients"]
    path = f"/registrations/clients/{cid}"
    await registrar.call("PATCH", path, {"last_name": "Leeson"}, expect=200)
    await registrar.call("PATCH", f"/patients/{rex['id']}", {"neutered": True}, expect=200)
    _, kit, _ = await registrar.call("POST", path + "/patients", pet("Kit", "rabbit"), expect=201)
    # A refused duplicate leaves no trace on the bus.
    status, _, _ = await registrar.register(registration(email="EVENTS@example.com"), expect=None)
    assert status == 409

    expected = [
        events.CLIENT_REGISTERED,
        events.PATIENT_REGISTERED,
        events.PATIENT_REGISTERED,
        events.CLIENT_UPDATED,
        events.PATIENT_UPDATED,
        events.PATIENT_REGISTERED,
    ]
    seen = by_sequence(await bus.wait_for(cid, expected))
    assert [e.sequence for e in seen] == list(range(1, 7))
    assert [e.type for e in seen] == expected
    assert all(str(e.clinic_id) == registrar.clinic_id for e in seen)

    registered = event_data(seen[0], ClientChanged)
    assert str(registered.client_id) == cid
    assert str(registered.group_id) == registrar.group_id
    assert str(registered.clinic_id) == registrar.clinic_id
    assert (registered.title, registered.first_name, registered.last_name) == ("Mr", "Ann", "Lee")
    assert (registered.email, registered.phone) == ("events@example.com", "+442079460958")
    pets = [event_data(e, PatientChanged) for e in seen[1:3]]
    assert {(str(p.patient_id), p.name, p.species, p.breed) for p in pets} == {
        (rex["id"], "Rex", "dog", "Pug"),
        (tom["id"], "Tom", "cat", None),
    }
    assert all(str(p.group_id) == registrar.group_id for p in pets)
    assert event_data(seen[3], ClientChanged).last_name == "Leeson"
    assert str(event_data(seen[4], PatientChanged).patient_id) == rex["id"]
    added = event_data(seen[5], PatientChanged)
    assert (str(added.patient_id), added.name, added.species) == (kit["id"], "Kit", "rabbit")
    # Each event once: ids are unique, and no second client.registered came from the refusal.
    assert len({e.id for e in bus.about(cid)}) == len(bus.about(cid)) == 6

    await registrar.call("POST", path + "/erase", expect=200)
    seen = by_sequence(await bus.wait_for(cid, [*expected, events.CLIENT_ERASED]))
    erased = event_data(seen[-1], ClientErased)
    assert seen[-1].sequence == 7
    assert (str(erased.client_id), str(erased.group_id)) == (cid, registrar.group_id)


async def search(registrar: Registrar, base: str, q: str) -> list[dict[str, Any]]:
    _, page, _ = await registrar.call("GET", "/clients", params={"q": q}, expect=200, base=base)
    return list(page["items"])


async def test_bookings_client_search_sees_new_changed_and_erased_clients(
    registrar: Registrar, client_search_url: str
) -> None:
    mark = tag()
    _, client, _ = await registrar.register(
        registration(
            first="Petra",
            last=f"Search{mark}",
            email=f"petra.{mark}@example.com",
            phone="020 7946 0321",
            pets=[pet("Bramble", "dog")],
        )
    )
    cid = client["id"]

    async def found(q: str, check: str) -> dict[str, Any] | None:
        for item in await search(registrar, client_search_url, q):
            if item["id"] == cid and check in str(item):
                return item
        return None

    async def seen_with(q: str, check: str) -> dict[str, Any]:
        return await eventually(lambda: found(q, check), f"client {cid} for q={q!r}")

    item = await seen_with(f"search{mark}", "Bramble")
    assert item == {
        "id": cid,
        "display_name": f"Petra Search{mark}",
        "email": f"petra.{mark}@example.com",
        "phone": "+442079460321",
        "patients": [{"id": client["patients"][0]["id"], "name": "Bramble", "species": "dog"}],
    }
    assert await found("2079460321", "Bramble") is not None

    await registrar.call(
        "PATCH", f"/registrations/clients/{cid}", {"last_name": f"Moved{mark}"}, expect=200
    )
    await seen_with(f"moved{mark}", f"Petra Moved{mark}")

    await registrar.call("POST", f"/registrations/clients/{cid}/erase", expect=200)

    async def forgotten() -> bool | None:
        return True if await found(f"moved{mark}", "") is None else None

    await eventually(forgotten, f"client {cid} to leave the search")
