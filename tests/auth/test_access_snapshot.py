"""The access snapshot (``/internal/v1/access``) a page at a time, and callbacks loading it so."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from services import registry
from services.callbacks.consumers import load_access_snapshot
from shared import migrations
from shared.db import create_pool
from shared.pagination import encode_cursor
from shared.settings import ServiceSettings
from tests.conftest import Admin

INTERNAL = {"Authorization": f"Bearer {ServiceSettings().internal_token.get_secret_value()}"}


async def snapshot(
    http: aiohttp.ClientSession, auth_url: str, **params: str
) -> tuple[int, dict[str, Any]]:
    async with http.get(
        auth_url + "/internal/v1/access", params=params, headers=INTERNAL
    ) as response:
        return response.status, await response.json(content_type=None)


def key(event: dict[str, Any]) -> tuple[str, str]:
    """What an entry is about: its kind and that thing's id."""
    kind = event["type"].split(".")[0]
    return kind, event["data"][f"{kind}_id"]


async def test_pages_add_up_to_the_whole_snapshot(
    admin: Admin, http: aiohttp.ClientSession, auth_url: str
) -> None:
    for _ in range(3):
        await admin.tenant()
    status, whole = await snapshot(http, auth_url)
    assert status == 200
    assert whole["next_cursor"] is None
    kinds = {e["type"] for e in whole["events"]}
    assert {"clinic.updated", "application.updated", "grant.created"} <= kinds

    paged: list[dict[str, Any]] = []
    params = {"limit": "2"}
    pages = 0
    while True:
        status, page = await snapshot(http, auth_url, **params)
        assert status == 200, page
        assert len(page["events"]) <= 2
        # One kind per page: clinics, then applications, then grants.
        assert len({e["type"].split(".")[0] for e in page["events"]}) <= 1
        paged += page["events"]
        pages += 1
        if page["next_cursor"] is None:
            break
        params["after"] = page["next_cursor"]
    assert pages >= len(whole["events"]) // 2
    # Tenants made meanwhile by other tests may add entries, never remove them.
    assert {key(e) for e in whole["events"]} <= {key(e) for e in paged}
    assert len({key(e) for e in paged}) == len(paged)
    order = [e["type"].split(".")[0] for e in paged]
    assert order == sorted(order, key=["clinic", "application", "grant"].index)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "query.limit"),
        ({"limit": "5001"}, "query.limit"),
        ({"limit": "10", "after": "not-a-cursor"}, "query.after"),
        ({"limit": "10", "after": encode_cursor(7, "")}, "query.after"),  # no such kind
        ({"limit": "10", "after": encode_cursor(-1, "")}, "query.after"),
        ({"limit": "10", "after": encode_cursor(0, "not-a-uuid")}, "query.after"),
    ],
)
async def test_bad_paging_is_a_problem_naming_the_field(
    http: aiohttp.ClientSession, auth_url: str, params: dict[str, str], field: str
) -> None:
    status, problem = await snapshot(http, auth_url, **params)
    assert status == 422, problem
    assert field in [e["field"] for e in problem["errors"]]


async def test_the_snapshot_needs_the_internal_credential(
    http: aiohttp.ClientSession, auth_url: str
) -> None:
    async with http.get(auth_url + "/internal/v1/access", params={"limit": "5"}) as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"


async def test_callbacks_loads_the_projection_page_by_page(
    admin: Admin, http: aiohttp.ClientSession, auth_url: str, database_url: str
) -> None:
    tenant = await admin.tenant()
    schema = f"callbacks_snapshot_{secrets.token_hex(3)}"
    conn = await asyncpg.connect(database_url)
    try:
        await migrations.apply(
            conn, schema, migrations.migrations_for(registry.get("callbacks").directory)
        )
        pool = await create_pool(database_url, schema=schema, min_size=1, max_size=1)
        try:
            loaded = await load_access_snapshot(
                pool,
                http,
                auth_url=auth_url,
                internal_token=ServiceSettings().internal_token.get_secret_value(),
                page_size=3,
            )
            _, whole = await snapshot(http, auth_url)
            async with pool.acquire() as c:
                counts = {
                    table: await c.fetchval(f"SELECT count(*) FROM {table}")
                    for table in ("clinics", "applications", "grants")
                }
                grant = await c.fetchrow(
                    "SELECT clinic_id, revoked FROM grants WHERE application_id = $1",
                    uuid.UUID(tenant.application_id),
                )
        finally:
            await pool.close()
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
    by_kind = dict.fromkeys(("clinic", "application", "grant"), 0)
    for e in whole["events"]:
        by_kind[e["type"].split(".")[0]] += 1
    # Nothing else runs meanwhile (the tests run one at a time): the same directory.
    assert loaded == len(whole["events"])
    assert counts == {
        "clinics": by_kind["clinic"],
        "applications": by_kind["application"],
        "grants": by_kind["grant"],
    }
    assert grant is not None
    assert str(grant["clinic_id"]) == tenant.clinic_id
    assert grant["revoked"] is False
