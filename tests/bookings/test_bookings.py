"""Bookings over real HTTP: creating them (for a client or a prospect), idempotency, never a double
booking however many requests race for a slot, the life cycle with ETags, reads and lists.

Every test works in a clinic of its own, on a local day at least three days ahead in London.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from pydantic import BaseModel

from shared import events
from shared.broker import Broker
from shared.db import create_pool
from shared.errors import PROBLEM_BASE
from shared.events import ClientChanged, Event, PatientChanged
from tests.bookings.conftest import Partner
from tests.conftest import Admin, TokenFactory

LONDON = ZoneInfo("Europe/London")
LIVE = ("booked", "confirmed", "arrived")
T = TypeVar("T")


# --- helpers shared with the other booking test modules --------------------------------------


def future_day(days: int = 3) -> date:
    """A local London date ``days`` ahead."""
    return datetime.now(LONDON).date() + timedelta(days=days)


def local(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=LONDON)


def slug_of(problem: Any) -> str:
    assert isinstance(problem, dict), problem
    assert str(problem.get("type", "")).startswith(PROBLEM_BASE), problem
    return str(problem["type"]).removeprefix(PROBLEM_BASE)


def assert_problem(status: int, problem: Any, expected: int, slug: str) -> None:
    assert status == expected, (status, problem)
    assert slug_of(problem) == slug, problem


def field_errors(problem: Any) -> set[str]:
    return {e["field"] for e in problem.get("errors", [])}


def prospect(first: str = "Ann", last: str = "Lee") -> dict[str, Any]:
    return {
        "owner": {"first_name": first, "last_name": last, "email": f"{first.lower()}@example.com"},
        "pet": {"name": "Rex", "species": "dog"},
    }


async def publish_slots(
    partner: Partner, vet: str, day: date, *periods: tuple[datetime, datetime]
) -> None:
    body = {"slots": [{"start": s.isoformat(), "end": e.isoformat()} for s, e in periods]}
    await partner.call("PUT", f"/practitioners/{vet}/slots/{day.isoformat()}", body, expect=200)


async def new_vet(partner: Partner, name: str = "Dr Vet", *, active: bool = True) -> str:
    _, vet, _ = await partner.call(
        "POST", "/practitioners", {"name": name, "active": active}, expect=201
    )
    return str(vet["id"])


@dataclass
class Desk:
    """A clinic ready to book: a vet offering a service, with one published day of slots."""

    partner: Partner
    vet: str
    service: str
    day: date
    minutes: int

    def at(self, hour: int, minute: int = 0) -> datetime:
        return local(self.day, hour, minute)

    def body(self, start: datetime, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "practitioner_id": self.vet,
            "service_id": self.service,
            "start": start.isoformat(),
            "prospect": prospect(),
        }
        body.update(extra)
        return {k: v for k, v in body.items() if v is not None}

    async def book(
        self, start: datetime, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> dict[str, Any]:
        _, booking, _ = await self.partner.call(
            "POST", "/bookings", self.body(start, **extra), expect=201, headers=headers
        )
        return dict(booking)

    async def attempt(
        self, start: datetime, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> tuple[int, Any]:
        status, answer, _ = await self.partner.call(
            "POST", "/bookings", self.body(start, **extra), headers=headers
        )
        return status, answer


async def open_desk(
    partner: Partner,
    *,
    minutes: int = 30,
    day: date | None = None,
    opens: int = 9,
    closes: int = 12,
) -> Desk:
    """A vet offering a ``minutes`` service, with slots published from ``opens`` to ``closes``."""
    vet = await new_vet(partner)
    _, svc, _ = await partner.call(
        "POST",
        "/services",
        {"name": "Check-up", "duration_minutes": minutes, "practitioner_ids": [vet]},
        expect=201,
    )
    desk = Desk(partner, vet, str(svc["id"]), day or future_day(), minutes)
    await publish_slots(partner, vet, desk.day, (desk.at(opens), desk.at(closes)))
    return desk


async def eventually(
    probe: Callable[[], Awaitable[T | None]], what: str, *, seconds: float = 15.0
) -> T:
    """Poll ``probe`` until it answers something other than None; fail after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        found = await probe()
        if found is not None:
            return found
        if loop.time() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


async def publish_event(
    broker: Broker,
    event_type: str,
    data: BaseModel,
    *,
    clinic_id: str | None = None,
    event_id: uuid.UUID | None = None,
) -> Event:
    """Publish an event as another service would: the platform envelope, keyed by type."""
    event = Event(
        id=event_id or uuid.uuid4(),
        type=event_type,
        clinic_id=uuid.UUID(clinic_id) if clinic_id else None,
        data=data.model_dump(mode="json"),
    )
    await broker.publish(event_type, event.model_dump(mode="json"), event.id)
    return event


def client_data(
    *,
    group_id: str,
    clinic_id: str,
    first: str,
    last: str,
    email: str | None = None,
    phone: str | None = None,
    client_id: uuid.UUID | None = None,
    changed_at: datetime | None = None,
) -> ClientChanged:
    return ClientChanged(
        client_id=client_id or uuid.uuid4(),
        group_id=uuid.UUID(group_id),
        clinic_id=uuid.UUID(clinic_id),
        first_name=first,
        last_name=last,
        email=email,
        phone=phone,
        changed_at=changed_at or datetime.now(UTC),
    )


def patient_data(
    client: ClientChanged, name: str, species: str = "cat", *, patient_id: uuid.UUID | None = None
) -> PatientChanged:
    return PatientChanged(
        patient_id=patient_id or uuid.uuid4(),
        client_id=client.client_id,
        group_id=client.group_id,
        name=name,
        species=species,
        changed_at=datetime.now(UTC),
    )


async def search_clients(partner: Partner, q: str) -> list[dict[str, Any]]:
    _, page, _ = await partner.call("GET", "/clients", params={"q": q}, expect=200)
    return list(page["items"])


async def client_found(
    partner: Partner, q: str, client_id: uuid.UUID, *, pets: int = 0
) -> dict[str, Any]:
    """Wait until searching ``q`` finds the client (with at least ``pets`` pets)."""

    async def probe() -> dict[str, Any] | None:
        for item in await search_clients(partner, q):
            if item["id"] == str(client_id) and len(item["patients"]) >= pets:
                return item
        return None

    return await eventually(probe, f"client {client_id} for q={q!r}")


async def second_application_token(
    admin: Admin, get_token: TokenFactory, partner: Partner, scopes: list[str]
) -> str:
    """A token of another, freshly approved application granted the partner's clinic."""
    tag = uuid.uuid4().hex[:8]
    other = await admin.call(
        "POST",
        "/v1/admin/partners",
        {"name": f"Other {tag}", "contact_email": f"o{tag}@example.com"},
        201,
    )
    app = await admin.call(
        "POST",
        f"/v1/admin/partners/{other['id']}/applications",
        {
            "name": f"Other app {tag}",
            "environment": "sandbox",
            "contact_email": f"oa{tag}@example.com",
            "tier": 2,
        },
        201,
    )
    await admin.call("POST", f"/v1/admin/applications/{app['id']}/approve", None, 200)
    clinic_id = partner.tenant.clinic_id
    grant = await admin.call(
        "POST",
        "/v1/admin/grants",
        {"application_id": app["id"], "clinic_id": clinic_id, "scopes": scopes},
        201,
    )
    tenant = dataclasses.replace(
        partner.tenant,
        application_id=app["id"],
        client_id=app["client_id"],
        client_secret=app["client_secret"],
        grant_id=grant["id"],
        scopes=scopes,
    )
    token = await get_token(tenant, clinic_id=clinic_id)
    return str(token["access_token"])


def as_token(partner: Partner, token: str) -> Partner:
    return dataclasses.replace(partner, token=token)


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def bookings_db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The bookings schema, for assertions on what was (not) written."""
    pool = await create_pool(database_url, schema="bookings", min_size=1, max_size=2)
    yield pool
    await pool.close()


@pytest.fixture(scope="module")
async def broker(amqp_url: str, overrides: dict[str, Any]) -> AsyncIterator[Broker]:
    """A publisher on the run's exchange, standing in for the registrations service."""
    b = Broker(amqp_url, overrides["events_exchange"])
    await b.connect_forever()
    yield b
    await b.close()


async def live_bookings(
    db: asyncpg.Pool, practitioner_id: str, start: datetime, end: datetime
) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM bookings WHERE practitioner_id = $1 AND period && tstzrange($2, $3) "
        "AND status = ANY($4::text[])",
        uuid.UUID(practitioner_id),
        start,
        end,
        list(LIVE),
    )
    return count


async def booking_rows(db: asyncpg.Pool, practitioner_id: str) -> int:
    count: int = await db.fetchval(
        "SELECT count(*) FROM bookings WHERE practitioner_id = $1", uuid.UUID(practitioner_id)
    )
    return count


# --- create -----------------------------------------------------------------------------------


async def test_create_for_a_prospect(partner: Partner) -> None:
    desk = await open_desk(partner)
    body = desk.body(desk.at(9), notes="First visit")
    _, booking, headers = await partner.call("POST", "/bookings", body, expect=201)
    clinic = partner.tenant.clinic_id
    assert headers["Location"] == f"/v1/clinics/{clinic}/bookings/{booking['id']}"
    assert headers["ETag"] == '"1"'
    assert "Idempotent-Replayed" not in headers
    assert booking["start"] == desk.at(9).isoformat()
    assert booking["end"] == desk.at(9, 30).isoformat()
    offset = desk.at(9).strftime("%z")
    assert booking["start"].endswith(f"{offset[:3]}:{offset[3:]}")
    assert booking["status"] == "booked"
    assert booking["version"] == 1
    assert booking["source"] == "partner"
    assert booking["pushed"] is False
    assert booking["clinic_id"] == clinic
    assert booking["practitioner_id"] == desk.vet
    assert booking["service_id"] == desk.service
    assert booking["client_id"] is None
    assert booking["patient_id"] is None
    given = prospect()
    assert booking["prospect"] == {
        "owner": {**given["owner"], "phone": None},
        "pet": {**given["pet"], "breed": None},
    }
    assert booking["notes"] == "First visit"
    _, again, headers = await partner.call("GET", f"/bookings/{booking['id']}", expect=200)
    assert again == booking
    assert headers["ETag"] == '"1"'


async def test_create_for_a_registered_client_and_pet(
    partner: Partner, admin: Admin, broker: Broker, bookings_db: asyncpg.Pool
) -> None:
    desk = await open_desk(partner)
    tenant = partner.tenant
    tag = uuid.uuid4().hex[:8]
    owner = client_data(
        group_id=tenant.group_id, clinic_id=tenant.clinic_id, first="Cora", last=f"Owner{tag}"
    )
    pet = patient_data(owner, "Tom")
    stranger = client_data(
        group_id=tenant.group_id, clinic_id=tenant.clinic_id, first="Dan", last=f"Other{tag}"
    )
    strangers_pet = patient_data(stranger, "Fido", "dog")
    outsider_tenant = await admin.tenant()
    outsider = client_data(
        group_id=outsider_tenant.group_id,
        clinic_id=outsider_tenant.clinic_id,
        first="Eve",
        last=f"Outsider{tag}",
    )
    for event_type, data in (
        (events.CLIENT_REGISTERED, owner),
        (events.PATIENT_REGISTERED, pet),
        (events.CLIENT_REGISTERED, stranger),
        (events.PATIENT_REGISTERED, strangers_pet),
        (events.CLIENT_REGISTERED, outsider),
    ):
        await publish_event(broker, event_type, data, clinic_id=tenant.clinic_id)
    await client_found(partner, f"owner{tag}", owner.client_id, pets=1)
    await client_found(partner, f"other{tag}", stranger.client_id, pets=1)

    booking = await desk.book(
        desk.at(9), client_id=str(owner.client_id), patient_id=str(pet.patient_id), prospect=None
    )
    assert booking["client_id"] == str(owner.client_id)
    assert booking["patient_id"] == str(pet.patient_id)
    assert booking["prospect"] is None

    # A pet of another client, and a client of another group, are refused.
    status, problem = await desk.attempt(
        desk.at(10),
        client_id=str(owner.client_id),
        patient_id=str(strangers_pet.patient_id),
        prospect=None,
    )
    assert_problem(status, problem, 422, "validation-error")
    assert field_errors(problem) == {"body.patient_id"}

    async def outsider_known() -> bool | None:
        group = await bookings_db.fetchval(
            "SELECT group_id FROM clients WHERE id = $1", outsider.client_id
        )
        return True if group is not None else None

    await eventually(outsider_known, "the other group's client to be projected")
    status, problem = await desk.attempt(
        desk.at(10), client_id=str(outsider.client_id), prospect=None
    )
    assert_problem(status, problem, 422, "validation-error")
    assert field_errors(problem) == {"body.client_id"}


def _both(body: dict[str, Any]) -> None:
    body["client_id"] = str(uuid.uuid4())


def _neither(body: dict[str, Any]) -> None:
    del body["prospect"]


def _patient_alone(body: dict[str, Any]) -> None:
    body["patient_id"] = str(uuid.uuid4())


def _end_not_pushed(body: dict[str, Any]) -> None:
    body["end"] = (datetime.fromisoformat(body["start"]) + timedelta(minutes=45)).isoformat()


def _end_before_start(body: dict[str, Any]) -> None:
    body["pushed"] = True
    body["end"] = body["start"]


def _naive_start(body: dict[str, Any]) -> None:
    body["start"] = body["start"][:19]


def _unknown_field(body: dict[str, Any]) -> None:
    body["colour"] = "blue"


@pytest.mark.parametrize(
    "spoil",
    [
        _both,
        _neither,
        _patient_alone,
        _end_not_pushed,
        _end_before_start,
        _naive_start,
        _unknown_field,
    ],
)
async def test_invalid_bodies_are_422(
    partner: Partner, bookings_db: asyncpg.Pool, spoil: Callable[[dict[str, Any]], None]
) -> None:
    desk = await open_desk(partner)
    body = desk.body(desk.at(9))
    spoil(body)
    status, problem, _ = await partner.call("POST", "/bookings", body)
    assert_problem(status, problem, 422, "validation-error")
    assert problem["errors"], problem
    assert await booking_rows(bookings_db, desk.vet) == 0


async def test_unknown_or_inactive_service_is_422(partner: Partner) -> None:
    desk = await open_desk(partner)
    status, problem = await desk.attempt(desk.at(9), service_id=str(uuid.uuid4()))
    assert_problem(status, problem, 422, "unknown-service")
    await partner.call("DELETE", f"/services/{desk.service}", expect=200)
    status, problem = await desk.attempt(desk.at(9))
    assert_problem(status, problem, 422, "unknown-service")


async def test_inactive_or_unknown_practitioner_is_422(partner: Partner) -> None:
    desk = await open_desk(partner)
    await partner.call("DELETE", f"/practitioners/{desk.vet}", expect=200)
    status, problem = await desk.attempt(desk.at(9))
    assert_problem(status, problem, 422, "validation-error")
    assert field_errors(problem) == {"body.practitioner_id"}
    status, problem = await desk.attempt(desk.at(9), practitioner_id=str(uuid.uuid4()))
    assert_problem(status, problem, 422, "validation-error")
    assert field_errors(problem) == {"body.practitioner_id"}


async def test_practitioner_not_offering_the_service_is_422(partner: Partner) -> None:
    desk = await open_desk(partner)
    nurse = await new_vet(partner, "Nurse Joy")
    await publish_slots(partner, nurse, desk.day, (desk.at(9), desk.at(12)))
    status, problem = await desk.attempt(desk.at(9), practitioner_id=nurse)
    assert_problem(status, problem, 422, "service-not-offered")


async def test_start_in_the_past_is_422(partner: Partner) -> None:
    desk = await open_desk(partner)
    yesterday = datetime.now(LONDON).replace(second=0, microsecond=0) - timedelta(days=1)
    status, problem = await desk.attempt(yesterday)
    assert_problem(status, problem, 422, "slot-in-past")
    status, problem = await desk.attempt(yesterday, pushed=True)
    assert_problem(status, problem, 422, "slot-in-past")


async def test_unbookable_starts_are_409(partner: Partner, bookings_db: asyncpg.Pool) -> None:
    desk = await open_desk(partner)
    for start in (
        desk.at(9, 5),  # off the 15-minute grid
        desk.at(8, 45),  # before the published slots
        desk.at(11, 45),  # the service would run past the last slot
        desk.at(13),  # after the published slots
        local(desk.day + timedelta(days=1), 9),  # an unpublished day without working hours
    ):
        status, problem = await desk.attempt(start)
        assert_problem(status, problem, 409, "slot-unavailable")
    # Inside the clinic's lead time: a week's notice makes the day too soon.
    await partner.call("PATCH", "/schedules/settings", {"min_lead_minutes": 10080}, expect=200)
    status, problem = await desk.attempt(desk.at(9))
    assert_problem(status, problem, 409, "slot-unavailable")
    assert await booking_rows(bookings_db, desk.vet) == 0
    await partner.call("PATCH", "/schedules/settings", {"min_lead_minutes": 60}, expect=200)
    await desk.book(desk.at(9))


async def test_a_booked_start_is_409(partner: Partner) -> None:
    desk = await open_desk(partner)
    await desk.book(desk.at(9))
    for start in (desk.at(9), desk.at(9, 15)):
        status, problem = await desk.attempt(start)
        assert_problem(status, problem, 409, "slot-unavailable")
    # Half-open periods: the next booking may start when this one ends.
    await desk.book(desk.at(9, 30))


async def test_pushed_bookings_may_lie_outside_slots_but_never_overlap(
    partner: Partner, bookings_db: asyncpg.Pool
) -> None:
    desk = await open_desk(partner)
    booked = await desk.book(desk.at(9))
    evening = desk.at(18, 7)
    pushed = await desk.book(
        evening, pushed=True, source="partner", end=(evening + timedelta(minutes=50)).isoformat()
    )
    assert pushed["pushed"] is True
    assert pushed["start"] == evening.isoformat()
    assert pushed["end"] == (evening + timedelta(minutes=50)).isoformat()
    # Without an end a pushed booking lasts the service's duration.
    early = await desk.book(desk.at(7, 3), pushed=True)
    assert early["end"] == desk.at(7, 33).isoformat()
    for start, end in (
        (desk.at(9, 10), desk.at(9, 20)),  # inside the live booking
        (desk.at(8, 50), desk.at(9, 1)),  # over its start
        (desk.at(18), desk.at(20)),  # over the other pushed booking
    ):
        status, problem = await desk.attempt(start, pushed=True, end=end.isoformat())
        assert_problem(status, problem, 409, "slot-taken")
    # Touching is not overlapping.
    await desk.book(desk.at(9, 30), pushed=True, end=desk.at(9, 40).isoformat())
    assert await live_bookings(bookings_db, desk.vet, desk.at(9), desk.at(9, 30)) == 1
    assert booked["status"] == "booked"


async def test_a_cancelled_booking_frees_its_time(
    partner: Partner, bookings_db: asyncpg.Pool
) -> None:
    desk = await open_desk(partner)
    first = await desk.book(desk.at(10))
    status, _ = await desk.attempt(desk.at(10))
    assert status == 409
    await partner.call(
        "POST", f"/bookings/{first['id']}/cancel", {"reason": "Owner ill"}, expect=200
    )
    second = await desk.book(desk.at(10))
    assert second["id"] != first["id"]
    assert await live_bookings(bookings_db, desk.vet, desk.at(10), desk.at(10, 30)) == 1
    assert await booking_rows(bookings_db, desk.vet) == 2


async def test_duplicate_external_id_is_409(partner: Partner) -> None:
    desk = await open_desk(partner)
    first = await desk.book(desk.at(9), external_id="pms-1")
    assert first["external_id"] == "pms-1"
    status, problem = await desk.attempt(desk.at(10), external_id="pms-1")
    assert_problem(status, problem, 409, "external-id-taken")
    assert problem["resource_id"] == first["id"]


async def test_concurrent_duplicate_external_ids_give_one_booking(
    partner: Partner, bookings_db: asyncpg.Pool
) -> None:
    desk = await open_desk(partner)
    other = await new_vet(partner, "Dr Other")
    await partner.call(
        "PATCH", f"/services/{desk.service}", {"practitioner_ids": [desk.vet, other]}, expect=200
    )
    await publish_slots(partner, other, desk.day, (desk.at(9), desk.at(12)))
    starts = [desk.at(9) + timedelta(minutes=30 * i) for i in range(6)]
    attempts = [
        desk.attempt(start, practitioner_id=vet, external_id="pms-race")
        for start in starts
        for vet in (desk.vet, other)
    ]
    answers = await asyncio.gather(*attempts)
    statuses = Counter(status for status, _ in answers)
    assert statuses == {201: 1, 409: len(attempts) - 1}, answers
    assert {slug_of(p) for s, p in answers if s == 409} == {"external-id-taken"}
    assert await booking_rows(bookings_db, desk.vet) + await booking_rows(bookings_db, other) == 1


# --- idempotency ------------------------------------------------------------------------------


async def test_same_key_and_body_replays_the_booking(
    partner: Partner, bookings_db: asyncpg.Pool
) -> None:
    desk = await open_desk(partner)
    body = desk.body(desk.at(9))
    key = {"Idempotency-Key": f"create-{uuid.uuid4()}"}
    _, first, headers = await partner.call("POST", "/bookings", body, expect=201, headers=key)
    assert "Idempotent-Replayed" not in headers
    for _ in range(2):
        _, again, headers = await partner.call("POST", "/bookings", body, expect=201, headers=key)
        assert again == first
        assert headers["Idempotent-Replayed"] == "true"
        assert headers["ETag"] == '"1"'
        assert headers["Location"].endswith(f"/bookings/{first['id']}")
    assert await booking_rows(bookings_db, desk.vet) == 1
    # A replay answers the booking as it is now.
    await partner.call("POST", f"/bookings/{first['id']}/status", {"status": "confirmed"})
    _, again, headers = await partner.call("POST", "/bookings", body, expect=201, headers=key)
    assert again["status"] == "confirmed"
    assert headers["ETag"] == '"2"'
    # Without a key, the same body is a new request: refused, the slot is taken.
    status, problem, _ = await partner.call("POST", "/bookings", body)
    assert_problem(status, problem, 409, "slot-unavailable")


async def test_same_key_with_another_body_is_422(
    partner: Partner, bookings_db: asyncpg.Pool
) -> None:
    desk = await open_desk(partner)
    key = {"Idempotency-Key": "order-42"}
    await partner.call("POST", "/bookings", desk.body(desk.at(9)), expect=201, headers=key)
    for other in (desk.body(desk.at(10)), desk.body(desk.at(9), notes="changed")):
        status, problem, _ = await partner.call("POST", "/bookings", other, headers=key)
        assert_problem(status, problem, 422, "idempotency-key-reused")
        assert field_errors(problem) == {"header.Idempotency-Key"}
    assert await booking_rows(bookings_db, desk.vet) == 1


async def test_a_refused_request_does_not_use_up_its_key(partner: Partner) -> None:
    desk = await open_desk(partner)
    key = {"Idempotency-Key": "retry-me"}
    status, _ = await desk.attempt(desk.at(9, 5), headers=key)
    assert status == 409
    booking = await desk.book(desk.at(9), headers=key)
    assert booking["start"] == desk.at(9).isoformat()


async def test_keys_belong_to_their_application(
    partner: Partner, admin: Admin, get_token: TokenFactory, bookings_db: asyncpg.Pool
) -> None:
    desk = await open_desk(partner)
    key = {"Idempotency-Key": "shared-key"}
    body = desk.body(desk.at(9))
    _, mine, _ = await partner.call("POST", "/bookings", body, expect=201, headers=key)
    other = as_token(
        partner,
        await second_application_token(
            admin, get_token, partner, ["bookings:read", "bookings:write"]
        ),
    )
    # The same key and body from another application is its own request: the slot is taken.
    status, problem, headers = await other.call("POST", "/bookings", body, headers=key)
    assert_problem(status, problem, 409, "slot-unavailable")
    # The same key with another body is no reuse either.
    _, theirs, headers = await other.call(
        "POST", "/bookings", desk.body(desk.at(10)), expect=201, headers=key
    )
    assert "Idempotent-Replayed" not in headers
    assert theirs["id"] != mine["id"]
    _, again, headers = await partner.call("POST", "/bookings", body, expect=201, headers=key)
    assert again["id"] == mine["id"]
    assert headers["Idempotent-Replayed"] == "true"
    assert await booking_rows(bookings_db, desk.vet) == 2


async def test_concurrent_requests_with_one_key_create_one_booking(
    partner: Partner, bookings_db: asyncpg.Pool
) -> None:
    desk = await open_desk(partner)
    body = desk.body(desk.at(11))
    key = {"Idempotency-Key": f"race-{uuid.uuid4()}"}
    # More requests than the service has database connections.
    answers = await asyncio.gather(
        *(partner.call("POST", "/bookings", body, headers=key) for _ in range(24))
    )
    assert [status for status, _, _ in answers] == [201] * 24, answers
    assert len({booking["id"] for _, booking, _ in answers}) == 1
    replayed = [h.get("Idempotent-Replayed") for _, _, h in answers]
    assert replayed.count(None) == 1
    assert replayed.count("true") == 23
    assert await booking_rows(bookings_db, desk.vet) == 1


@pytest.mark.parametrize("length", [0, 256])
async def test_idempotency_key_length_is_checked(
    partner: Partner, bookings_db: asyncpg.Pool, length: int
) -> None:
    desk = await open_desk(partner)
    headers = {"Idempotency-Key": "k" * length}
    status, problem = await desk.attempt(desk.at(9), headers=headers)
    assert_problem(status, problem, 422, "validation-error")
    assert field_errors(problem) == {"header.Idempotency-Key"}
    assert await booking_rows(bookings_db, desk.vet) == 0
    await desk.book(desk.at(9), headers={"Idempotency-Key": "k" * 255})


# --- never a double booking -------------------------------------------------------------------


async def test_200_concurrent_requests_for_one_slot_give_one_booking(
    partner: Partner, bookings_db: asyncpg.Pool
) -> None:
    desk = await open_desk(partner)
    start = desk.at(10)

    def request(i: int) -> Awaitable[tuple[int, Any]]:
        headers = {"Idempotency-Key": f"crowd-{i}-{uuid.uuid4()}"} if i % 2 else None
        return desk.attempt(start, headers=headers, prospect=prospect(f"Owner{i}", "Crowd"))

    answers = await asyncio.gather(*(request(i) for i in range(200)))
    statuses = Counter(status for status, _ in answers)
    assert statuses == {201: 1, 409: 199}, statuses
    assert {slug_of(p) for s, p in answers if s == 409} <= {"slot-unavailable", "slot-taken"}
    (winner,) = [booking for status, booking in answers if status == 201]
    assert winner["start"] == start.isoformat()
    assert await live_bookings(bookings_db, desk.vet, start, start + timedelta(minutes=30)) == 1
    assert await booking_rows(bookings_db, desk.vet) == 1


async def test_20_concurrent_bookings_on_distinct_slots_all_succeed(
    partner: Partner, bookings_db: asyncpg.Pool
) -> None:
    desk = await open_desk(partner, minutes=15, opens=9, closes=14)
    starts = [desk.at(9) + timedelta(minutes=15 * i) for i in range(20)]
    answers = await asyncio.gather(
        *(desk.attempt(s, prospect=prospect(f"Owner{i}", "Many")) for i, s in enumerate(starts))
    )
    assert [status for status, _ in answers] == [201] * 20, answers
    assert sorted(b["start"] for _, b in answers) == [s.isoformat() for s in starts]
    assert await live_bookings(bookings_db, desk.vet, desk.at(9), desk.at(14)) == 20


# --- reschedule, cancel, status ---------------------------------------------------------------


async def change(
    partner: Partner,
    booking_id: str,
    action: str,
    body: dict[str, Any],
    *,
    if_match: str | None = None,
) -> tuple[int, Any, Any]:
    headers = {"If-Match": if_match} if if_match is not None else None
    return await partner.call("POST", f"/bookings/{booking_id}/{action}", body, headers=headers)


async def test_life_cycle_booked_confirmed_arrived_completed(partner: Partner) -> None:
    desk = await open_desk(partner)
    booking = await desk.book(desk.at(9))
    for version, status in enumerate(("confirmed", "arrived", "completed"), start=2):
        code, changed, headers = await change(partner, booking["id"], "status", {"status": status})
        assert code == 200, changed
        assert changed["status"] == status
        assert changed["version"] == version
        assert headers["ETag"] == f'"{version}"'
    _, read, headers = await partner.call("GET", f"/bookings/{booking['id']}", expect=200)
    assert read["status"] == "completed"
    assert headers["ETag"] == '"4"'
    # A completed booking is closed to every change.
    for action, body in (
        ("status", {"status": "no_show"}),
        ("status", {"status": "completed"}),
        ("cancel", {"reason": "too late"}),
        ("reschedule", {"start": desk.at(10).isoformat()}),
    ):
        code, problem, _ = await change(partner, booking["id"], action, body)
        assert_problem(code, problem, 409, "booking-closed")
    _, read, _ = await partner.call("GET", f"/bookings/{booking['id']}", expect=200)
    assert read["version"] == 4


async def test_booked_may_arrive_directly(partner: Partner) -> None:
    desk = await open_desk(partner)
    booking = await desk.book(desk.at(9))
    _, arrived, _ = await change(partner, booking["id"], "status", {"status": "arrived"})
    assert arrived["status"] == "arrived"


async def test_invalid_transitions_are_409(partner: Partner) -> None:
    desk = await open_desk(partner)
    booking = await desk.book(desk.at(9))
    for status in ("completed",):
        code, problem, _ = await change(partner, booking["id"], "status", {"status": status})
        assert_problem(code, problem, 409, "invalid-transition")
        assert "confirmed" in problem["allowed"]
    await change(partner, booking["id"], "status", {"status": "confirmed"})
    for status in ("confirmed", "completed"):
        code, problem, _ = await change(partner, booking["id"], "status", {"status": status})
        assert_problem(code, problem, 409, "invalid-transition")
    await change(partner, booking["id"], "status", {"status": "arrived"})
    for status in ("confirmed", "arrived", "no_show"):
        code, problem, _ = await change(partner, booking["id"], "status", {"status": status})
        assert_problem(code, problem, 409, "invalid-transition")
        assert problem["allowed"] == ["completed"]
    code, problem, _ = await change(partner, booking["id"], "cancel", {"reason": "left"})
    assert_problem(code, problem, 409, "invalid-transition")
    code, problem, _ = await change(partner, booking["id"], "status", {"status": "cancelled"})
    assert_problem(code, problem, 422, "validation-error")
    _, read, _ = await partner.call("GET", f"/bookings/{booking['id']}", expect=200)
    assert read["status"] == "arrived"
    assert read["version"] == 3


@pytest.mark.parametrize("ending", ["cancel", "no_show"])
async def test_cancelled_and_no_show_are_terminal(
    partner: Partner, bookings_db: asyncpg.Pool, ending: str
) -> None:
    desk = await open_desk(partner)
    booking = await desk.book(desk.at(9))
    await change(partner, booking["id"], "status", {"status": "confirmed"})
    if ending == "cancel":
        code, ended, headers = await change(
            partner, booking["id"], "cancel", {"reason": "  Owner moved  "}
        )
        assert code == 200, ended
        assert ended["status"] == "cancelled"
        assert ended["cancel_reason"] == "Owner moved"
    else:
        code, ended, headers = await change(partner, booking["id"], "status", {"status": "no_show"})
        assert code == 200, ended
        assert ended["status"] == "no_show"
        assert ended["cancel_reason"] is None
    assert ended["version"] == 3
    assert headers["ETag"] == '"3"'
    for action, body in (
        ("status", {"status": "confirmed"}),
        ("status", {"status": "arrived"}),
        ("status", {"status": "no_show"}),
        ("cancel", {"reason": "again"}),
        ("reschedule", {"start": desk.at(10).isoformat()}),
    ):
        code, problem, _ = await change(partner, booking["id"], action, body)
        assert_problem(code, problem, 409, "booking-closed")
    assert await live_bookings(bookings_db, desk.vet, desk.at(9), desk.at(9, 30)) == 0


async def test_cancel_needs_a_reason(partner: Partner) -> None:
    desk = await open_desk(partner)
    booking = await desk.book(desk.at(9))
    for body in ({}, {"reason": "   "}, {"reason": "x" * 501}):
        code, problem, _ = await change(partner, booking["id"], "cancel", body)
        assert_problem(code, problem, 422, "validation-error")


async def test_if_match(partner: Partner) -> None:
    desk = await open_desk(partner)
    booking = await desk.book(desk.at(9))
    path = f"/bookings/{booking['id']}"
    _, _, headers = await partner.call("GET", path, expect=200)
    assert headers["ETag"] == '"1"'
    code, moved, headers = await change(
        partner, booking["id"], "reschedule", {"start": desk.at(10).isoformat()}, if_match='"1"'
    )
    assert code == 200, moved
    assert headers["ETag"] == '"2"'
    assert moved["version"] == 2
    # The old ETag no longer matches: 412 with the current one, and nothing changes.
    for action, body in (
        ("reschedule", {"start": desk.at(11).isoformat()}),
        ("status", {"status": "confirmed"}),
        ("cancel", {"reason": "stale"}),
    ):
        code, problem, headers = await change(partner, booking["id"], action, body, if_match='"1"')
        assert_problem(code, problem, 412, "stale-booking")
        assert headers["ETag"] == '"2"'
    _, read, _ = await partner.call("GET", path, expect=200)
    assert read == moved
    # "*", a list naming the current version and a weak tag all match.
    code, confirmed, headers = await change(
        partner, booking["id"], "status", {"status": "confirmed"}, if_match="*"
    )
    assert code == 200
    assert headers["ETag"] == '"3"'
    code, arrived, headers = await change(
        partner, booking["id"], "status", {"status": "arrived"}, if_match='"1", "3"'
    )
    assert code == 200
    assert headers["ETag"] == '"4"'
    code, done, headers = await change(
        partner, booking["id"], "status", {"status": "completed"}, if_match='W/"4"'
    )
    assert code == 200
    assert done["version"] == 5
    assert headers["ETag"] == '"5"'
    # A stale ETag on a closed booking is still a 412: the precondition comes first.
    code, problem, headers = await change(
        partner, booking["id"], "cancel", {"reason": "x"}, if_match='"4"'
    )
    assert_problem(code, problem, 412, "stale-booking")
    assert headers["ETag"] == '"5"'


async def test_reschedule(partner: Partner, bookings_db: asyncpg.Pool) -> None:
    desk = await open_desk(partner)
    booking = await desk.book(desk.at(9))
    other = await desk.book(desk.at(10), prospect=prospect("Bo", "Other"))

    async def move(start: datetime, **extra: Any) -> tuple[int, Any, Any]:
        return await change(
            partner, booking["id"], "reschedule", {"start": start.isoformat(), **extra}
        )

    code, moved, headers = await move(desk.at(11))
    assert code == 200, moved
    assert moved["start"] == desk.at(11).isoformat()
    assert moved["end"] == desk.at(11, 30).isoformat()
    assert moved["version"] == 2
    assert headers["ETag"] == '"2"'
    # The old time is free again.
    await desk.book(desk.at(9), prospect=prospect("Cy", "Third"))
    # Onto another booking (or over its start), off the grid, outside the slots: 409.
    for start in (desk.at(10), desk.at(9, 45), desk.at(10, 5), desk.at(12), desk.at(7)):
        code, problem, _ = await move(start)
        assert_problem(code, problem, 409, "slot-unavailable")
    # 15 minutes later overlaps only its own time: a booking does not block itself.
    code, moved, _ = await move(desk.at(11, 15), practitioner_id=desk.vet)
    assert code == 200, moved
    assert moved["end"] == desk.at(11, 45).isoformat()
    assert moved["version"] == 3
    code, moved, _ = await move(desk.at(11))
    assert code == 200
    assert moved["version"] == 4
    # Into the past: 422.
    code, problem, _ = await move(datetime.now(UTC) - timedelta(hours=1))
    assert_problem(code, problem, 422, "slot-in-past")
    assert await live_bookings(bookings_db, desk.vet, desk.at(11), desk.at(11, 30)) == 1
    assert other["status"] == "booked"


async def test_reschedule_to_another_practitioner(partner: Partner) -> None:
    desk = await open_desk(partner)
    second = await new_vet(partner, "Dr Second")
    outsider = await new_vet(partner, "Dr Outsider")
    await partner.call(
        "PATCH", f"/services/{desk.service}", {"practitioner_ids": [desk.vet, second]}, expect=200
    )
    for vet in (second, outsider):
        await publish_slots(partner, vet, desk.day, (desk.at(9), desk.at(12)))
    booking = await desk.book(desk.at(9))
    await desk.book(desk.at(10), practitioner_id=second)

    async def move(start: datetime, vet: str) -> tuple[int, Any, Any]:
        body = {"start": start.isoformat(), "practitioner_id": vet}
        return await change(partner, booking["id"], "reschedule", body)

    code, problem, _ = await move(desk.at(10), second)
    assert_problem(code, problem, 409, "slot-unavailable")
    code, problem, _ = await move(desk.at(9), outsider)
    assert_problem(code, problem, 422, "service-not-offered")
    code, moved, _ = await move(desk.at(9), second)
    assert code == 200, moved
    assert moved["practitioner_id"] == second
    assert moved["start"] == desk.at(9).isoformat()
    # The first vet's time is free, and a vet who has left takes no bookings.
    await desk.book(desk.at(9))
    await partner.call("DELETE", f"/practitioners/{desk.vet}", expect=200)
    code, problem, _ = await move(desk.at(11), desk.vet)
    assert_problem(code, problem, 422, "validation-error")
    assert field_errors(problem) == {"body.practitioner_id"}


async def test_reschedule_of_a_pushed_booking(partner: Partner) -> None:
    desk = await open_desk(partner)
    await desk.book(desk.at(10))
    pushed = await desk.book(desk.at(17), pushed=True, end=desk.at(17, 40).isoformat())
    # Outside the slots is fine for a pushed booking, and it keeps its own length ...
    code, moved, _ = await change(
        partner, pushed["id"], "reschedule", {"start": desk.at(18, 10).isoformat()}
    )
    assert code == 200, moved
    assert moved["end"] == desk.at(18, 50).isoformat()
    # ... but never over another booking.
    code, problem, _ = await change(
        partner, pushed["id"], "reschedule", {"start": desk.at(9, 40).isoformat()}
    )
    assert_problem(code, problem, 409, "slot-taken")


async def test_changes_to_unknown_bookings_are_404(partner: Partner) -> None:
    missing = str(uuid.uuid4())
    for action, body in (
        ("status", {"status": "confirmed"}),
        ("cancel", {"reason": "x"}),
        ("reschedule", {"start": local(future_day(), 9).isoformat()}),
    ):
        code, problem, _ = await change(partner, missing, action, body)
        assert_problem(code, problem, 404, "not-found")
        code, problem, _ = await change(partner, "not-an-id", action, body)
        assert_problem(code, problem, 422, "validation-error")


# --- read and list ----------------------------------------------------------------------------


async def test_get_one(partner: Partner) -> None:
    desk = await open_desk(partner)
    booking = await desk.book(desk.at(9))
    _, read, headers = await partner.call("GET", f"/bookings/{booking['id']}", expect=200)
    assert read == booking
    assert headers["ETag"] == '"1"'
    status, problem, _ = await partner.call("GET", f"/bookings/{uuid.uuid4()}")
    assert_problem(status, problem, 404, "not-found")
    status, problem, _ = await partner.call("GET", "/bookings/12345")
    assert_problem(status, problem, 422, "validation-error")
    assert field_errors(problem) == {"path.booking_id"}


async def test_list_filters_and_pages(partner: Partner) -> None:
    desk = await open_desk(partner)
    second = await new_vet(partner, "Dr Second")
    await partner.call(
        "PATCH", f"/services/{desk.service}", {"practitioner_ids": [desk.vet, second]}, expect=200
    )
    await publish_slots(partner, second, desk.day, (desk.at(9), desk.at(12)))
    later = future_day(4)
    await publish_slots(partner, desk.vet, later, (local(later, 9), local(later, 12)))
    nine = await desk.book(desk.at(9))
    half_past = await desk.book(desk.at(9, 30), external_id="pms-930")
    ten = await desk.book(desk.at(10))
    theirs = await desk.book(desk.at(9), practitioner_id=second)
    next_day = await desk.book(local(later, 9))
    await partner.call("POST", f"/bookings/{ten['id']}/cancel", {"reason": "x"}, expect=200)
    every = {b["id"] for b in (nine, half_past, ten, theirs, next_day)}

    async def ids(**params: str) -> list[str]:
        _, page, _ = await partner.call("GET", "/bookings", params=params, expect=200)
        assert page["next_cursor"] is None
        return [b["id"] for b in page["items"]]

    assert set(await ids()) == every
    # A range keeps the bookings that overlap it.
    window = {"from": desk.at(9, 15).isoformat(), "to": desk.at(10).isoformat()}
    assert set(await ids(**window)) == {nine["id"], half_past["id"], theirs["id"]}
    assert set(await ids(**{"from": desk.at(12).isoformat()})) == {next_day["id"]}
    assert set(await ids(to=desk.at(9, 30).isoformat())) == {nine["id"], theirs["id"]}
    assert await ids(practitioner_id=second) == [theirs["id"]]
    assert await ids(status="cancelled") == [ten["id"]]
    assert set(await ids(status="booked")) == every - {ten["id"]}
    assert await ids(external_id="pms-930") == [half_past["id"]]
    assert await ids(external_id="unknown") == []
    both = await ids(practitioner_id=desk.vet, **window)
    assert set(both) == {nine["id"], half_past["id"]}
    _, page, _ = await partner.call(
        "GET", "/bookings", params={"external_id": "pms-930"}, expect=200
    )
    assert page["items"][0]["external_id"] == "pms-930"
    assert page["items"][0]["start"] == desk.at(9, 30).isoformat()

    # Pages of two, in sync order (updated_at, then id), cover every booking once.
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        _, page, _ = await partner.call("GET", "/bookings", params=params, expect=200)
        seen += [b["id"] for b in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(page["items"]) == 2
    assert pages == 3
    assert len(seen) == 5
    assert set(seen) == every
    assert seen[-1] == ten["id"]  # changed last

    for params in (
        {"cursor": "not-a-cursor"},
        {"status": "lost"},
        {"practitioner_id": "x"},
        {"limit": "0"},
        {"from": "2030-01-01T09:00:00"},
    ):
        status, problem, _ = await partner.call("GET", "/bookings", params=params)
        assert_problem(status, problem, 422, "validation-error")


async def test_another_clinic_cannot_see_or_change_bookings(
    partner: Partner, admin: Admin, get_token: TokenFactory
) -> None:
    desk = await open_desk(partner)
    booking = await desk.book(desk.at(9))
    elsewhere = await admin.tenant(scopes=["bookings:read", "bookings:write"])
    # Our token on another clinic's path ...
    ours_there = dataclasses.replace(partner, tenant=elsewhere)
    status, problem, _ = await ours_there.call("GET", f"/bookings/{booking['id']}")
    assert_problem(status, problem, 403, "clinic-not-granted")
    # ... and another clinic's token on ours.
    token = await get_token(elsewhere, clinic_id=elsewhere.clinic_id)
    theirs_here = as_token(partner, token["access_token"])
    for method, path, body in (
        ("GET", f"/bookings/{booking['id']}", None),
        ("GET", "/bookings", None),
        ("POST", "/bookings", desk.body(desk.at(10))),
        ("POST", f"/bookings/{booking['id']}/cancel", {"reason": "x"}),
    ):
        status, problem, _ = await theirs_here.call(method, path, body)
        assert_problem(status, problem, 403, "clinic-not-granted")
    # Under their own clinic our booking does not exist.
    theirs = dataclasses.replace(theirs_here, tenant=elsewhere)
    status, problem, _ = await theirs.call("GET", f"/bookings/{booking['id']}")
    assert_problem(status, problem, 404, "not-found")
    _, page, _ = await theirs.call("GET", "/bookings", expect=200)
    assert page["items"] == []


async def test_read_only_token_cannot_change_bookings(
    partner: Partner, get_token: TokenFactory, bookings_db: asyncpg.Pool
) -> None:
    desk = await open_desk(partner)
    booking = await desk.book(desk.at(9))
    token = await get_token(
        partner.tenant, clinic_id=partner.tenant.clinic_id, scope="bookings:read"
    )
    reader = as_token(partner, token["access_token"])
    await reader.call("GET", f"/bookings/{booking['id']}", expect=200)
    await reader.call("GET", "/bookings", expect=200)
    for path, body in (
        ("/bookings", desk.body(desk.at(10))),
        (f"/bookings/{booking['id']}/cancel", {"reason": "x"}),
        (f"/bookings/{booking['id']}/status", {"status": "confirmed"}),
        (f"/bookings/{booking['id']}/reschedule", {"start": desk.at(11).isoformat()}),
    ):
        status, problem, headers = await reader.call("POST", path, body)
        assert_problem(status, problem, 403, "insufficient-scope")
        assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    assert await booking_rows(bookings_db, desk.vet) == 1
    _, read, _ = await partner.call("GET", f"/bookings/{booking['id']}", expect=200)
    assert read["version"] == 1


async def test_external_ids_are_private_to_their_application(
    partner: Partner, admin: Admin, get_token: TokenFactory
) -> None:
    desk = await open_desk(partner)
    booking = await desk.book(desk.at(9), external_id="mine-1")
    other = as_token(
        partner, await second_application_token(admin, get_token, partner, ["bookings:read"])
    )
    _, read, _ = await other.call("GET", f"/bookings/{booking['id']}", expect=200)
    assert read["external_id"] is None
    _, page, _ = await other.call("GET", "/bookings", params={"external_id": "mine-1"}, expect=200)
    assert page["items"] == []
