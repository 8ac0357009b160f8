"""GET /v1/events: the PULL feed a partner reconciles from, over real HTTP and the real bus."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from shared.broker import Broker
from shared.events import Event
from shared.pagination import encode_cursor
from tests.callbacks.conftest import (
    Callbacks,
    Partner,
    PartnerFactory,
    Receiver,
    another_clinic,
    booking_event,
    client_event,
    grant_clinic,
    publish,
)
from tests.conftest import Admin, TokenFactory
from tests.polling import eventually

FEED = "/v1/events"


async def feed(partner: Partner, **params: str) -> dict[str, Any]:
    _, data = await partner.call("GET", FEED, params=params, expect=200)
    return dict(data)


async def feed_all(partner: Partner, **params: str) -> list[dict[str, Any]]:
    """Every item of the feed, following the cursor to the end."""
    items: list[dict[str, Any]] = []
    page = await feed(partner, **params)
    items += page["items"]
    while page["has_more"]:
        page = await feed(partner, **params, after=page["next_cursor"])
        items += page["items"]
    return items


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


async def stored(service: Callbacks, event: Event) -> None:
    """Wait until the service has kept the event (its transaction committed)."""

    async def kept() -> bool:
        async with service.pool.acquire() as conn:
            return bool(
                await conn.fetchval("SELECT true FROM events WHERE event_id = $1", event.id)
            )

    await eventually(kept, f"{event.type} {event.id} kept by the callbacks service")


async def publish_kept(bus: Broker, service: Callbacks, event: Event) -> Event:
    """Publish and wait until kept, so that events published one after the other are kept in
    that order (the intake handles messages concurrently)."""
    await publish(bus, event)
    await stored(service, event)
    return event


async def feed_shows(partner: Partner, event: Event, **params: str) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        items = await feed_all(partner, **params)
        return items if str(event.id) in ids(items) else None

    found: list[dict[str, Any]] = await eventually(check, f"{event.type} {event.id} in the feed")
    return found


# --- access -----------------------------------------------------------------------------------


async def test_the_feed_needs_events_read(partner: Partner, get_token: TokenFactory) -> None:
    manage_only = (await get_token(partner.tenant, scope="webhooks:manage"))["access_token"]
    headers = {"Authorization": f"Bearer {manage_only}"}
    async with partner.http.get(partner.base + FEED, headers=headers) as r:
        body = await r.json(content_type=None)
        assert r.status == 403, body
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert "events:read" in body["detail"]
    async with partner.http.get(partner.base + FEED) as r:
        assert r.status == 401
    assert (await feed(partner))["items"] is not None


# --- content and order --------------------------------------------------------------------------


async def test_booking_events_appear_in_order_with_the_full_envelope(
    partner: Partner, bus: Broker, callbacks: Callbacks
) -> None:
    clinic = partner.tenant.clinic_id
    booking = uuid.uuid4()
    published = [
        await publish_kept(bus, callbacks, booking_event(clinic, booking_id=booking, sequence=1)),
        await publish_kept(
            bus,
            callbacks,
            booking_event(clinic, booking_id=booking, sequence=2, type="booking.rescheduled"),
        ),
        await publish_kept(
            bus,
            callbacks,
            booking_event(clinic, booking_id=booking, sequence=3, type="booking.cancelled"),
        ),
    ]
    items = await feed_shows(partner, published[-1])
    bookings = [i for i in items if i["type"].startswith("booking.")]
    assert bookings == [json.loads(e.model_dump_json()) for e in published]
    first = bookings[0]
    assert set(first) >= {"id", "type", "occurred_at", "clinic_id", "sequence", "aggregate", "data"}
    assert first["clinic_id"] == clinic
    assert first["aggregate"] == f"booking:{booking}"
    assert [b["sequence"] for b in bookings] == [1, 2, 3]
    assert first["data"] == {"id": str(booking), "status": "booked"}


async def test_cursor_paging_and_polling(
    partner: Partner, bus: Broker, callbacks: Callbacks
) -> None:
    clinic = partner.tenant.clinic_id
    events = [await publish_kept(bus, callbacks, booking_event(clinic)) for _ in range(3)]
    await feed_shows(partner, events[-1], types="booking.created")

    page1 = await feed(partner, types="booking.created", limit="2")
    assert ids(page1["items"]) == [str(e.id) for e in events[:2]]
    assert page1["has_more"] is True
    assert page1["next_cursor"]

    page2 = await feed(partner, types="booking.created", limit="2", after=page1["next_cursor"])
    assert ids(page2["items"]) == [str(events[2].id)]
    assert page2["has_more"] is False
    assert page2["next_cursor"] not in (None, page1["next_cursor"])

    # Polling at the end: an empty page keeps the cursor.
    empty = await feed(partner, types="booking.created", limit="2", after=page2["next_cursor"])
    assert empty == {"items": [], "next_cursor": page2["next_cursor"], "has_more": False}

    later = await publish_kept(bus, callbacks, booking_event(clinic))

    async def polled() -> dict[str, Any] | None:
        page = await feed(partner, types="booking.created", after=page2["next_cursor"])
        return page if page["items"] else None

    page3 = await eventually(polled, "the later event after the kept cursor")
    assert ids(page3["items"]) == [str(later.id)]

    # Without a cursor the feed starts from the beginning.
    start = await feed(partner, types="booking.created", limit="1")
    assert ids(start["items"]) == [str(events[0].id)]


async def test_an_empty_feed_has_no_cursor_yet(partner: Partner) -> None:
    page = await feed(partner, types="insurance.updated")
    assert page == {"items": [], "next_cursor": None, "has_more": False}


async def test_the_types_filter(partner: Partner, bus: Broker, callbacks: Callbacks) -> None:
    clinic = partner.tenant.clinic_id
    created = await publish_kept(bus, callbacks, booking_event(clinic))
    cancelled = await publish_kept(
        bus, callbacks, booking_event(clinic, type="booking.cancelled", sequence=2)
    )
    status = await publish_kept(
        bus, callbacks, booking_event(clinic, type="booking.status_changed", sequence=3)
    )
    await feed_shows(partner, status)

    only = await feed_all(partner, types="booking.cancelled")
    assert ids(only) == [str(cancelled.id)]
    two = await feed_all(partner, types="booking.created, booking.status_changed")
    assert ids(two) == [str(created.id), str(status.id)]
    everything = await feed_all(partner)
    assert {str(created.id), str(cancelled.id), str(status.id)} <= set(ids(everything))


@pytest.mark.parametrize(
    "types", ["booking.exploded", "booking.created,booking.exploded", "token.revoked", "", ","]
)
async def test_an_unknown_type_is_refused(partner: Partner, types: str) -> None:
    status, body = await partner.call("GET", FEED, params={"types": types})
    assert status == 422, body
    assert [e["field"] for e in body["errors"]] == ["query.types"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "query.limit"),
        ({"limit": "501"}, "query.limit"),
        ({"limit": "many"}, "query.limit"),
        ({"cursor": "abc"}, "query.cursor"),
    ],
)
async def test_bad_query_parameters(partner: Partner, params: dict[str, str], field: str) -> None:
    status, body = await partner.call("GET", FEED, params=params)
    assert status == 422, body
    assert field in [e["field"] for e in body["errors"]]


@pytest.mark.parametrize(
    "after",
    [
        "not-a-cursor!",
        "bm90IGpzb24",
        encode_cursor("only-one"),
        encode_cursor("x", "y"),
        encode_cursor(2**70, 1),
        encode_cursor(1, 2**70),
        encode_cursor(-1, -1),
    ],
)
async def test_a_malformed_cursor_is_refused_on_after(partner: Partner, after: str) -> None:
    status, body = await partner.call("GET", FEED, params={"after": after})
    assert status == 422, body
    assert [e["field"] for e in body["errors"]] == ["query.after"]


# --- who sees what ----------------------------------------------------------------------------


async def test_another_tenants_events_never_appear(
    partner_for: PartnerFactory, callbacks: Callbacks, bus: Broker
) -> None:
    a = await partner_for(callbacks)
    b = await partner_for(callbacks)
    theirs = await publish_kept(bus, callbacks, booking_event(b.tenant.clinic_id))
    mine = await publish_kept(bus, callbacks, booking_event(a.tenant.clinic_id))

    seen_by_a = await feed_shows(a, mine)
    assert str(theirs.id) not in ids(seen_by_a)
    assert all(i["clinic_id"] in (a.tenant.clinic_id, None) for i in seen_by_a)
    assert all(
        i["data"]["application_id"] == a.tenant.application_id
        for i in seen_by_a
        if i["type"].startswith("grant.")
    )

    seen_by_b = await feed_shows(b, theirs)
    assert str(mine.id) not in ids(seen_by_b)


async def test_a_revoked_grant_hides_the_clinics_events(
    partner: Partner, callbacks: Callbacks, bus: Broker, admin: Admin
) -> None:
    tenant = partner.tenant
    before = await publish_kept(bus, callbacks, booking_event(tenant.clinic_id))
    await feed_shows(partner, before)

    await admin.call("DELETE", f"/v1/admin/grants/{tenant.grant_id}", None, 200)

    async def revoked() -> bool:
        async with callbacks.pool.acquire() as conn:
            return bool(
                await conn.fetchval(
                    "SELECT revoked FROM grants WHERE grant_id = $1", uuid.UUID(tenant.grant_id)
                )
            )

    await eventually(revoked, "the revocation in the callbacks projection")
    after = await publish_kept(bus, callbacks, booking_event(tenant.clinic_id, sequence=2))

    # A marker kept after ``after``: the application's new grant on another clinic.
    clinic = await another_clinic(admin, tenant)
    grant = await grant_clinic(admin, callbacks, tenant, clinic)

    async def marker() -> list[dict[str, Any]] | None:
        items = await feed_all(partner)
        granted = [
            i
            for i in items
            if i["type"] == "grant.created" and i["data"]["grant_id"] == grant["id"]
        ]
        return items if granted else None

    items = await eventually(marker, "the new grant.created in the feed")
    assert str(after.id) not in ids(items)
    assert str(before.id) not in ids(items)
    revocations = [i for i in items if i["type"] == "grant.revoked"]
    assert [r["data"]["grant_id"] for r in revocations] == [tenant.grant_id]


async def test_a_clinic_granted_later_shows_its_events_from_the_grant_on(
    partner: Partner, callbacks: Callbacks, bus: Broker, admin: Admin
) -> None:
    clinic = await another_clinic(admin, partner.tenant)
    earlier = await publish_kept(bus, callbacks, booking_event(clinic))
    await grant_clinic(admin, callbacks, partner.tenant, clinic)
    later = await publish_kept(bus, callbacks, booking_event(clinic))

    # As with webhooks, an event reaches the applications that may see it when it happens.
    items = await feed_shows(partner, later)
    assert str(earlier.id) not in ids(items)


async def test_client_events_need_clients_read(
    partner_for: PartnerFactory, callbacks: Callbacks, bus: Broker
) -> None:
    bookings_only = await partner_for(callbacks, scopes=["bookings:read", "bookings:write"])
    clinic = bookings_only.tenant.clinic_id
    registered = await publish_kept(bus, callbacks, client_event(bookings_only.tenant))
    booked = await publish_kept(bus, callbacks, booking_event(clinic))

    items = await feed_shows(bookings_only, booked)
    assert str(registered.id) not in ids(items)
    assert not [i for i in items if i["type"].startswith(("client.", "patient."))]
    status, body = await bookings_only.call(
        "GET", FEED, params={"types": "client.registered"}, expect=200
    )
    assert body["items"] == []

    with_clients = await partner_for(callbacks)  # granted clients:read as well
    theirs = await publish_kept(bus, callbacks, client_event(with_clients.tenant))
    seen = await feed_shows(with_clients, theirs, types="client.registered")
    assert ids(seen) == [str(theirs.id)]


async def test_the_applications_own_grant_created_is_in_its_feed(
    partner: Partner, admin: Admin
) -> None:
    tenant = partner.tenant

    async def granted() -> list[dict[str, Any]] | None:
        items = await feed_all(partner, types="grant.created")
        return items or None

    items = await eventually(granted, "grant.created in the feed")
    assert len(items) == 1
    grant = items[0]
    assert grant["data"]["grant_id"] == tenant.grant_id
    assert grant["data"]["application_id"] == tenant.application_id
    assert grant["data"]["clinic_id"] == tenant.clinic_id
    assert sorted(grant["data"]["scopes"]) == sorted(tenant.scopes)

    # Another application's grant is its own business.
    other = await admin.tenant()
    assert other.grant_id not in [
        i["data"]["grant_id"] for i in await feed_all(partner, types="grant.created")
    ]


async def test_test_sends_stay_out_of_the_feed(
    partner: Partner, receiver: Receiver, bus: Broker, callbacks: Callbacks
) -> None:
    endpoint = await partner.endpoint(receiver.url("/feed-test"))
    _, result = await partner.call(
        "POST", f"/v1/webhooks/endpoints/{endpoint['id']}/test", expect=200
    )
    marker = await publish_kept(bus, callbacks, booking_event(partner.tenant.clinic_id))
    items = await feed_shows(partner, marker)
    assert result["event_id"] not in ids(items)
    assert all(i["type"] != "webhook.test" for i in items)
