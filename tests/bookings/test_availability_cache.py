"""Availability kept per local day must never outlive a change that affects it.

Each test asks for whole future days twice (the second answer comes from the kept days), makes
one change, and asks again: the change must show at once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from aiohttp.test_utils import TestServer

from services.bookings.availability import Slot
from services.bookings.availability_cache import Lru, entries_by_practitioner_day, merge, render
from services.bookings.keys import AVAILABILITY_CACHE
from tests.bookings.conftest import Partner
from tests.bookings.test_schedules_http import (
    MONDAY,
    TUESDAY,
    at,
    available,
    book,
    hhmm,
    new_practitioner,
    new_service,
    on,
    publish,
    put_hours,
    rule,
    span,
    upcoming,
    vet_and_service,
    whole_days,
)


async def _warm(p: Partner, service: str, days: int = 2) -> tuple[list[str], object, object]:
    start, end = whole_days(upcoming(MONDAY), days)
    first = await available(p, service, start, end)
    again = await available(p, service, start, end)
    assert again == first
    return hhmm(first), start, end


async def test_whole_days_are_kept_and_served_again(
    partner: Partner, bookings_server: TestServer
) -> None:
    vet, service = await vet_and_service(partner)
    await put_hours(partner, vet, rule(MONDAY, "09:00", "10:00"))
    cache = bookings_server.app[AVAILABILITY_CACHE]
    days, practitioner_days = len(cache.days), len(cache.practitioner_days)
    times, _, _ = await _warm(partner, service)
    assert times == ["09:00", "09:15", "09:30"]
    assert len(cache.days) >= days + 2
    assert len(cache.practitioner_days) >= practitioner_days + 2


def _starts_in(slots: list[dict[str, Any]], lower: datetime, upper: datetime) -> list[str]:
    return [s["start"] for s in slots if lower <= datetime.fromisoformat(s["start"]) < upper]


async def test_a_window_cut_inside_days_is_the_whole_days_answer_cut(partner: Partner) -> None:
    """Practitioner-days are kept whole; a cut window takes their starts from the cut on, the
    same whether the whole days were asked first or the cut window computed them."""
    monday = upcoming(MONDAY)
    lower, upper = at(monday, "09:20"), at(monday + timedelta(days=1), "09:31")
    hours = (rule(MONDAY, "09:00", "11:00"), rule(TUESDAY, "09:00", "11:00"))
    expected = [
        *(at(monday, t) for t in ("09:30", "09:45", "10:00", "10:15", "10:30")),
        *(at(monday + timedelta(days=1), t) for t in ("09:00", "09:15", "09:30")),
    ]

    for whole_first in (True, False):
        vet, service = await vet_and_service(partner)
        await put_hours(partner, vet, *hours)
        start, end = whole_days(monday, 2)
        if whole_first:
            whole = await available(partner, service, start, end)
            cut = await available(partner, service, lower, upper)
        else:
            cut = await available(partner, service, lower, upper)
            whole = await available(partner, service, start, end)
        assert len(whole) == 14
        assert [datetime.fromisoformat(s["start"]) for s in cut] == expected, whole_first
        assert [s["start"] for s in cut] == _starts_in(whole, lower, upper)
        assert {s["practitioner_id"] for s in cut} == {vet}


async def test_a_booking_shows_at_once_and_its_cancellation_too(partner: Partner) -> None:
    vet, service = await vet_and_service(partner)
    await put_hours(partner, vet, rule(MONDAY, "09:00", "10:00"))
    _, start, end = await _warm(partner, service)
    status, booking, _ = await book(partner, vet, service, at(upcoming(MONDAY), "09:00"))
    assert status == 201, booking
    assert hhmm(await available(partner, service, start, end)) == ["09:30"]
    await partner.call(
        "POST", f"/bookings/{booking['id']}/cancel", {"reason": "changed plans"}, expect=200
    )
    assert hhmm(await available(partner, service, start, end)) == ["09:00", "09:15", "09:30"]


async def test_a_booking_recomputes_its_practitioner_and_keeps_the_others_right(
    partner: Partner,
) -> None:
    first = await new_practitioner(partner, "Dr First")
    second = await new_practitioner(partner, "Dr Second")
    service = await new_service(partner, [first, second])
    await put_hours(partner, first, rule(MONDAY, "09:00", "09:30"))
    await put_hours(partner, second, rule(MONDAY, "09:00", "09:30"))
    start, end = whole_days(upcoming(MONDAY), 2)
    before = await available(partner, service, start, end)
    assert sorted(s["practitioner_id"] for s in before) == sorted([first, second])
    status, body, _ = await book(partner, first, service, at(upcoming(MONDAY), "09:00"))
    assert status == 201, body
    after = await available(partner, service, start, end)
    assert [(hhmm([s])[0], s["practitioner_id"]) for s in after] == [("09:00", second)]


async def test_a_break_and_its_removal_show_at_once(partner: Partner) -> None:
    vet, service = await vet_and_service(partner)
    await put_hours(partner, vet, rule(MONDAY, "09:00", "10:00"))
    _, start, end = await _warm(partner, service)
    day = upcoming(MONDAY)
    _, created, _ = await partner.call(
        "POST",
        f"/practitioners/{vet}/breaks",
        span(at(day, "09:30"), at(day, "10:00")),
        expect=201,
    )
    assert hhmm(await available(partner, service, start, end)) == ["09:00"]
    await partner.call("DELETE", f"/practitioners/{vet}/breaks/{created['id']}", expect=204)
    assert hhmm(await available(partner, service, start, end)) == ["09:00", "09:15", "09:30"]


async def test_published_slots_and_working_hours_show_at_once(partner: Partner) -> None:
    vet, service = await vet_and_service(partner)
    await put_hours(partner, vet, rule(MONDAY, "09:00", "10:00"))
    _, start, end = await _warm(partner, service)
    day = upcoming(MONDAY)
    status, body, _ = await publish(partner, vet, day, span(at(day, "14:00"), at(day, "14:30")))
    assert status == 200, body
    assert hhmm(await available(partner, service, start, end)) == ["14:00"]
    await put_hours(partner, vet, rule(TUESDAY, "09:00", "09:30"))
    found = await available(partner, service, start, end)
    # The published Monday stays; Tuesday now opens by the new working hours.
    assert hhmm(on(day, found)) == ["14:00"]
    assert hhmm(on(day + timedelta(days=1), found)) == ["09:00"]


async def test_who_offers_the_service_and_its_duration_are_part_of_the_answer(
    partner: Partner,
) -> None:
    vet = await new_practitioner(partner)
    service = await new_service(partner, [vet], minutes=30)
    await put_hours(partner, vet, rule(MONDAY, "09:00", "10:00"))
    _, start, end = await _warm(partner, service)

    await partner.call("PATCH", f"/services/{service}", {"duration_minutes": 60}, expect=200)
    assert hhmm(await available(partner, service, start, end)) == ["09:00"]

    other = await new_practitioner(partner, "Dr Other")
    await put_hours(partner, other, rule(MONDAY, "11:00", "12:00"))
    await partner.call(
        "PATCH", f"/services/{service}", {"practitioner_ids": [vet, other]}, expect=200
    )
    assert hhmm(await available(partner, service, start, end)) == ["09:00", "11:00"]

    await partner.call("DELETE", f"/practitioners/{other}", expect=200)
    assert hhmm(await available(partner, service, start, end)) == ["09:00"]


def _slot(n: int, practitioner: int) -> Slot:
    moment = datetime(2030, 1, 1, 9, tzinfo=UTC) + timedelta(minutes=15 * n)
    return Slot(moment, moment + timedelta(minutes=30), UUID(int=practitioner))


def test_the_cache_keeps_within_its_budget_and_drops_the_least_recent() -> None:
    cache: Lru[str] = Lru(budget=10)
    cache.put("a", "aaaa", 4)
    cache.put("b", "bbbb", 4)
    assert cache.get("a") == "aaaa"  # "a" is now the most recent
    cache.put("c", "cccc", 4)
    assert cache.get("b") is None
    assert cache.get("a") == "aaaa"
    assert cache.get("c") == "cccc"
    cache.put("huge", "x" * 11, 11)  # larger than the whole budget: never kept
    assert cache.get("huge") is None
    assert len(cache) == 2


def test_practitioner_days_merge_into_answer_order() -> None:
    # As the search yields them: by start, then practitioner.
    expected = [_slot(0, 1), _slot(0, 2), _slot(1, 1), _slot(2, 2)]
    grouped = entries_by_practitioner_day(expected)
    day = expected[0].start.date()
    assert set(grouped) == {(UUID(int=1), day), (UUID(int=2), day)}
    merged = json.loads("[" + merge(reversed(list(grouped.values()))) + "]")
    assert merged == [
        {
            "start": s.start.isoformat(),
            "end": s.end.isoformat(),
            "practitioner_id": str(s.practitioner_id),
        }
        for s in expected
    ]
    assert merge([]) == ""
    assert json.loads(render(expected[1]))["practitioner_id"] == str(UUID(int=2))
