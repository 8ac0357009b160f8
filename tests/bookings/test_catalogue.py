"""Practitioners, services, insurances and the clinic's booking settings over real HTTP.

Every test acts for a fresh clinic, so counts and orders are those of the test's own rows. The
outbox is read straight from the bookings schema: an event is written with its data or not at all.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
import asyncpg
import pytest
from multidict import CIMultiDict

from tests.bookings.conftest import SCOPES, Partner
from tests.conftest import Admin, TokenFactory

PROBLEM_JSON = "application/problem+json"
Reply = tuple[int, Any, CIMultiDict[str]]


@dataclass(frozen=True)
class Kind:
    """One practitioner-like resource: how to create it and how to change one field of it."""

    plural: str
    singular: str
    create: dict[str, Any]
    read: dict[str, Any]  # what a read of ``create`` shows
    change: dict[str, Any]  # a PATCH body changing one field

    def __str__(self) -> str:
        return self.plural


PRACTITIONERS = Kind(
    "practitioners",
    "practitioner",
    {"name": "  Dr Ada Vale ", "role": "nurse"},
    {"name": "Dr Ada Vale", "role": "nurse", "active": True},
    {"name": "Dr Ada Jones"},
)
SERVICES = Kind(
    "services",
    "service",
    {"name": "Vaccination", "duration_minutes": 20, "species": ["Dog", " cat "]},
    {
        "name": "Vaccination",
        "duration_minutes": 20,
        "species": ["dog", "cat"],
        "practitioner_ids": [],
        "active": True,
    },
    {"duration_minutes": 30},
)
INSURANCES = Kind(
    "insurances",
    "insurance",
    {"name": "PetCover"},
    {"name": "PetCover", "active": True},
    {"name": "PetCover Plus"},
)
KINDS = [PRACTITIONERS, SERVICES, INSURANCES]
each_kind = pytest.mark.parametrize("kind", KINDS, ids=str)


# --- helpers ----------------------------------------------------------------------------------


def assert_problem(
    reply: Reply, status: int, slug: str, fields: Sequence[str] = ()
) -> dict[str, Any]:
    """An RFC 9457 refusal with this status and slug (and these ``errors[].field``, if given)."""
    code, body, headers = reply
    assert code == status, body
    assert headers["Content-Type"].startswith(PROBLEM_JSON)
    assert body["type"].endswith("/" + slug), body
    assert body["status"] == status
    if fields:
        assert [e["field"] for e in body["errors"]] == list(fields), body
    return dict(body)


async def create(partner: Partner, kind: Kind, **extra: Any) -> dict[str, Any]:
    _, body, _ = await partner.call("POST", f"/{kind.plural}", {**kind.create, **extra}, expect=201)
    return dict(body)


async def practitioner(partner: Partner, name: str = "Dr Vet") -> str:
    _, body, _ = await partner.call("POST", "/practitioners", {"name": name}, expect=201)
    return str(body["id"])


async def walk(
    partner: Partner, path: str, params: dict[str, str] | None = None
) -> list[list[dict[str, Any]]]:
    """Every page of a listing, following ``next_cursor`` until it is null."""
    pages: list[list[dict[str, Any]]] = []
    query = dict(params or {})
    while True:
        _, page, _ = await partner.call("GET", path, params=query, expect=200)
        pages.append(page["items"])
        if page["next_cursor"] is None:
            return pages
        assert len(pages) < 100, "the cursor never ends"
        query["cursor"] = page["next_cursor"]


async def send_raw(partner: Partner, method: str, path: str, body: bytes) -> Reply:
    """A request whose body is sent exactly as given, as application/json."""
    headers = {"Authorization": f"Bearer {partner.token}", "Content-Type": "application/json"}
    async with partner.http.request(
        method, partner.clinic + path, data=io.BytesIO(body), headers=headers
    ) as r:
        return r.status, await r.json(content_type=None), CIMultiDict(r.headers)


async def ids(partner: Partner, path: str, params: dict[str, str] | None = None) -> list[str]:
    return [item["id"] for page in await walk(partner, path, params) for item in page]


async def acting_for(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    bookings_url: str,
    clinic_id: str,
) -> Partner:
    """A second application (another partner) granted the same clinic."""
    other = await admin.tenant(scopes=SCOPES)
    await admin.call(
        "POST",
        "/v1/admin/grants",
        {"application_id": other.application_id, "clinic_id": clinic_id, "scopes": SCOPES},
        201,
    )
    token = await get_token(other, clinic_id=clinic_id)
    return Partner(http, bookings_url, replace(other, clinic_id=clinic_id), token["access_token"])


async def outbox(database_url: str, clinic_id: str) -> list[tuple[str, dict[str, Any]]]:
    """The clinic's events in the bookings outbox, oldest first: (type, data)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT event_type, payload->'data' AS data FROM bookings.outbox "
            "WHERE payload->>'clinic_id' = $1 ORDER BY seq",
            clinic_id,
        )
    finally:
        await conn.close()
    return [(r["event_type"], json.loads(r["data"])) for r in rows]


@pytest.fixture
async def second_app(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    bookings_url: str,
    partner: Partner,
) -> Partner:
    return await acting_for(admin, get_token, http, bookings_url, partner.tenant.clinic_id)


@pytest.fixture
async def stranger(
    admin: Admin, get_token: TokenFactory, http: aiohttp.ClientSession, bookings_url: str
) -> Partner:
    """A partner acting for another clinic of another group."""
    tenant = await admin.tenant(scopes=SCOPES)
    token = await get_token(tenant, clinic_id=tenant.clinic_id)
    return Partner(http, bookings_url, tenant, token["access_token"])


# --- create, read, change, deactivate ---------------------------------------------------------


@each_kind
async def test_create_answers_201_with_location_and_the_resource(
    partner: Partner, kind: Kind
) -> None:
    status, body, headers = await partner.call("POST", f"/{kind.plural}", kind.create)
    assert status == 201, body
    assert headers["Location"] == (
        f"/v1/clinics/{partner.tenant.clinic_id}/{kind.plural}/{body['id']}"
    )
    assert {k: body[k] for k in kind.read} == kind.read
    assert body["clinic_id"] == partner.tenant.clinic_id
    assert body["external_id"] is None
    assert body["created_at"] == body["updated_at"]
    uuid.UUID(body["id"])

    _, read, _ = await partner.call("GET", f"/{kind.plural}/{body['id']}", expect=200)
    assert read == body
    _, at_location, _ = await partner.call(
        "GET", headers["Location"].removeprefix(f"/v1/clinics/{partner.tenant.clinic_id}")
    )
    assert at_location == body


@each_kind
async def test_patch_changes_only_the_given_fields(partner: Partner, kind: Kind) -> None:
    before = await create(partner, kind)
    _, after, _ = await partner.call(
        "PATCH", f"/{kind.plural}/{before['id']}", kind.change, expect=200
    )
    assert after == {**before, **kind.change, "updated_at": after["updated_at"]}
    assert after["updated_at"] > before["updated_at"]
    _, read, _ = await partner.call("GET", f"/{kind.plural}/{before['id']}", expect=200)
    assert read == after


@each_kind
async def test_patch_with_an_empty_body_changes_nothing_but_updated_at(
    partner: Partner, kind: Kind
) -> None:
    before = await create(partner, kind)
    _, after, _ = await partner.call("PATCH", f"/{kind.plural}/{before['id']}", {}, expect=200)
    assert after == {**before, "updated_at": after["updated_at"]}


@each_kind
async def test_patch_refuses_null_for_a_required_field(partner: Partner, kind: Kind) -> None:
    before = await create(partner, kind)
    reply = await partner.call("PATCH", f"/{kind.plural}/{before['id']}", {"name": None})
    assert_problem(reply, 422, "validation-error", ["body.name"])
    reply = await partner.call("PATCH", f"/{kind.plural}/{before['id']}", {"active": None})
    assert_problem(reply, 422, "validation-error", ["body.active"])
    _, read, _ = await partner.call("GET", f"/{kind.plural}/{before['id']}", expect=200)
    assert read == before


@each_kind
async def test_delete_deactivates_and_the_resource_stays_readable(
    partner: Partner, kind: Kind
) -> None:
    kept = await create(partner, kind)
    gone = await create(partner, kind)
    _, body, _ = await partner.call("DELETE", f"/{kind.plural}/{gone['id']}", expect=200)
    assert body == {**gone, "active": False, "updated_at": body["updated_at"]}
    assert body["updated_at"] > gone["updated_at"]
    _, read, _ = await partner.call("GET", f"/{kind.plural}/{gone['id']}", expect=200)
    assert read == body

    assert await ids(partner, f"/{kind.plural}", {"active": "false"}) == [gone["id"]]
    assert await ids(partner, f"/{kind.plural}", {"active": "true"}) == [kept["id"]]
    assert await ids(partner, f"/{kind.plural}") == [kept["id"], gone["id"]]

    # Deactivating again is harmless; reactivating is a PATCH.
    await partner.call("DELETE", f"/{kind.plural}/{gone['id']}", expect=200)
    _, back, _ = await partner.call(
        "PATCH", f"/{kind.plural}/{gone['id']}", {"active": True}, expect=200
    )
    assert back["active"] is True


# --- listing ----------------------------------------------------------------------------------


@each_kind
async def test_cursor_walks_everything_exactly_once_in_updated_at_order(
    partner: Partner, kind: Kind
) -> None:
    created = [await create(partner, kind, name=f"Item {i}") for i in range(5)]
    # Touching the first one moves it to the end of the sync order.
    await partner.call("PATCH", f"/{kind.plural}/{created[0]['id']}", {"name": "Item 0b"})
    pages = await walk(partner, f"/{kind.plural}", {"limit": "2"})
    assert [len(p) for p in pages] == [2, 2, 1]
    items = [item for page in pages for item in page]
    assert [i["id"] for i in items] == [c["id"] for c in created[1:]] + [created[0]["id"]]
    stamps = [i["updated_at"] for i in items]
    assert stamps == sorted(stamps)

    _, whole, _ = await partner.call("GET", f"/{kind.plural}", expect=200)
    assert whole == {"items": items, "next_cursor": None}


@each_kind
async def test_an_exact_page_has_no_next_cursor(partner: Partner, kind: Kind) -> None:
    for i in range(4):
        await create(partner, kind, name=f"Item {i}")
    pages = await walk(partner, f"/{kind.plural}", {"limit": "2"})
    assert [len(p) for p in pages] == [2, 2]


@each_kind
async def test_updated_since_returns_what_changed_from_then_on(
    partner: Partner, kind: Kind
) -> None:
    first = await create(partner, kind, name="First")
    second = await create(partner, kind, name="Second")
    since = {"updated_since": second["updated_at"]}
    assert await ids(partner, f"/{kind.plural}", since) == [second["id"]]
    await partner.call("PATCH", f"/{kind.plural}/{first['id']}", {"name": "First again"})
    assert await ids(partner, f"/{kind.plural}", since) == [second["id"], first["id"]]
    later = {"updated_since": "2999-01-01T00:00:00+00:00"}
    assert await ids(partner, f"/{kind.plural}", later) == []


@each_kind
async def test_listing_refuses_bad_query_parameters(partner: Partner, kind: Kind) -> None:
    for params, field in (
        ({"limit": "0"}, "query.limit"),
        ({"limit": "201"}, "query.limit"),
        ({"cursor": "not-a-cursor"}, "query.cursor"),
        ({"updated_since": "yesterday"}, "query.updated_since"),
        ({"active": "perhaps"}, "query.active"),
    ):
        reply = await partner.call("GET", f"/{kind.plural}", params=params)
        assert_problem(reply, 422, "validation-error", [field])


@each_kind
async def test_listing_does_not_show_another_clinics_resources(
    partner: Partner, stranger: Partner, kind: Kind
) -> None:
    mine = await create(partner, kind)
    theirs = await create(stranger, kind)
    assert await ids(partner, f"/{kind.plural}") == [mine["id"]]
    assert await ids(stranger, f"/{kind.plural}") == [theirs["id"]]
    reply = await partner.call("GET", f"/{kind.plural}/{theirs['id']}")
    assert_problem(reply, 404, "not-found")
    reply = await partner.call("PATCH", f"/{kind.plural}/{theirs['id']}", {"name": "Mine now"})
    assert_problem(reply, 404, "not-found")
    reply = await partner.call("DELETE", f"/{kind.plural}/{theirs['id']}")
    assert_problem(reply, 404, "not-found")
    _, still, _ = await stranger.call("GET", f"/{kind.plural}/{theirs['id']}", expect=200)
    assert still == theirs


# --- external ids -----------------------------------------------------------------------------


@each_kind
async def test_external_id_filter_and_visibility_per_application(
    partner: Partner, second_app: Partner, kind: Kind
) -> None:
    mapped = await create(partner, kind, external_id=" PMS-1 ")
    assert mapped["external_id"] == "PMS-1"
    plain = await create(partner, kind)

    _, page, _ = await partner.call(
        "GET", f"/{kind.plural}", params={"external_id": "PMS-1"}, expect=200
    )
    assert page == {"items": [mapped], "next_cursor": None}
    assert await ids(partner, f"/{kind.plural}", {"external_id": "PMS-2"}) == []
    _, read, _ = await partner.call("GET", f"/{kind.plural}/{mapped['id']}", expect=200)
    assert read["external_id"] == "PMS-1"

    # The other application sees the same resources, without this application's ids.
    _, theirs, _ = await second_app.call("GET", f"/{kind.plural}/{mapped['id']}", expect=200)
    assert theirs == {**mapped, "external_id": None}
    _, listed, _ = await second_app.call("GET", f"/{kind.plural}", expect=200)
    assert [i["id"] for i in listed["items"]] == [mapped["id"], plain["id"]]
    assert [i["external_id"] for i in listed["items"]] == [None, None]
    assert await ids(second_app, f"/{kind.plural}", {"external_id": "PMS-1"}) == []

    # A change made by the other application is read back with the mapping's owner's id.
    _, changed, _ = await second_app.call(
        "PATCH", f"/{kind.plural}/{mapped['id']}", kind.change, expect=200
    )
    assert changed["external_id"] is None
    _, read, _ = await partner.call("GET", f"/{kind.plural}/{mapped['id']}", expect=200)
    assert read["external_id"] == "PMS-1"


@each_kind
async def test_create_with_a_taken_external_id_is_refused_and_writes_nothing(
    partner: Partner, database_url: str, kind: Kind
) -> None:
    first = await create(partner, kind, external_id="PMS-7")
    events_before = await outbox(database_url, partner.tenant.clinic_id)
    reply = await partner.call("POST", f"/{kind.plural}", {**kind.create, "external_id": "PMS-7"})
    body = assert_problem(reply, 409, "external-id-taken")
    assert body["resource_id"] == first["id"]
    assert await ids(partner, f"/{kind.plural}") == [first["id"]]
    assert await outbox(database_url, partner.tenant.clinic_id) == events_before


async def test_the_same_external_id_may_name_resources_of_different_types(
    partner: Partner,
) -> None:
    vet = await create(partner, PRACTITIONERS, external_id="42")
    svc = await create(partner, SERVICES, external_id="42")
    ins = await create(partner, INSURANCES, external_id="42")
    assert [vet["external_id"], svc["external_id"], ins["external_id"]] == ["42", "42", "42"]


# --- services and their practitioners ---------------------------------------------------------


async def test_service_practitioner_ids_are_deduplicated(partner: Partner) -> None:
    a, b = await practitioner(partner, "Dr A"), await practitioner(partner, "Dr B")
    svc = await create(partner, SERVICES, practitioner_ids=[b, a, b, a])
    assert svc["practitioner_ids"] == sorted([a, b])
    _, changed, _ = await partner.call(
        "PATCH", f"/services/{svc['id']}", {"practitioner_ids": [a, a]}, expect=200
    )
    assert changed["practitioner_ids"] == [a]
    assert changed["duration_minutes"] == svc["duration_minutes"]


async def test_patching_a_service_without_practitioner_ids_keeps_them(partner: Partner) -> None:
    a = await practitioner(partner)
    svc = await create(partner, SERVICES, practitioner_ids=[a])
    for body in ({"name": "Booster"}, {"practitioner_ids": None}):
        _, changed, _ = await partner.call("PATCH", f"/services/{svc['id']}", body, expect=200)
        assert changed["practitioner_ids"] == [a]
    _, cleared, _ = await partner.call(
        "PATCH", f"/services/{svc['id']}", {"practitioner_ids": []}, expect=200
    )
    assert cleared["practitioner_ids"] == []


@pytest.mark.parametrize("whose", ["unknown", "other clinic"])
async def test_service_practitioner_ids_must_be_this_clinics(
    partner: Partner, stranger: Partner, database_url: str, whose: str
) -> None:
    mine = await practitioner(partner)
    foreign = str(uuid.uuid4()) if whose == "unknown" else await practitioner(stranger)
    svc = await create(partner, SERVICES, practitioner_ids=[mine])
    events_before = await outbox(database_url, partner.tenant.clinic_id)

    reply = await partner.call(
        "POST", "/services", {**SERVICES.create, "practitioner_ids": [mine, foreign]}
    )
    assert_problem(reply, 422, "validation-error", ["body.practitioner_ids"])
    assert await ids(partner, "/services") == [svc["id"]]

    reply = await partner.call(
        "PATCH",
        f"/services/{svc['id']}",
        {"name": "Renamed", "practitioner_ids": [foreign]},
    )
    assert_problem(reply, 422, "validation-error", ["body.practitioner_ids"])
    _, read, _ = await partner.call("GET", f"/services/{svc['id']}", expect=200)
    assert read == svc
    assert await outbox(database_url, partner.tenant.clinic_id) == events_before


@pytest.mark.parametrize(
    ("minutes", "ok"),
    [(4, False), (5, True), (1440, True), (1441, False), (0, False), (-15, False)],
)
async def test_service_duration_bounds(partner: Partner, minutes: int, ok: bool) -> None:
    body = {**SERVICES.create, "duration_minutes": minutes}
    status, created, _ = reply = await partner.call("POST", "/services", body)
    if ok:
        assert status == 201, created
        assert created["duration_minutes"] == minutes
        return
    assert_problem(reply, 422, "validation-error", ["body.duration_minutes"])
    svc = await create(partner, SERVICES)
    reply = await partner.call("PATCH", f"/services/{svc['id']}", {"duration_minutes": minutes})
    assert_problem(reply, 422, "validation-error", ["body.duration_minutes"])
    assert await ids(partner, "/services") == [svc["id"]]


async def test_service_requires_a_duration(partner: Partner) -> None:
    reply = await partner.call("POST", "/services", {"name": "Check-up"})
    assert_problem(reply, 422, "validation-error", ["body.duration_minutes"])


# --- refusals of the request itself -----------------------------------------------------------


@each_kind
async def test_unknown_fields_are_refused(partner: Partner, kind: Kind) -> None:
    reply = await partner.call("POST", f"/{kind.plural}", {**kind.create, "colour": "blue"})
    assert_problem(reply, 422, "validation-error", ["body.colour"])
    created = await create(partner, kind)
    reply = await partner.call("PATCH", f"/{kind.plural}/{created['id']}", {"clinic_id": "x"})
    assert_problem(reply, 422, "validation-error", ["body.clinic_id"])
    assert await ids(partner, f"/{kind.plural}") == [created["id"]]


@each_kind
async def test_invalid_field_values_are_refused(partner: Partner, kind: Kind) -> None:
    for body, field in (
        ({**kind.create, "name": "   "}, "body.name"),
        ({**kind.create, "name": "x" * 201}, "body.name"),
        ({**kind.create, "external_id": ""}, "body.external_id"),
        ({**kind.create, "active": "maybe"}, "body.active"),
    ):
        reply = await partner.call("POST", f"/{kind.plural}", body)
        assert_problem(reply, 422, "validation-error", [field])
    assert await ids(partner, f"/{kind.plural}") == []


async def test_practitioner_role_must_be_known(partner: Partner) -> None:
    reply = await partner.call("POST", "/practitioners", {"name": "Dr X", "role": "surgeon"})
    assert_problem(reply, 422, "validation-error", ["body.role"])


@each_kind
async def test_malformed_json_is_refused(partner: Partner, kind: Kind) -> None:
    reply = await send_raw(partner, "POST", f"/{kind.plural}", b'{"name": "Dr')
    assert_problem(reply, 422, "validation-error", ["body"])
    reply = await send_raw(partner, "POST", f"/{kind.plural}", b"\xff\xfe")
    assert_problem(reply, 422, "validation-error", ["body"])
    reply = await send_raw(partner, "POST", f"/{kind.plural}", b"[1, 2]")
    assert_problem(reply, 422, "validation-error", ["body"])
    assert await ids(partner, f"/{kind.plural}") == []


@each_kind
async def test_a_body_over_one_mebibyte_is_refused(partner: Partner, kind: Kind) -> None:
    body = json.dumps({**kind.create, "name": "x" * (1024 * 1024)}).encode()
    assert len(body) > 1024 * 1024
    reply = await send_raw(partner, "POST", f"/{kind.plural}", body)
    assert_problem(reply, 413, "payload-too-large")
    assert await ids(partner, f"/{kind.plural}") == []


@each_kind
async def test_malformed_and_unknown_ids_in_the_path(partner: Partner, kind: Kind) -> None:
    for method, body in (("GET", None), ("PATCH", kind.change), ("DELETE", None)):
        reply = await partner.call(method, f"/{kind.plural}/not-a-uuid", body)
        assert_problem(reply, 422, "validation-error", ["path.resource_id"])
        reply = await partner.call(method, f"/{kind.plural}/{uuid.uuid4()}", body)
        assert_problem(reply, 404, "not-found")


# --- who may call -----------------------------------------------------------------------------


@each_kind
async def test_a_token_for_another_clinic_is_refused(
    partner: Partner, stranger: Partner, kind: Kind
) -> None:
    theirs = await create(stranger, kind)
    trespasser = replace(partner, tenant=stranger.tenant)  # partner's token, stranger's clinic
    for method, path, body in (
        ("GET", f"/{kind.plural}", None),
        ("GET", f"/{kind.plural}/{theirs['id']}", None),
        ("POST", f"/{kind.plural}", kind.create),
        ("PATCH", f"/{kind.plural}/{theirs['id']}", kind.change),
        ("DELETE", f"/{kind.plural}/{theirs['id']}", None),
    ):
        reply = await trespasser.call(method, path, body)
        assert_problem(reply, 403, "clinic-not-granted")
    _, read, _ = await stranger.call("GET", f"/{kind.plural}/{theirs['id']}", expect=200)
    assert read == theirs


@each_kind
async def test_a_read_only_token_reads_but_does_not_write(
    partner: Partner, get_token: TokenFactory, kind: Kind
) -> None:
    existing = await create(partner, kind)
    token = await get_token(
        partner.tenant, clinic_id=partner.tenant.clinic_id, scope="bookings:read"
    )
    reader = replace(partner, token=token["access_token"])
    for method, path, body in (
        ("POST", f"/{kind.plural}", kind.create),
        ("PATCH", f"/{kind.plural}/{existing['id']}", kind.change),
        ("DELETE", f"/{kind.plural}/{existing['id']}", None),
    ):
        reply = await reader.call(method, path, body)
        assert_problem(reply, 403, "insufficient-scope")
        assert 'error="insufficient_scope"' in reply[2]["WWW-Authenticate"]
    _, read, _ = await reader.call("GET", f"/{kind.plural}/{existing['id']}", expect=200)
    assert read == existing
    _, page, _ = await reader.call("GET", f"/{kind.plural}", expect=200)
    assert page == {"items": [existing], "next_cursor": None}


@each_kind
async def test_no_token_is_refused(partner: Partner, kind: Kind) -> None:
    existing = await create(partner, kind)
    for method, path, body in (
        ("GET", f"/{kind.plural}", None),
        ("GET", f"/{kind.plural}/{existing['id']}", None),
        ("POST", f"/{kind.plural}", kind.create),
        ("PATCH", f"/{kind.plural}/{existing['id']}", kind.change),
        ("DELETE", f"/{kind.plural}/{existing['id']}", None),
    ):
        async with partner.http.request(method, partner.clinic + path, json=body) as r:
            reply = (r.status, await r.json(content_type=None), CIMultiDict(r.headers))
        assert_problem(reply, 401, "unauthorized")
        assert reply[2]["WWW-Authenticate"].startswith("Bearer")
    assert await ids(partner, f"/{kind.plural}") == [existing["id"]]


# --- events -----------------------------------------------------------------------------------


@each_kind
async def test_each_write_emits_one_event_without_external_ids(
    partner: Partner, database_url: str, kind: Kind
) -> None:
    clinic = partner.tenant.clinic_id
    created = await create(partner, kind, external_id="PMS-EVT")
    _, changed, _ = await partner.call(
        "PATCH", f"/{kind.plural}/{created['id']}", kind.change, expect=200
    )
    _, gone, _ = await partner.call("DELETE", f"/{kind.plural}/{created['id']}", expect=200)

    events = await outbox(database_url, clinic)
    assert [t for t, _ in events] == [
        f"{kind.singular}.created",
        f"{kind.singular}.updated",
        f"{kind.singular}.updated",
    ]
    for (_, data), read in zip(events, (created, changed, gone), strict=True):
        assert "external_id" not in data
        assert data == {k: v for k, v in read.items() if k != "external_id"}


async def test_refused_creates_write_no_event(
    partner: Partner, database_url: str, stranger: Partner
) -> None:
    foreign = await practitioner(stranger)
    for plural, body in (
        ("practitioners", {"name": ""}),
        ("services", {**SERVICES.create, "practitioner_ids": [foreign]}),
        ("services", {**SERVICES.create, "duration_minutes": 2}),
        ("insurances", {"name": "X", "extra": 1}),
    ):
        status, problem, _ = await partner.call("POST", f"/{plural}", body)
        assert status == 422, problem
    assert await outbox(database_url, partner.tenant.clinic_id) == []


# --- booking settings -------------------------------------------------------------------------


async def test_settings_default_to_the_directorys_zone_and_the_standard_grid(
    partner: Partner,
) -> None:
    _, body, _ = await partner.call("GET", "/schedules/settings", expect=200)
    assert body == {
        "clinic_id": partner.tenant.clinic_id,
        "time_zone": "Europe/London",
        "slot_minutes": 15,
        "min_lead_minutes": 60,
    }


async def test_settings_zone_follows_the_clinic(
    admin: Admin, get_token: TokenFactory, http: aiohttp.ClientSession, bookings_url: str
) -> None:
    tenant = await admin.tenant(scopes=SCOPES, time_zone="America/New_York")
    token = await get_token(tenant, clinic_id=tenant.clinic_id)
    partner = Partner(http, bookings_url, tenant, token["access_token"])
    _, body, _ = await partner.call("GET", "/schedules/settings", expect=200)
    assert body["time_zone"] == "America/New_York"


async def test_patching_settings_changes_only_what_is_given(partner: Partner) -> None:
    _, body, _ = await partner.call(
        "PATCH", "/schedules/settings", {"slot_minutes": 30}, expect=200
    )
    assert (body["slot_minutes"], body["min_lead_minutes"]) == (30, 60)
    _, body, _ = await partner.call(
        "PATCH", "/schedules/settings", {"min_lead_minutes": 0}, expect=200
    )
    assert (body["slot_minutes"], body["min_lead_minutes"]) == (30, 0)
    _, body, _ = await partner.call(
        "PATCH", "/schedules/settings", {"slot_minutes": 240, "min_lead_minutes": 10080}
    )
    assert (body["slot_minutes"], body["min_lead_minutes"]) == (240, 10080)
    _, read, _ = await partner.call("GET", "/schedules/settings", expect=200)
    assert read == {
        "clinic_id": partner.tenant.clinic_id,
        "time_zone": "Europe/London",
        "slot_minutes": 240,
        "min_lead_minutes": 10080,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"slot_minutes": 4}, "body.slot_minutes"),
        ({"slot_minutes": 241}, "body.slot_minutes"),
        ({"min_lead_minutes": -1}, "body.min_lead_minutes"),
        ({"min_lead_minutes": 10081}, "body.min_lead_minutes"),
        ({"slot_minutes": "often"}, "body.slot_minutes"),
        ({"time_zone": "Europe/Paris"}, "body.time_zone"),
    ],
)
async def test_settings_bounds(partner: Partner, body: dict[str, Any], field: str) -> None:
    reply = await partner.call("PATCH", "/schedules/settings", body)
    assert_problem(reply, 422, "validation-error", [field])
    _, read, _ = await partner.call("GET", "/schedules/settings", expect=200)
    assert (read["slot_minutes"], read["min_lead_minutes"]) == (15, 60)


async def test_settings_need_the_write_scope_to_change(
    partner: Partner, get_token: TokenFactory, stranger: Partner
) -> None:
    token = await get_token(
        partner.tenant, clinic_id=partner.tenant.clinic_id, scope="bookings:read"
    )
    reader = replace(partner, token=token["access_token"])
    await reader.call("GET", "/schedules/settings", expect=200)
    reply = await reader.call("PATCH", "/schedules/settings", {"slot_minutes": 30})
    assert_problem(reply, 403, "insufficient-scope")
    trespasser = replace(partner, tenant=stranger.tenant)
    reply = await trespasser.call("PATCH", "/schedules/settings", {"slot_minutes": 30})
    assert_problem(reply, 403, "clinic-not-granted")
    reply = await trespasser.call("GET", "/schedules/settings")
    assert_problem(reply, 403, "clinic-not-granted")
    _, read, _ = await partner.call("GET", "/schedules/settings", expect=200)
    assert read["slot_minutes"] == 15
