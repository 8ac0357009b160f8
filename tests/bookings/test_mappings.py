"""A partner application's own ids for our resources: private to that application, one per
resource, checked against the clinic's resources."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from multidict import CIMultiDict

from tests.bookings.conftest import SCOPES, Partner
from tests.conftest import Admin, TokenFactory

PROBLEM_JSON = "application/problem+json"
Reply = tuple[int, Any, CIMultiDict[str]]
PLURALS = {"practitioner": "practitioners", "service": "services", "insurance": "insurances"}


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


async def resource(partner: Partner, resource_type: str = "practitioner", **extra: Any) -> str:
    body: dict[str, Any] = {"name": f"{resource_type.title()} {uuid.uuid4().hex[:6]}", **extra}
    if resource_type == "service":
        body.setdefault("duration_minutes", 15)
    _, created, _ = await partner.call("POST", f"/{PLURALS[resource_type]}", body, expect=201)
    return str(created["id"])


async def put(partner: Partner, resource_type: str, external_id: str, resource_id: str) -> Reply:
    return await partner.call(
        "PUT",
        f"/mappings/{resource_type}/{quote(external_id, safe='')}",
        {"resource_id": resource_id},
    )


async def read(partner: Partner, resource_type: str, resource_id: str) -> dict[str, Any]:
    _, body, _ = await partner.call("GET", f"/{PLURALS[resource_type]}/{resource_id}", expect=200)
    return dict(body)


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


async def listed(
    partner: Partner, resource_type: str, params: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """(external_id, resource_id) of every mapping of a type, in listing order."""
    pages = await walk(partner, f"/mappings/{resource_type}", params)
    return [(m["external_id"], m["resource_id"]) for page in pages for m in page]


@pytest.fixture
async def second_app(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    bookings_url: str,
    partner: Partner,
) -> Partner:
    """Another partner's application, granted the same clinic."""
    clinic_id = partner.tenant.clinic_id
    other = await admin.tenant(scopes=SCOPES)
    await admin.call(
        "POST",
        "/v1/admin/grants",
        {"application_id": other.application_id, "clinic_id": clinic_id, "scopes": SCOPES},
        201,
    )
    token = await get_token(other, clinic_id=clinic_id)
    return Partner(http, bookings_url, replace(other, clinic_id=clinic_id), token["access_token"])


@pytest.fixture
async def stranger(
    admin: Admin, get_token: TokenFactory, http: aiohttp.ClientSession, bookings_url: str
) -> Partner:
    """A partner acting for another clinic of another group."""
    tenant = await admin.tenant(scopes=SCOPES)
    token = await get_token(tenant, clinic_id=tenant.clinic_id)
    return Partner(http, bookings_url, tenant, token["access_token"])


# --- put, get, delete -------------------------------------------------------------------------


@pytest.mark.parametrize("resource_type", list(PLURALS))
async def test_put_creates_then_repoints(partner: Partner, resource_type: str) -> None:
    first, second = await resource(partner, resource_type), await resource(partner, resource_type)

    status, created, _ = await put(partner, resource_type, "PMS-1", first)
    assert status == 201, created
    assert {k: created[k] for k in ("resource_type", "external_id", "resource_id")} == {
        "resource_type": resource_type,
        "external_id": "PMS-1",
        "resource_id": first,
    }
    assert created["created_at"] == created["updated_at"]

    status, again, _ = await put(partner, resource_type, "PMS-1", first)
    assert status == 200, again
    assert again["created_at"] == created["created_at"]

    status, moved, _ = await put(partner, resource_type, "PMS-1", second)
    assert status == 200, moved
    assert moved["resource_id"] == second
    assert moved["created_at"] == created["created_at"]
    assert moved["updated_at"] > created["updated_at"]

    _, got, _ = await partner.call("GET", f"/mappings/{resource_type}/PMS-1", expect=200)
    assert got == moved
    assert (await read(partner, resource_type, first))["external_id"] is None
    assert (await read(partner, resource_type, second))["external_id"] == "PMS-1"


async def test_get_of_an_unmapped_external_id_is_404(partner: Partner) -> None:
    reply = await partner.call("GET", "/mappings/practitioner/nobody")
    assert_problem(reply, 404, "not-found")


async def test_delete_forgets_the_mapping_but_not_the_resource(partner: Partner) -> None:
    vet = await resource(partner)
    await put(partner, "practitioner", "PMS-9", vet)
    status, body, _ = await partner.call("DELETE", "/mappings/practitioner/PMS-9")
    assert (status, body) == (204, None)
    assert_problem(await partner.call("GET", "/mappings/practitioner/PMS-9"), 404, "not-found")
    assert_problem(await partner.call("DELETE", "/mappings/practitioner/PMS-9"), 404, "not-found")
    assert (await read(partner, "practitioner", vet))["external_id"] is None
    # The external id and the resource are both free again.
    status, _, _ = await put(partner, "practitioner", "PMS-10", vet)
    assert status == 201


async def test_external_ids_are_taken_as_given(partner: Partner) -> None:
    vet = await resource(partner)
    odd = "Ärztin 7 ?&#%+"
    status, body, _ = await put(partner, "practitioner", odd, vet)
    assert status == 201, body
    assert body["external_id"] == odd
    _, got, _ = await partner.call(
        "GET", f"/mappings/practitioner/{quote(odd, safe='')}", expect=200
    )
    assert got["resource_id"] == vet
    assert (await read(partner, "practitioner", vet))["external_id"] == odd
    reply = await put(partner, "practitioner", "x" * 201, vet)
    assert_problem(reply, 422, "validation-error", ["path.external_id"])


# --- listing ----------------------------------------------------------------------------------


async def test_list_by_type_with_cursor_and_resource_filter(partner: Partner) -> None:
    vets = [await resource(partner) for _ in range(5)]
    for i, vet in zip((3, 1, 4, 0, 2), vets, strict=True):
        status, _, _ = await put(partner, "practitioner", f"EXT-{i}", vet)
        assert status == 201
    svc = await resource(partner, "service")
    await put(partner, "service", "EXT-0", svc)

    pages = await walk(partner, "/mappings/practitioner", {"limit": "2"})
    assert [len(p) for p in pages] == [2, 2, 1]
    mapped = [(m["external_id"], m["resource_id"]) for page in pages for m in page]
    expected = sorted(zip((f"EXT-{i}" for i in (3, 1, 4, 0, 2)), vets, strict=True))
    assert mapped == expected
    assert all(m["resource_type"] == "practitioner" for page in pages for m in page)

    assert await listed(partner, "practitioner", {"resource_id": vets[2]}) == [("EXT-4", vets[2])]
    assert await listed(partner, "practitioner", {"resource_id": svc}) == []
    assert await listed(partner, "service") == [("EXT-0", svc)]
    assert await listed(partner, "insurance") == []


async def test_list_updated_since(partner: Partner) -> None:
    a, b = await resource(partner), await resource(partner)
    await put(partner, "practitioner", "A", a)
    _, second, _ = await put(partner, "practitioner", "B", b)
    since = {"updated_since": second["updated_at"]}
    assert await listed(partner, "practitioner", since) == [("B", b)]
    c = await resource(partner)
    await put(partner, "practitioner", "A", c)  # repointing counts as a change
    assert await listed(partner, "practitioner", since) == [("A", c), ("B", b)]


async def test_list_refuses_bad_query_parameters(partner: Partner) -> None:
    for params, field in (
        ({"limit": "0"}, "query.limit"),
        ({"limit": "201"}, "query.limit"),
        ({"cursor": "%%%"}, "query.cursor"),
        ({"resource_id": "nope"}, "query.resource_id"),
    ):
        reply = await partner.call("GET", "/mappings/practitioner", params=params)
        assert_problem(reply, 422, "validation-error", [field])


# --- refusals ---------------------------------------------------------------------------------


async def test_mapping_a_resource_that_is_not_this_clinics_is_422(
    partner: Partner, stranger: Partner
) -> None:
    mine = await resource(partner)
    theirs = await resource(stranger)
    svc = await resource(partner, "service")
    for resource_type, resource_id in (
        ("practitioner", theirs),
        ("practitioner", str(uuid.uuid4())),
        ("practitioner", svc),  # a resource of this clinic, of another type
        ("client", str(uuid.uuid4())),
        ("patient", str(uuid.uuid4())),
        ("booking", str(uuid.uuid4())),
    ):
        reply = await put(partner, resource_type, "PMS-X", resource_id)
        assert_problem(reply, 422, "validation-error", ["body.resource_id"])
        reply = await partner.call("GET", f"/mappings/{resource_type}/PMS-X")
        assert_problem(reply, 404, "not-found")
    # Repointing an existing mapping at a foreign resource leaves it where it was.
    await put(partner, "practitioner", "PMS-Y", mine)
    reply = await put(partner, "practitioner", "PMS-Y", theirs)
    assert_problem(reply, 422, "validation-error", ["body.resource_id"])
    _, got, _ = await partner.call("GET", "/mappings/practitioner/PMS-Y", expect=200)
    assert got["resource_id"] == mine


async def test_a_resource_has_one_external_id_per_application(partner: Partner) -> None:
    vet, other = await resource(partner), await resource(partner)
    await put(partner, "practitioner", "FIRST", vet)
    reply = await put(partner, "practitioner", "SECOND", vet)
    assert_problem(reply, 409, "resource-already-mapped")
    assert_problem(await partner.call("GET", "/mappings/practitioner/SECOND"), 404, "not-found")

    # Repointing another mapping at an already mapped resource is the same conflict.
    await put(partner, "practitioner", "OTHER", other)
    reply = await put(partner, "practitioner", "OTHER", vet)
    assert_problem(reply, 409, "resource-already-mapped")
    assert await listed(partner, "practitioner") == [("FIRST", vet), ("OTHER", other)]


@pytest.mark.parametrize("method", ["PUT", "GET", "DELETE", "LIST"])
async def test_unknown_resource_type_is_422(partner: Partner, method: str) -> None:
    vet = await resource(partner)
    if method == "LIST":
        reply = await partner.call("GET", "/mappings/vet")
    else:
        body = {"resource_id": vet} if method == "PUT" else None
        reply = await partner.call(method, "/mappings/vet/PMS-1", body)
    assert_problem(reply, 422, "validation-error", ["path.resource_type"])


async def test_put_body_is_validated(partner: Partner) -> None:
    vet = await resource(partner)
    for body, field in (
        ({}, "body.resource_id"),
        ({"resource_id": "nope"}, "body.resource_id"),
        ({"resource_id": vet, "resource_type": "practitioner"}, "body.resource_type"),
    ):
        reply = await partner.call("PUT", "/mappings/practitioner/PMS-1", body)
        assert_problem(reply, 422, "validation-error", [field])
    assert await listed(partner, "practitioner") == []


# --- one application's mappings are its own ---------------------------------------------------


async def test_applications_never_see_each_others_mappings(
    partner: Partner, second_app: Partner
) -> None:
    a, b = await resource(partner), await resource(partner)
    status, _, _ = await put(partner, "practitioner", "SAME", a)
    assert status == 201
    status, _, _ = await put(second_app, "practitioner", "SAME", b)
    assert status == 201
    # The second application may also give ``a`` an id of its own.
    status, _, _ = await put(second_app, "practitioner", "ALSO-A", a)
    assert status == 201

    _, mine, _ = await partner.call("GET", "/mappings/practitioner/SAME", expect=200)
    _, theirs, _ = await second_app.call("GET", "/mappings/practitioner/SAME", expect=200)
    assert (mine["resource_id"], theirs["resource_id"]) == (a, b)
    assert await listed(partner, "practitioner") == [("SAME", a)]
    assert await listed(second_app, "practitioner") == [("ALSO-A", a), ("SAME", b)]
    assert_problem(await partner.call("GET", "/mappings/practitioner/ALSO-A"), 404, "not-found")

    assert (await read(partner, "practitioner", a))["external_id"] == "SAME"
    assert (await read(partner, "practitioner", b))["external_id"] is None
    assert (await read(second_app, "practitioner", a))["external_id"] == "ALSO-A"
    assert (await read(second_app, "practitioner", b))["external_id"] == "SAME"

    # Forgetting one's own mapping leaves the other application's alone.
    await second_app.call("DELETE", "/mappings/practitioner/SAME", expect=204)
    reply = await second_app.call("DELETE", "/mappings/practitioner/SAME")
    assert_problem(reply, 404, "not-found")
    _, still, _ = await partner.call("GET", "/mappings/practitioner/SAME", expect=200)
    assert still == mine


async def test_create_with_an_external_id_mapped_elsewhere_is_409_and_writes_nothing(
    partner: Partner, second_app: Partner
) -> None:
    vet = await resource(partner)
    await put(partner, "practitioner", "PMS-5", vet)
    _, before, _ = await partner.call("GET", "/practitioners", expect=200)

    reply = await partner.call("POST", "/practitioners", {"name": "Dr Dup", "external_id": "PMS-5"})
    body = assert_problem(reply, 409, "external-id-taken")
    assert body["resource_id"] == vet
    _, after, _ = await partner.call("GET", "/practitioners", expect=200)
    assert after == before
    assert len(after["items"]) == 1
    _, got, _ = await partner.call("GET", "/mappings/practitioner/PMS-5", expect=200)
    assert got["resource_id"] == vet

    # Another application's id space is its own: the same external id is free there.
    _, made, _ = await second_app.call(
        "POST", "/practitioners", {"name": "Dr Dup", "external_id": "PMS-5"}, expect=201
    )
    assert made["external_id"] == "PMS-5"
    assert (await read(partner, "practitioner", made["id"]))["external_id"] is None


async def test_concurrent_creates_with_one_external_id_make_one_resource(
    partner: Partner,
) -> None:
    replies = await asyncio.gather(
        *(
            partner.call("POST", "/insurances", {"name": f"Cover {i}", "external_id": "INS-1"})
            for i in range(8)
        )
    )
    made = [body for status, body, _ in replies if status == 201]
    assert len(made) == 1, [status for status, _, _ in replies]
    for reply in replies:
        if reply[0] != 201:
            assert assert_problem(reply, 409, "external-id-taken")["resource_id"] == made[0]["id"]
    _, page, _ = await partner.call("GET", "/insurances", expect=200)
    assert page["items"] == [made[0]]
    _, got, _ = await partner.call("GET", "/mappings/insurance/INS-1", expect=200)
    assert got["resource_id"] == made[0]["id"]


async def test_create_with_external_id_makes_a_mapping(partner: Partner) -> None:
    _, svc, _ = await partner.call(
        "POST",
        "/services",
        {"name": "Dental", "duration_minutes": 45, "external_id": "SVC-1"},
        expect=201,
    )
    _, got, _ = await partner.call("GET", "/mappings/service/SVC-1", expect=200)
    assert got["resource_id"] == svc["id"]
    reply = await put(partner, "service", "SVC-2", svc["id"])
    assert_problem(reply, 409, "resource-already-mapped")


# --- who may call -----------------------------------------------------------------------------


async def test_a_read_only_token_reads_mappings_but_does_not_write(
    partner: Partner, get_token: TokenFactory
) -> None:
    vet = await resource(partner)
    await put(partner, "practitioner", "PMS-1", vet)
    token = await get_token(
        partner.tenant, clinic_id=partner.tenant.clinic_id, scope="bookings:read"
    )
    reader = replace(partner, token=token["access_token"])
    assert_problem(await put(reader, "practitioner", "PMS-2", vet), 403, "insufficient-scope")
    reply = await reader.call("DELETE", "/mappings/practitioner/PMS-1")
    assert_problem(reply, 403, "insufficient-scope")
    await reader.call("GET", "/mappings/practitioner/PMS-1", expect=200)
    assert await listed(reader, "practitioner") == [("PMS-1", vet)]


async def test_mappings_of_another_clinic_are_out_of_reach(
    partner: Partner, stranger: Partner
) -> None:
    theirs = await resource(stranger)
    await put(stranger, "practitioner", "PMS-1", theirs)
    trespasser = replace(partner, tenant=stranger.tenant)
    for reply in (
        await put(trespasser, "practitioner", "PMS-2", theirs),
        await trespasser.call("GET", "/mappings/practitioner/PMS-1"),
        await trespasser.call("GET", "/mappings/practitioner"),
        await trespasser.call("DELETE", "/mappings/practitioner/PMS-1"),
    ):
        assert_problem(reply, 403, "clinic-not-granted")
    assert await listed(stranger, "practitioner") == [("PMS-1", theirs)]


async def test_mappings_need_a_token(partner: Partner) -> None:
    base = partner.clinic + "/mappings/practitioner"
    for method, url, body in (
        ("GET", base, None),
        ("GET", base + "/PMS-1", None),
        ("PUT", base + "/PMS-1", {"resource_id": str(uuid.uuid4())}),
        ("DELETE", base + "/PMS-1", None),
    ):
        async with partner.http.request(method, url, json=body) as r:
            reply = (r.status, await r.json(content_type=None), CIMultiDict(r.headers))
        assert_problem(reply, 401, "unauthorized")
