from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from tests.bookings.conftest import Partner

LONDON = ZoneInfo("Europe/London")


async def test_book_a_published_slot(partner: Partner) -> None:
    _, vet, _ = await partner.call("POST", "/practitioners", {"name": "Dr Who"}, expect=201)
    _, svc, _ = await partner.call(
        "POST",
        "/services",
        {"name": "Check-up", "duration_minutes": 30, "practitioner_ids": [vet["id"]]},
        expect=201,
    )
    day = date.today() + timedelta(days=3)
    start = datetime(day.year, day.month, day.day, 9, 0, tzinfo=LONDON)
    await partner.call(
        "PUT",
        f"/practitioners/{vet['id']}/slots/{day.isoformat()}",
        {"slots": [{"start": start.isoformat(), "end": (start + timedelta(hours=2)).isoformat()}]},
        expect=200,
    )
    _, found, _ = await partner.call(
        "GET",
        "/availability",
        params={
            "service_id": svc["id"],
            "from": start.isoformat(),
            "to": (start + timedelta(days=1)).isoformat(),
        },
        expect=200,
    )
    assert [s["start"] for s in found["slots"]][:2] == [
        start.isoformat(),
        (start + timedelta(minutes=15)).isoformat(),
    ]
    body = {
        "practitioner_id": vet["id"],
        "service_id": svc["id"],
        "start": start.isoformat(),
        "prospect": {
            "owner": {"first_name": "Ann", "last_name": "Lee", "email": "ann@example.com"},
            "pet": {"name": "Rex", "species": "dog"},
        },
    }
    _, booking, headers = await partner.call(
        "POST", "/bookings", body, expect=201, headers={"Idempotency-Key": "k1"}
    )
    assert booking["status"] == "booked"
    assert headers["ETag"] == '"1"'
    _, again, headers = await partner.call(
        "POST", "/bookings", body, expect=201, headers={"Idempotency-Key": "k1"}
    )
    assert again["id"] == booking["id"]
    assert headers["Idempotent-Replayed"] == "true"
    status, problem, _ = await partner.call("POST", "/bookings", body)
    assert status == 409, problem
    assert datetime.now(UTC) < datetime.fromisoformat(booking["start"])
