"""Schedules and availability over real HTTP: weekly working hours, published days, breaks, the
availability search (windows, slot grid, lead time, daylight-saving days) and the outbox events
that schedule changes write."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest
from multidict import CIMultiDict

from shared.errors import PROBLEM_BASE
from tests.bookings.conftest import SCOPES, Partner
from tests.conftest import Admin, TokenFactory

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
MONDAY, TUESDAY, SUNDAY = 0, 1, 6
SINCE = "2026-01-01"
PROSPECT = {
    "owner": {"first_name": "Ann", "last_name": "Lee", "email": "ann@example.com"},
    "pet": {"name": "Rex", "species": "dog"},
}

Call = tuple[int, Any, CIMultiDict[str]]


# --- dates and times ------------------------------------------------------------------------------


def upcoming(weekday: int, *, weeks: int = 0) -> date:
    """The first ``weekday`` at least three days ahead in London, plus ``weeks`` weeks."""
    first = datetime.now(LONDON).date() + timedelta(days=3)
    return first + timedelta(days=(weekday - first.weekday()) % 7, weeks=weeks)


def upcoming_in(month: int) -> date:
    """The first day at least three days ahead that falls in ``month``."""
    day = datetime.now(LONDON).date() + timedelta(days=3)
    while day.month != month:
        day += timedelta(days=1)
    return day


def at(day: date, wall: str, tz: ZoneInfo = LONDON) -> datetime:
    return datetime.combine(day, time.fromisoformat(wall), tzinfo=tz)


def whole_days(first: date, days: int = 1, tz: ZoneInfo = LONDON) -> tuple[datetime, datetime]:
    """From local midnight of ``first`` to local midnight ``days`` later."""
    return at(first, "00:00", tz), at(first + timedelta(days=days), "00:00", tz)


def walls(day: date, first: str, last: str, offset: str) -> list[str]:
    """RFC 3339 strings every 15 minutes of wall clock from ``first`` to ``last`` inclusive."""
    moment = datetime.combine(day, time.fromisoformat(first))
    stop = datetime.combine(day, time.fromisoformat(last))
    found = []
    while moment <= stop:
        found.append(moment.isoformat() + offset)
        moment += timedelta(minutes=15)
    return found


def hhmm(slots: list[dict[str, Any]]) -> list[str]:
    """The local wall times of the starts, read as the API wrote them."""
    return [datetime.fromisoformat(s["start"]).strftime("%H:%M") for s in slots]


def on(day: date, slots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in slots if datetime.fromisoformat(s["start"]).date() == day]


def assert_clinic_offsets(slots: list[dict[str, Any]], tz: ZoneInfo) -> None:
    """Every start and end carries the clinic's own offset at that instant, never ``Z``."""
    for slot in slots:
        for key in ("start", "end"):
            text = slot[key]
            assert not text.endswith("Z"), text
            assert text[-6] in "+-", text
            assert text[-3] == ":", text
            moment = datetime.fromisoformat(text)
            assert moment.utcoffset() == moment.astimezone(tz).utcoffset(), text


# --- API helpers ----------------------------------------------------------------------------------


def rule(
    weekday: int,
    start: str,
    end: str,
    effective_from: str | date = SINCE,
    effective_to: str | date | None = None,
) -> dict[str, Any]:
    return {
        "weekday": weekday,
        "start": start,
        "end": end,
        "effective_from": str(effective_from),
        "effective_to": None if effective_to is None else str(effective_to),
    }


def span(start: datetime, end: datetime) -> dict[str, str]:
    return {"start": start.isoformat(), "end": end.isoformat()}


def problem(call: Call, status: int, slug: str, *fields: str) -> list[str]:
    """Assert a problem+json answer; return the fields its ``errors`` name."""
    got, body, headers = call
    assert got == status, body
    assert headers["Content-Type"].startswith("application/problem+json"), headers
    assert body["type"] == PROBLEM_BASE + slug, body
    assert body["status"] == status
    named = [e["field"] for e in body.get("errors", [])]
    for field in fields:
        assert field in named, (field, body)
    return named


async def new_practitioner(p: Partner, name: str = "Dr Vet") -> str:
    _, body, _ = await p.call("POST", "/practitioners", {"name": name}, expect=201)
    return str(body["id"])


async def new_service(p: Partner, practitioner_ids: list[str], minutes: int = 30) -> str:
    _, body, _ = await p.call(
        "POST",
        "/services",
        {"name": "Check-up", "duration_minutes": minutes, "practitioner_ids": practitioner_ids},
        expect=201,
    )
    return str(body["id"])


async def vet_and_service(p: Partner, minutes: int = 30) -> tuple[str, str]:
    vet = await new_practitioner(p)
    return vet, await new_service(p, [vet], minutes)


async def put_hours(p: Partner, vet: str, *rules: dict[str, Any]) -> dict[str, Any]:
    _, body, _ = await p.call(
        "PUT", f"/practitioners/{vet}/working-hours", {"rules": list(rules)}, expect=200
    )
    return dict(body)


async def publish(p: Partner, vet: str, day: date, *spans: dict[str, str]) -> Call:
    return await p.call(
        "PUT", f"/practitioners/{vet}/slots/{day.isoformat()}", {"slots": list(spans)}
    )


def window(
    service_id: str, start: datetime, end: datetime, practitioner_id: str | None = None
) -> dict[str, str]:
    params = {"service_id": service_id, "from": start.isoformat(), "to": end.isoformat()}
    if practitioner_id is not None:
        params["practitioner_id"] = practitioner_id
    return params


async def available(
    p: Partner,
    service_id: str,
    start: datetime,
    end: datetime,
    practitioner_id: str | None = None,
) -> list[dict[str, Any]]:
    _, body, _ = await p.call(
        "GET", "/availability", params=window(service_id, start, end, practitioner_id), expect=200
    )
    assert body["service_id"] == service_id
    return list(body["slots"])


async def book(p: Partner, vet: str, service_id: str, start: datetime) -> Call:
    body = {
        "practitioner_id": vet,
        "service_id": service_id,
        "start": start.isoformat(),
        "prospect": PROSPECT,
    }
    return await p.call("POST", "/bookings", body)


async def settings(p: Partner, **changes: int) -> dict[str, Any]:
    _, body, _ = await p.call("PATCH", "/schedules/settings", changes, expect=200)
    return dict(body)


async def clinic_partner(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    bookings_url: str,
    time_zone: str,
) -> Partner:
    """A partner for a fresh clinic in ``time_zone``, built as the ``partner`` fixture is."""
    tenant = await admin.tenant(scopes=SCOPES, time_zone=time_zone)
    token = await get_token(tenant, clinic_id=tenant.clinic_id)
    return Partner(http, bookings_url, tenant, token["access_token"])


@pytest.fixture
async def new_york(
    admin: Admin, get_token: TokenFactory, http: aiohttp.ClientSession, bookings_url: str
) -> Partner:
    return await clinic_partner(admin, get_token, http, bookings_url, "America/New_York")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


async def outbox(db: asyncpg.Connection, p: Partner, *types: str) -> list[dict[str, Any]]:
    """This clinic's outbox events of the given types, oldest first."""
    rows = await db.fetch(
        """
        SELECT payload::text AS payload FROM bookings.outbox
        WHERE payload->>'clinic_id' = $1 AND event_type = ANY($2::text[])
        ORDER BY seq
        """,
        p.tenant.clinic_id,
        list(types),
    )
    return [json.loads(r["payload"]) for r in rows]


# --- working hours --------------------------------------------------------------------------------


async def test_working_hours_put_replaces_the_whole_set(partner: Partner) -> None:
    vet = await new_practitioner(partner)
    path = f"/practitioners/{vet}/working-hours"
    _, empty, _ = await partner.call("GET", path, expect=200)
    assert empty == {"practitioner_id": vet, "rules": []}

    first = [
        rule(MONDAY, "09:00", "12:00"),
        rule(MONDAY, "13:00", "17:30", "2027-01-01", "2027-06-30"),
        rule(3, "08:15", "11:45"),
    ]
    put = await put_hours(partner, vet, *first)
    _, got, _ = await partner.call("GET", path, expect=200)
    assert got == put
    assert got["practitioner_id"] == vet
    assert [(r["weekday"], r["start"], r["end"]) for r in got["rules"]] == [
        (0, "09:00:00", "12:00:00"),
        (0, "13:00:00", "17:30:00"),
        (3, "08:15:00", "11:45:00"),
    ]
    assert [(r["effective_from"], r["effective_to"]) for r in got["rules"]] == [
        (SINCE, None),
        ("2027-01-01", "2027-06-30"),
        (SINCE, None),
    ]

    await put_hours(partner, vet, rule(4, "10:00", "11:00"))
    _, got, _ = await partner.call("GET", path, expect=200)
    assert [(r["weekday"], r["start"], r["end"]) for r in got["rules"]] == [
        (4, "10:00:00", "11:00:00")
    ]

    await put_hours(partner, vet)
    _, got, _ = await partner.call("GET", path, expect=200)
    assert got["rules"] == []


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (rule(MONDAY, "12:00", "09:00"), "body.rules.1.end"),
        (rule(MONDAY, "09:00", "09:00"), "body.rules.1.end"),
        (rule(7, "09:00", "12:00"), "body.rules.1.weekday"),
        (rule(-1, "09:00", "12:00"), "body.rules.1.weekday"),
        (rule(MONDAY, "09:00", "12:00", "2027-02-01", "2027-01-31"), "body.rules.1.effective_to"),
        (rule(MONDAY, "09:00+01:00", "12:00"), "body.rules.1.start"),
        (rule(MONDAY, "09:00", "12:00Z"), "body.rules.1.end"),
        (rule(MONDAY, "25:00", "26:00"), "body.rules.1.start"),
        (rule(MONDAY, "09:00", "12:00", "2027-02-30"), "body.rules.1.effective_from"),
        ({**rule(MONDAY, "09:00", "12:00"), "colour": "red"}, "body.rules.1.colour"),
    ],
    ids=[
        "end-before-start",
        "end-equals-start",
        "weekday-7",
        "weekday-negative",
        "effective-to-before-from",
        "start-with-offset",
        "end-with-offset",
        "hour-25",
        "no-such-date",
        "unknown-member",
    ],
)
async def test_invalid_working_hours_are_refused_and_change_nothing(
    partner: Partner, bad: dict[str, Any], field: str
) -> None:
    vet = await new_practitioner(partner)
    before = await put_hours(partner, vet, rule(TUESDAY, "09:00", "10:00"))
    path = f"/practitioners/{vet}/working-hours"
    call = await partner.call("PUT", path, {"rules": [rule(MONDAY, "09:00", "12:00"), bad]})
    named = problem(call, 422, "validation-error")
    # A rule-level check (order, offsets) names the rule; a member's own check names the member.
    assert any(n == field or n.startswith(field + ".") for n in named), named
    assert all(n.startswith("body.rules.1") for n in named), named
    _, after, _ = await partner.call("GET", path, expect=200)
    assert after == before


async def test_working_hours_of_unknown_practitioner(
    partner: Partner,
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    bookings_url: str,
) -> None:
    body = {"rules": [rule(MONDAY, "09:00", "12:00")]}
    missing = f"/practitioners/{uuid.uuid4()}/working-hours"
    problem(await partner.call("PUT", missing, body), 404, "not-found")
    problem(await partner.call("GET", missing), 404, "not-found")
    bad_id = "/practitioners/not-a-uuid/working-hours"
    problem(await partner.call("GET", bad_id), 422, "validation-error", "path.practitioner_id")

    # Another clinic's practitioner is as unknown as one that never existed.
    other = await clinic_partner(admin, get_token, http, bookings_url, "Europe/London")
    theirs = await new_practitioner(other)
    path = f"/practitioners/{theirs}/working-hours"
    problem(await partner.call("PUT", path, body), 404, "not-found")
    problem(await partner.call("GET", path), 404, "not-found")
    _, untouched, _ = await other.call("GET", path, expect=200)
    assert untouched["rules"] == []


async def test_availability_follows_working_hours(partner: Partner) -> None:
    vet, svc = await vet_and_service(partner)
    await put_hours(partner, vet, rule(MONDAY, "09:00", "12:00"))
    monday = upcoming(MONDAY)
    tuesday = monday + timedelta(days=1)

    slots = await available(partner, svc, *whole_days(monday, 2))
    assert on(tuesday, slots) == []
    assert hhmm(slots) == [
        "09:00", "09:15", "09:30", "09:45", "10:00", "10:15",
        "10:30", "10:45", "11:00", "11:15", "11:30",
    ]  # fmt: skip
    assert all(datetime.fromisoformat(s["start"]).date() == monday for s in slots)
    assert {s["practitioner_id"] for s in slots} == {vet}
    for slot in slots:
        start, end = datetime.fromisoformat(slot["start"]), datetime.fromisoformat(slot["end"])
        assert end - start == timedelta(minutes=30)
    assert slots[0]["start"] == at(monday, "09:00").isoformat()
    assert slots[-1]["end"] == at(monday, "12:00").isoformat()
    assert_clinic_offsets(slots, LONDON)

    only_tuesday = await available(partner, svc, *whole_days(tuesday))
    assert only_tuesday == []


async def test_effective_dates_of_working_hours(partner: Partner) -> None:
    vet, svc = await vet_and_service(partner)
    m1, m2, m3, m4 = (upcoming(MONDAY, weeks=w) for w in range(4))
    await put_hours(
        partner,
        vet,
        rule(MONDAY, "14:00", "15:00", SINCE, m1),  # ends with the first Monday, inclusive
        rule(MONDAY, "09:00", "10:00", m2, m3),  # the second and third Mondays only
        rule(MONDAY, "16:00", "17:00", m4),  # from the fourth Monday, open-ended
    )
    slots = await available(partner, svc, *whole_days(m1, 22))
    assert hhmm(on(m1, slots)) == ["14:00", "14:15", "14:30"]
    assert hhmm(on(m2, slots)) == ["09:00", "09:15", "09:30"]
    assert hhmm(on(m3, slots)) == ["09:00", "09:15", "09:30"]
    assert hhmm(on(m4, slots)) == ["16:00", "16:15", "16:30"]
    assert len(slots) == 12


# --- published days -------------------------------------------------------------------------------


async def test_published_day_overrides_working_hours_for_that_day_only(partner: Partner) -> None:
    vet, svc = await vet_and_service(partner)
    await put_hours(partner, vet, rule(MONDAY, "09:00", "12:00"))
    m1, m2 = upcoming(MONDAY), upcoming(MONDAY, weeks=1)
    wednesday = m1 + timedelta(days=2)

    _, read, _ = await publish(partner, vet, m1, span(at(m1, "14:00"), at(m1, "15:00")))
    assert read["practitioner_id"] == vet
    assert read["date"] == m1.isoformat()
    # A published day may open a day the weekly hours leave closed.
    await publish(partner, vet, wednesday, span(at(wednesday, "08:00"), at(wednesday, "08:30")))

    slots = await available(partner, svc, *whole_days(m1, 8))
    assert hhmm(on(m1, slots)) == ["14:00", "14:15", "14:30"]
    assert hhmm(on(wednesday, slots)) == ["08:00"]
    assert hhmm(on(m2, slots)) == [
        "09:00", "09:15", "09:30", "09:45", "10:00", "10:15",
        "10:30", "10:45", "11:00", "11:15", "11:30",
    ]  # fmt: skip
    assert len(slots) == 15

    # Publishing the day again replaces its slots rather than adding to them.
    await publish(
        partner,
        vet,
        m1,
        span(at(m1, "07:00"), at(m1, "07:30")),
        span(at(m1, "16:00"), at(m1, "17:00")),
    )
    slots = await available(partner, svc, *whole_days(m1))
    assert hhmm(slots) == ["07:00", "16:00", "16:15", "16:30"]


async def test_empty_published_day_closes_it(partner: Partner) -> None:
    vet, svc = await vet_and_service(partner)
    await put_hours(partner, vet, rule(MONDAY, "09:00", "12:00"))
    m1, m2 = upcoming(MONDAY), upcoming(MONDAY, weeks=1)

    status, read, _ = await publish(partner, vet, m1)
    assert status == 200, read
    assert read["slots"] == []
    _, got, _ = await partner.call(
        "GET", f"/practitioners/{vet}/slots/{m1.isoformat()}", expect=200
    )
    assert got["slots"] == []
    assert got["date"] == m1.isoformat()

    slots = await available(partner, svc, *whole_days(m1, 8))
    assert on(m1, slots) == []
    assert len(on(m2, slots)) == 11


async def test_replacing_a_day_keeps_its_bookings(partner: Partner) -> None:
    vet, svc = await vet_and_service(partner)
    day = upcoming(TUESDAY)
    morning = span(at(day, "09:00"), at(day, "12:00"))
    await publish(partner, vet, day, morning)
    status, booking, _ = await book(partner, vet, svc, at(day, "10:00"))
    assert status == 201, booking

    # The new slots leave the booked time out; the booking is not touched.
    status, _, _ = await publish(partner, vet, day, span(at(day, "13:00"), at(day, "15:00")))
    assert status == 200
    _, kept, _ = await partner.call("GET", f"/bookings/{booking['id']}", expect=200)
    assert kept["status"] == "booked"
    assert kept["start"] == at(day, "10:00").isoformat()
    assert kept["end"] == at(day, "10:30").isoformat()
    assert hhmm(await available(partner, svc, *whole_days(day))) == [
        "13:00", "13:15", "13:30", "13:45", "14:00", "14:15", "14:30",
    ]  # fmt: skip

    # Reopening the morning shows the booking still holds its time.
    await publish(partner, vet, day, morning)
    assert hhmm(await available(partner, svc, *whole_days(day))) == [
        "09:00", "09:15", "09:30", "10:30", "10:45", "11:00", "11:15", "11:30",
    ]  # fmt: skip
    for start in ("10:00", "09:45", "10:15"):
        status, refused, _ = await book(partner, vet, svc, at(day, start))
        assert status == 409, refused


@pytest.mark.parametrize(
    ("slots", "field"),
    [
        ((("10:00", 0), ("11:00", 0)), None),
        ((("23:30", 0), ("00:30", 1)), "body.slots.0"),
        ((("10:00", 0), ("11:00", 0), ("23:30", 0), ("00:30", 1)), "body.slots.1"),
        ((("00:30", 1), ("01:00", 1), ("10:00", 0), ("11:00", 0)), "body.slots.0"),
        ((("23:00", -1), ("23:30", -1)), "body.slots.0"),
        ((("10:00", 0), ("11:00", 0), ("10:30", 0), ("11:30", 0)), "body.slots.1"),
        ((("10:30", 0), ("11:30", 0), ("10:00", 0), ("11:00", 0)), "body.slots.0"),
        ((("10:00", 0), ("12:00", 0), ("10:30", 0), ("11:00", 0)), "body.slots.1"),
    ],
    ids=[
        "control",
        "crosses-midnight",
        "second-crosses-midnight",
        "next-day-given-first",
        "previous-day",
        "overlap",
        "overlap-given-first",
        "nested",
    ],
)
async def test_slots_must_lie_in_the_day_and_not_overlap(
    partner: Partner, slots: tuple[tuple[str, int], ...], field: str | None
) -> None:
    """``slots`` are (wall time, day offset) pairs, two per slot, in the order sent."""
    vet = await new_practitioner(partner)
    day = upcoming(MONDAY)
    moments = [at(day + timedelta(days=shift), wall) for wall, shift in slots]
    body = [span(moments[i], moments[i + 1]) for i in range(0, len(moments), 2)]
    call = await publish(partner, vet, day, *body)
    path = f"/practitioners/{vet}/slots/{day.isoformat()}"
    if field is None:
        assert call[0] == 200, call[1]
        return
    named = problem(call, 422, "validation-error", field)
    assert named == [field]
    # Nothing was published.
    problem(await partner.call("GET", path), 404, "not-found")


async def test_every_slot_inside_a_long_one_is_named(partner: Partner) -> None:
    vet = await new_practitioner(partner)
    day = upcoming(MONDAY)
    call = await publish(
        partner,
        vet,
        day,
        span(at(day, "11:30"), at(day, "11:45")),
        span(at(day, "10:00"), at(day, "12:00")),
        span(at(day, "10:30"), at(day, "11:00")),
    )
    named = problem(call, 422, "validation-error")
    assert sorted(named) == ["body.slots.0", "body.slots.2"]


async def test_touching_slots_are_accepted_and_read_back_sorted(partner: Partner) -> None:
    vet, svc = await vet_and_service(partner)
    day = upcoming(MONDAY)
    _, read, _ = await publish(
        partner,
        vet,
        day,
        span(at(day, "11:00"), at(day, "12:00")),
        span(at(day, "10:00"), at(day, "11:00")),
    )
    expected = [
        span(at(day, "10:00"), at(day, "11:00")),
        span(at(day, "11:00"), at(day, "12:00")),
    ]
    assert read["slots"] == expected
    _, got, _ = await partner.call("GET", f"/practitioners/{vet}/slots/{day}", expect=200)
    assert got["slots"] == expected
    # Touching slots are one stretch of open time: a start may run across the seam.
    assert "10:45" in hhmm(await available(partner, svc, *whole_days(day)))


@pytest.mark.parametrize(
    ("slot", "field"),
    [
        (
            {"start": "2027-01-04T10:00:00", "end": "2027-01-04T11:00:00+00:00"},
            "body.slots.0.start",
        ),
        ({"start": "2027-01-04T10:00:00+00:00", "end": "noon"}, "body.slots.0.end"),
        (
            {"start": "2027-01-04T11:00:00+00:00", "end": "2027-01-04T10:00:00+00:00"},
            "body.slots.0.end",
        ),
        ({"start": "2027-01-04T10:00:00+00:00"}, "body.slots.0.end"),
    ],
    ids=["naive-start", "not-a-time", "end-before-start", "no-end"],
)
async def test_malformed_slots_are_refused(
    partner: Partner, slot: dict[str, str], field: str
) -> None:
    vet = await new_practitioner(partner)
    call = await partner.call("PUT", f"/practitioners/{vet}/slots/2027-01-04", {"slots": [slot]})
    problem(call, 422, "validation-error", field)


async def test_published_slots_read_back_with_the_clinic_offset(partner: Partner) -> None:
    vet = await new_practitioner(partner)
    summer, winter = upcoming_in(7), upcoming_in(1)
    # Given in UTC; answered in the clinic's zone: British Summer Time is +01:00.
    given = {"start": f"{summer}T08:00:00Z", "end": f"{summer}T10:30:00Z"}
    status, read, _ = await publish(partner, vet, summer, given)
    assert status == 200, read
    want = {"start": f"{summer}T09:00:00+01:00", "end": f"{summer}T11:30:00+01:00"}
    assert read["slots"] == [want]
    _, got, _ = await partner.call("GET", f"/practitioners/{vet}/slots/{summer}", expect=200)
    assert got["slots"] == [want]
    assert got["published_at"] == read["published_at"]

    given = {"start": f"{winter}T09:00:00-05:00", "end": f"{winter}T10:00:00-05:00"}
    await publish(partner, vet, winter, given)
    _, got, _ = await partner.call("GET", f"/practitioners/{vet}/slots/{winter}", expect=200)
    assert got["slots"] == [
        {"start": f"{winter}T14:00:00+00:00", "end": f"{winter}T15:00:00+00:00"}
    ]

    unpublished = summer + timedelta(days=1)
    path = f"/practitioners/{vet}/slots/{unpublished}"
    problem(await partner.call("GET", path), 404, "not-found")
    missing = f"/practitioners/{uuid.uuid4()}/slots/{summer}"
    problem(await partner.call("GET", missing), 404, "not-found")
    problem(await partner.call("PUT", missing, {"slots": []}), 404, "not-found")


async def test_published_25_hour_day_spans_both_midnights(partner: Partner) -> None:
    vet, svc = await vet_and_service(partner)
    day = date(2027, 10, 31)
    whole = {"start": "2027-10-31T00:00:00+01:00", "end": "2027-11-01T00:00:00+00:00"}
    status, read, _ = await publish(partner, vet, day, whole)
    assert status == 200, read
    assert read["slots"] == [whole]
    slots = await available(partner, svc, *whole_days(day))
    assert len(slots) == 25 * 4 - 1  # every quarter of 25 hours, bar the last half hour's one
    assert_clinic_offsets(slots, LONDON)

    late = {"start": "2027-10-31T23:00:00+00:00", "end": "2027-11-01T00:15:00+00:00"}
    problem(await publish(partner, vet, day, late), 422, "validation-error", "body.slots.0")
    early = {"start": "2027-10-30T23:30:00+01:00", "end": "2027-10-31T01:00:00+01:00"}
    problem(await publish(partner, vet, day, early), 422, "validation-error", "body.slots.0")


@pytest.mark.parametrize("bad", ["2027-02-30", "tomorrow", "20270301", "2027-W09-1", "2027-3-1"])
async def test_bad_date_in_path(partner: Partner, bad: str) -> None:
    vet = await new_practitioner(partner)
    path = f"/practitioners/{vet}/slots/{bad}"
    problem(await partner.call("PUT", path, {"slots": []}), 422, "validation-error", "path.date")
    problem(await partner.call("GET", path), 422, "validation-error", "path.date")


# --- breaks ---------------------------------------------------------------------------------------


async def test_break_blocks_starts_until_deleted(partner: Partner) -> None:
    vet, svc = await vet_and_service(partner)
    await put_hours(partner, vet, rule(MONDAY, "09:00", "12:00"))
    day = upcoming(MONDAY)
    full = hhmm(await available(partner, svc, *whole_days(day)))
    assert len(full) == 11

    path = f"/practitioners/{vet}/breaks"
    body = {**span(at(day, "10:00"), at(day, "11:00")), "reason": "Staff meeting"}
    _, created, headers = await partner.call("POST", path, body, expect=201)
    assert created["practitioner_id"] == vet
    assert created["reason"] == "Staff meeting"
    assert datetime.fromisoformat(created["start"]) == at(day, "10:00")
    assert datetime.fromisoformat(created["end"]) == at(day, "11:00")
    assert headers["Content-Type"].startswith("application/json")

    assert hhmm(await available(partner, svc, *whole_days(day))) == [
        "09:00", "09:15", "09:30", "11:00", "11:15", "11:30",
    ]  # fmt: skip

    await partner.call("DELETE", f"{path}/{created['id']}", expect=204)
    assert hhmm(await available(partner, svc, *whole_days(day))) == full
    problem(await partner.call("DELETE", f"{path}/{created['id']}"), 404, "not-found")
    problem(await partner.call("DELETE", f"{path}/{uuid.uuid4()}"), 404, "not-found")
    problem(await partner.call("DELETE", f"{path}/nope"), 422, "validation-error", "path.break_id")


async def test_break_over_a_booking_is_refused_naming_it(
    partner: Partner, db: asyncpg.Connection
) -> None:
    vet, svc = await vet_and_service(partner)
    await put_hours(partner, vet, rule(MONDAY, "09:00", "12:00"))
    day = upcoming(MONDAY)
    status, booking, _ = await book(partner, vet, svc, at(day, "10:00"))
    assert status == 201, booking

    path = f"/practitioners/{vet}/breaks"
    for start, end in (("09:45", "10:15"), ("10:15", "11:00"), ("09:00", "12:00")):
        call = await partner.call("POST", path, span(at(day, start), at(day, end)))
        problem(call, 409, "break-over-bookings")
        assert call[1]["booking_ids"] == [booking["id"]]

    count = "SELECT count(*) FROM bookings.breaks WHERE practitioner_id = $1"
    assert await db.fetchval(count, uuid.UUID(vet)) == 0
    assert await outbox(db, partner, "break.created") == []

    # Up to the booking's edges is fine.
    for start, end in (("09:00", "10:00"), ("10:30", "11:00")):
        await partner.call("POST", path, span(at(day, start), at(day, end)), expect=201)
    # A cancelled booking holds no time.
    await partner.call(
        "POST",
        f"/bookings/{booking['id']}/cancel",
        {"reason": "Owner rang"},
        headers={"If-Match": '"1"'},
        expect=200,
    )
    await partner.call("POST", path, span(at(day, "10:00"), at(day, "10:30")), expect=201)
    assert await db.fetchval(count, uuid.UUID(vet)) == 3
    assert hhmm(await available(partner, svc, *whole_days(day))) == ["11:00", "11:15", "11:30"]


async def test_invalid_breaks(partner: Partner) -> None:
    vet = await new_practitioner(partner)
    day = upcoming(MONDAY)
    path = f"/practitioners/{vet}/breaks"
    backwards = span(at(day, "11:00"), at(day, "10:00"))
    problem(await partner.call("POST", path, backwards), 422, "validation-error", "body.end")
    naive = {"start": f"{day}T10:00:00", "end": f"{day}T11:00:00+00:00"}
    problem(await partner.call("POST", path, naive), 422, "validation-error", "body.start")
    missing = f"/practitioners/{uuid.uuid4()}/breaks"
    body = span(at(day, "10:00"), at(day, "11:00"))
    problem(await partner.call("POST", missing, body), 404, "not-found")
    params = {"from": at(day, "00:00").isoformat(), "to": at(day, "23:00").isoformat()}
    problem(await partner.call("GET", missing, params=params), 404, "not-found")


async def test_list_breaks_between_from_and_to(partner: Partner) -> None:
    vet = await new_practitioner(partner)
    path = f"/practitioners/{vet}/breaks"
    m1 = upcoming(MONDAY)
    ids = []
    for shift in range(3):
        day = m1 + timedelta(days=shift)
        _, created, _ = await partner.call(
            "POST", path, span(at(day, "12:00"), at(day, "13:00")), expect=201
        )
        ids.append(created["id"])

    async def listed(start: datetime, end: datetime) -> list[str]:
        params = {"from": start.isoformat(), "to": end.isoformat()}
        _, body, _ = await partner.call("GET", path, params=params, expect=200)
        return [b["id"] for b in body["items"]]

    assert await listed(*whole_days(m1, 3)) == ids
    assert await listed(*whole_days(m1 + timedelta(days=1))) == [ids[1]]
    # A window overlapping a break lists it; one that only touches it does not.
    assert await listed(at(m1, "12:59"), at(m1 + timedelta(days=1), "12:00")) == [ids[0]]
    assert await listed(at(m1, "13:00"), at(m1 + timedelta(days=1), "12:00")) == []

    problem(
        await partner.call("GET", path, params={"to": at(m1, "12:00").isoformat()}),
        422,
        "validation-error",
        "query.from",
    )
    problem(
        await partner.call(
            "GET", path, params={"from": at(m1, "12:00").isoformat(), "to": "later"}
        ),
        422,
        "validation-error",
        "query.to",
    )
    backwards = {"from": at(m1, "12:00").isoformat(), "to": at(m1, "11:00").isoformat()}
    problem(await partner.call("GET", path, params=backwards), 422, "validation-error", "query.to")


# --- availability: the query ----------------------------------------------------------------------


async def test_window_at_most_31_days(partner: Partner) -> None:
    vet, svc = await vet_and_service(partner)
    start = at(upcoming(MONDAY), "00:00")
    await partner.call(
        "GET", "/availability", params=window(svc, start, start + timedelta(days=31)), expect=200
    )
    call = await partner.call(
        "GET", "/availability", params=window(svc, start, start + timedelta(days=31, minutes=1))
    )
    problem(call, 422, "window-too-long", "query.to")


@pytest.mark.parametrize("length", [timedelta(0), timedelta(hours=-1)], ids=["empty", "backwards"])
async def test_window_must_end_after_it_starts(partner: Partner, length: timedelta) -> None:
    _, svc = await vet_and_service(partner)
    start = at(upcoming(MONDAY), "09:00")
    call = await partner.call("GET", "/availability", params=window(svc, start, start + length))
    problem(call, 422, "validation-error", "query.to")


async def test_malformed_availability_queries(partner: Partner) -> None:
    _, svc = await vet_and_service(partner)
    day = upcoming(MONDAY)
    good = window(svc, *whole_days(day))
    for params, field in (
        ({**good, "from": f"{day}T00:00:00"}, "query.from"),
        ({**good, "to": "soon"}, "query.to"),
        ({**good, "service_id": "x"}, "query.service_id"),
        ({k: v for k, v in good.items() if k != "service_id"}, "query.service_id"),
        ({**good, "practitioner_id": "x"}, "query.practitioner_id"),
    ):
        call = await partner.call("GET", "/availability", params=params)
        problem(call, 422, "validation-error", field)


async def test_unknown_or_inactive_service(partner: Partner) -> None:
    vet, svc = await vet_and_service(partner)
    await put_hours(partner, vet, rule(MONDAY, "09:00", "12:00"))
    days = whole_days(upcoming(MONDAY))
    call = await partner.call("GET", "/availability", params=window(str(uuid.uuid4()), *days))
    problem(call, 422, "unknown-service", "query.service_id")

    assert len(await available(partner, svc, *days)) == 11
    await partner.call("DELETE", f"/services/{svc}", expect=200)
    call = await partner.call("GET", "/availability", params=window(svc, *days))
    problem(call, 422, "unknown-service", "query.service_id")


async def test_practitioner_who_does_not_offer_the_service(partner: Partner) -> None:
    vet, svc = await vet_and_service(partner)
    other = await new_practitioner(partner, "Dr Other")
    await put_hours(partner, other, rule(MONDAY, "09:00", "12:00"))
    days = whole_days(upcoming(MONDAY))
    for who in (other, str(uuid.uuid4())):
        call = await partner.call("GET", "/availability", params=window(svc, *days, who))
        problem(call, 422, "service-not-offered", "query.practitioner_id")
    assert await available(partner, svc, *days, vet) == []


async def test_several_practitioners_and_the_filter(partner: Partner) -> None:
    a = await new_practitioner(partner, "Dr A")
    b = await new_practitioner(partner, "Dr B")
    svc = await new_service(partner, [a, b])
    await put_hours(partner, a, rule(MONDAY, "09:00", "10:00"))
    await put_hours(partner, b, rule(MONDAY, "09:30", "10:30"))
    days = whole_days(upcoming(MONDAY))

    both = await available(partner, svc, *days)
    expected = sorted(
        [(t, a) for t in ("09:00", "09:15", "09:30")]
        + [(t, b) for t in ("09:30", "09:45", "10:00")],
        key=lambda item: (item[0], uuid.UUID(item[1])),
    )
    assert [(s, p["practitioner_id"]) for s, p in zip(hhmm(both), both, strict=True)] == expected

    only_b = await available(partner, svc, *days, b)
    assert hhmm(only_b) == ["09:30", "09:45", "10:00"]
    assert {s["practitioner_id"] for s in only_b} == {b}

    # A deactivated practitioner is no longer offered.
    await partner.call("DELETE", f"/practitioners/{b}", expect=200)
    remaining = await available(partner, svc, *days)
    assert hhmm(remaining) == ["09:00", "09:15", "09:30"]
    assert {s["practitioner_id"] for s in remaining} == {a}


# --- availability: grid, lead time, the past ------------------------------------------------------


async def test_slot_grid_follows_the_clinic_setting(partner: Partner) -> None:
    vet, svc = await vet_and_service(partner)
    await put_hours(partner, vet, rule(MONDAY, "09:10", "11:00"))
    days = whole_days(upcoming(MONDAY))
    assert hhmm(await available(partner, svc, *days)) == [
        "09:15", "09:30", "09:45", "10:00", "10:15", "10:30",
    ]  # fmt: skip

    changed = await settings(partner, slot_minutes=30)
    assert changed["slot_minutes"] == 30
    assert changed["time_zone"] == "Europe/London"
    _, read, _ = await partner.call("GET", "/schedules/settings", expect=200)
    assert read["slot_minutes"] == 30
    # The grid runs from local midnight, so the 09:10 opening waits for 09:30.
    assert hhmm(await available(partner, svc, *days)) == ["09:30", "10:00", "10:30"]

    await settings(partner, slot_minutes=20)
    assert hhmm(await available(partner, svc, *days)) == ["09:20", "09:40", "10:00", "10:20"]

    for bad in (4, 241):
        call = await partner.call("PATCH", "/schedules/settings", {"slot_minutes": bad})
        problem(call, 422, "validation-error", "body.slot_minutes")
    _, read, _ = await partner.call("GET", "/schedules/settings", expect=200)
    assert read["slot_minutes"] == 20


async def test_minimum_lead_time(partner: Partner) -> None:
    vet, svc = await vet_and_service(partner)
    await put_hours(partner, vet, *(rule(d, "00:00", "23:45") for d in range(7)))
    _, read, _ = await partner.call("GET", "/schedules/settings", expect=200)
    assert read["min_lead_minutes"] == 60

    for lead in (60, 0, 600):
        if lead != 60:
            assert (await settings(partner, min_lead_minutes=lead))["min_lead_minutes"] == lead
        before = datetime.now(UTC)
        slots = await available(partner, svc, before, before + timedelta(days=2))
        after = datetime.now(UTC)
        starts = [datetime.fromisoformat(s["start"]) for s in slots]
        earliest = before + timedelta(minutes=lead)
        assert starts, lead
        assert all(s >= earliest for s in starts), (lead, starts[:3])
        # The first start is the first grid point after now + lead, bar the nightly 23:15-00:00.
        assert starts[0] <= after + timedelta(minutes=lead + 60), (lead, starts[0])

    call = await partner.call("PATCH", "/schedules/settings", {"min_lead_minutes": -1})
    problem(call, 422, "validation-error", "body.min_lead_minutes")


async def test_past_slots_are_never_offered(partner: Partner) -> None:
    vet, svc = await vet_and_service(partner)
    await put_hours(partner, vet, *(rule(d, "00:00", "23:45") for d in range(7)))
    await settings(partner, min_lead_minutes=0)

    now = datetime.now(UTC)
    assert await available(partner, svc, now - timedelta(days=3), now - timedelta(days=2)) == []
    assert await available(partner, svc, now - timedelta(days=1), now - timedelta(minutes=1)) == []
    slots = await available(partner, svc, now - timedelta(days=1), now + timedelta(days=1))
    assert slots
    assert all(datetime.fromisoformat(s["start"]) >= now for s in slots)
    assert_clinic_offsets(slots, LONDON)


# --- availability: daylight-saving days -----------------------------------------------------------


DST_DAYS = [
    pytest.param(
        "Europe/London",
        date(2027, 3, 28),
        walls(date(2027, 3, 28), "00:00", "00:45", "+00:00")
        + walls(date(2027, 3, 28), "02:00", "05:30", "+01:00"),
        timedelta(hours=23),
        id="london-spring",
    ),
    pytest.param(
        "Europe/London",
        date(2027, 10, 31),
        walls(date(2027, 10, 31), "00:00", "01:45", "+01:00")
        + walls(date(2027, 10, 31), "01:00", "05:30", "+00:00"),
        timedelta(hours=25),
        id="london-autumn",
    ),
    pytest.param(
        "America/New_York",
        date(2027, 3, 14),
        walls(date(2027, 3, 14), "00:00", "01:45", "-05:00")
        + walls(date(2027, 3, 14), "03:00", "05:30", "-04:00"),
        timedelta(hours=23),
        id="new-york-spring",
    ),
    pytest.param(
        "America/New_York",
        date(2027, 11, 7),
        walls(date(2027, 11, 7), "00:00", "01:45", "-04:00")
        + walls(date(2027, 11, 7), "01:00", "05:30", "-05:00"),
        timedelta(hours=25),
        id="new-york-autumn",
    ),
]


@pytest.mark.parametrize(("zone", "day", "expected", "length"), DST_DAYS)
async def test_daylight_saving_days(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    bookings_url: str,
    zone: str,
    day: date,
    expected: list[str],
    length: timedelta,
) -> None:
    p = await clinic_partner(admin, get_token, http, bookings_url, zone)
    tz = ZoneInfo(zone)
    assert day.weekday() == SUNDAY
    vet, svc = await vet_and_service(p)
    await put_hours(p, vet, rule(SUNDAY, "00:00", "06:00"))
    start, end = whole_days(day, 1, tz)
    assert end - start.astimezone(UTC) == length

    _, body, _ = await p.call("GET", "/availability", params=window(svc, start, end), expect=200)
    assert body["time_zone"] == zone
    found = body["slots"]
    starts = [s["start"] for s in found]
    assert starts == expected
    assert_clinic_offsets(found, tz)
    for slot in found:
        moment = datetime.fromisoformat(slot["start"])
        assert datetime.fromisoformat(slot["end"]) - moment == timedelta(minutes=30)
    # Nothing is offered twice at one instant, and the starts run forward in real time.
    instants = [datetime.fromisoformat(s).astimezone(UTC) for s in starts]
    assert instants == sorted(set(instants))


async def test_new_york_clinic_has_its_own_zone(new_york: Partner) -> None:
    vet, svc = await vet_and_service(new_york)
    await put_hours(new_york, vet, rule(MONDAY, "09:00", "10:00"))
    _, read, _ = await new_york.call("GET", "/schedules/settings", expect=200)
    assert read["time_zone"] == "America/New_York"
    day = upcoming(MONDAY)
    slots = await available(new_york, svc, *whole_days(day, 1, NEW_YORK))
    assert [s["start"] for s in slots] == [
        at(day, t, NEW_YORK).isoformat() for t in ("09:00", "09:15", "09:30")
    ]
    assert_clinic_offsets(slots, NEW_YORK)


# --- events ---------------------------------------------------------------------------------------


async def test_working_hours_write_one_event(partner: Partner, db: asyncpg.Connection) -> None:
    vet = await new_practitioner(partner)
    read = await put_hours(partner, vet, rule(MONDAY, "09:00", "12:00"))
    events = await outbox(db, partner, "working_hours.updated")
    assert len(events) == 1
    assert events[0]["type"] == "working_hours.updated"
    assert events[0]["data"] == read

    bad = {"rules": [rule(MONDAY, "12:00", "09:00")]}
    await partner.call("PUT", f"/practitioners/{vet}/working-hours", bad, expect=422)
    assert len(await outbox(db, partner, "working_hours.updated")) == 1

    await put_hours(partner, vet)
    events = await outbox(db, partner, "working_hours.updated")
    assert [e["data"]["rules"] for e in events] == [read["rules"], []]
    assert [e["sequence"] for e in events] == [1, 2]


async def test_published_slots_write_one_event(partner: Partner, db: asyncpg.Connection) -> None:
    vet = await new_practitioner(partner)
    day = upcoming(MONDAY)
    _, read, _ = await publish(partner, vet, day, span(at(day, "09:00"), at(day, "10:00")))
    events = await outbox(db, partner, "slots.replaced")
    assert len(events) == 1
    assert events[0]["data"] == read

    outside = span(at(day, "23:00"), at(day + timedelta(days=1), "01:00"))
    assert (await publish(partner, vet, day, outside))[0] == 422
    assert len(await outbox(db, partner, "slots.replaced")) == 1


async def test_breaks_write_created_and_deleted_events(
    partner: Partner, db: asyncpg.Connection
) -> None:
    vet, svc = await vet_and_service(partner)
    await put_hours(partner, vet, rule(MONDAY, "09:00", "12:00"))
    day = upcoming(MONDAY)
    path = f"/practitioners/{vet}/breaks"
    _, created, _ = await partner.call(
        "POST", path, span(at(day, "11:00"), at(day, "12:00")), expect=201
    )
    created_events = await outbox(db, partner, "break.created")
    assert [e["data"] for e in created_events] == [created]

    status, booking, _ = await book(partner, vet, svc, at(day, "09:00"))
    assert status == 201, booking
    refused = await partner.call("POST", path, span(at(day, "09:00"), at(day, "10:00")))
    problem(refused, 409, "break-over-bookings")
    assert await outbox(db, partner, "break.created") == created_events
    rows = await db.fetch(
        "SELECT id FROM bookings.breaks WHERE practitioner_id = $1", uuid.UUID(vet)
    )
    assert [str(r["id"]) for r in rows] == [created["id"]]

    await partner.call("DELETE", f"{path}/{created['id']}", expect=204)
    deleted = await outbox(db, partner, "break.deleted")
    assert len(deleted) == 1
    assert deleted[0]["data"]["id"] == created["id"]
    assert await outbox(db, partner, "break.created", "break.deleted") == [
        *created_events,
        *deleted,
    ]
    await partner.call("DELETE", f"{path}/{created['id']}", expect=404)
    assert len(await outbox(db, partner, "break.deleted")) == 1
