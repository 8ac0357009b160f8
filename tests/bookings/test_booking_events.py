"""Booking events on the broker: one per change, in the platform envelope, numbered per booking;
and nothing at all for a refused request."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aio_pika
import asyncpg
import pytest
from aio_pika.abc import AbstractQueue

from shared.db import create_pool
from tests.bookings.conftest import Partner
from tests.bookings.test_bookings import assert_problem, eventually, open_desk

ENVELOPE = {"id", "type", "occurred_at", "clinic_id", "sequence", "aggregate", "data"}


class Inbox:
    """Every ``booking.*`` event published on the run's exchange, as it arrives."""

    def __init__(self, queue: AbstractQueue) -> None:
        self.queue = queue
        self.received: list[dict[str, Any]] = []

    async def drain(self) -> None:
        while (message := await self.queue.get(no_ack=True, fail=False)) is not None:
            envelope = json.loads(message.body)
            assert message.routing_key == envelope["type"]
            self.received.append(envelope)

    async def of(self, booking_id: str) -> list[dict[str, Any]]:
        await self.drain()
        return [e for e in self.received if e["data"].get("id") == booking_id]

    async def wait_for(self, booking_id: str, count: int) -> list[dict[str, Any]]:
        async def probe() -> list[dict[str, Any]] | None:
            found = await self.of(booking_id)
            return found if len(found) >= count else None

        return await eventually(probe, f"{count} events of booking {booking_id}")


@pytest.fixture
async def inbox(amqp_url: str, overrides: dict[str, Any]) -> AsyncIterator[Inbox]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            overrides["events_exchange"], aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="booking.*")
        yield Inbox(queue)


@pytest.fixture(scope="module")
async def bookings_outbox(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, schema="bookings", min_size=1, max_size=2)
    yield pool
    await pool.close()


async def outbox_rows(db: asyncpg.Pool, event_type: str, practitioner_id: str) -> list[str]:
    """Ids of the bookings whose ``event_type`` the outbox holds for this practitioner."""
    rows = await db.fetch(
        "SELECT payload FROM outbox WHERE event_type = $1 "
        "AND payload->'data'->>'practitioner_id' = $2 ORDER BY seq",
        event_type,
        practitioner_id,
    )
    return [r["payload"]["data"]["id"] for r in rows]


async def test_each_change_publishes_its_event_in_sequence(partner: Partner, inbox: Inbox) -> None:
    desk = await open_desk(partner)
    _, booking, _ = await partner.call(
        "POST", "/bookings", desk.body(desk.at(9), external_id="pms-77"), expect=201
    )
    bid = booking["id"]
    path = f"/bookings/{bid}"
    _, moved, _ = await partner.call(
        "POST", path + "/reschedule", {"start": desk.at(10).isoformat()}, expect=200
    )
    _, confirmed, _ = await partner.call(
        "POST", path + "/status", {"status": "confirmed"}, expect=200
    )
    _, cancelled, _ = await partner.call(
        "POST", path + "/cancel", {"reason": "Owner away"}, expect=200
    )

    received = await inbox.wait_for(bid, 4)
    assert len(received) == 4, received
    by_sequence = sorted(received, key=lambda e: e["sequence"])
    assert [(e["sequence"], e["type"]) for e in by_sequence] == [
        (1, "booking.created"),
        (2, "booking.rescheduled"),
        (3, "booking.status_changed"),
        (4, "booking.cancelled"),
    ]
    for event, state in zip(by_sequence, (booking, moved, confirmed, cancelled), strict=True):
        assert set(event) == ENVELOPE, event
        uuid.UUID(event["id"])
        assert datetime.fromisoformat(event["occurred_at"]).utcoffset() is not None
        assert event["clinic_id"] == partner.tenant.clinic_id
        data = event["data"]
        assert data["id"] == bid
        # The booking as the API answered it, less the caller's own id.
        assert "external_id" not in data
        assert data == {k: v for k, v in state.items() if k != "external_id"}
    assert len({e["id"] for e in received}) == 4
    assert by_sequence[0]["data"]["start"] == desk.at(9).isoformat()
    assert by_sequence[1]["data"]["start"] == desk.at(10).isoformat()
    assert by_sequence[2]["data"]["status"] == "confirmed"
    assert by_sequence[3]["data"]["status"] == "cancelled"
    assert by_sequence[3]["data"]["cancel_reason"] == "Owner away"
    assert by_sequence[3]["data"]["version"] == 4


async def test_refused_changes_publish_nothing(
    partner: Partner, inbox: Inbox, bookings_outbox: asyncpg.Pool
) -> None:
    desk = await open_desk(partner)
    first = await desk.book(desk.at(9))
    # Refused: the slot is taken (checked, and pushed into the exclusion constraint).
    status, problem = await desk.attempt(desk.at(9))
    assert_problem(status, problem, 409, "slot-unavailable")
    status, problem = await desk.attempt(desk.at(9, 10), pushed=True)
    assert_problem(status, problem, 409, "slot-taken")
    # Refused changes of the booking: an invalid transition and a stale ETag.
    status, problem, _ = await partner.call(
        "POST", f"/bookings/{first['id']}/status", {"status": "completed"}
    )
    assert_problem(status, problem, 409, "invalid-transition")
    status, problem, _ = await partner.call(
        "POST",
        f"/bookings/{first['id']}/cancel",
        {"reason": "x"},
        headers={"If-Match": '"7"'},
    )
    assert_problem(status, problem, 412, "stale-booking")
    # A later booking's event marks the point by which the refused ones would have arrived.
    marker = await desk.book(desk.at(11))
    await inbox.wait_for(marker["id"], 1)
    await asyncio.sleep(0.5)
    await inbox.drain()

    created = [
        e["data"]["id"]
        for e in inbox.received
        if e["type"] == "booking.created" and e["data"]["practitioner_id"] == desk.vet
    ]
    assert sorted(created) == sorted([first["id"], marker["id"]])
    assert [e["sequence"] for e in await inbox.of(first["id"])] == [1]
    assert sorted(await outbox_rows(bookings_outbox, "booking.created", desk.vet)) == sorted(
        [first["id"], marker["id"]]
    )
    for event_type in ("booking.status_changed", "booking.cancelled"):
        assert await outbox_rows(bookings_outbox, event_type, desk.vet) == []
    seq = await bookings_outbox.fetchval(
        "SELECT last_sequence FROM event_sequences WHERE aggregate = $1", f"booking:{first['id']}"
    )
    assert seq == 1
