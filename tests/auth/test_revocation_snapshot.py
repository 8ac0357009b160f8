"""A resource process that starts after a revocation still refuses the revoked token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import aiormq
from aiohttp.test_utils import TestServer

from shared.broker import broker_ctx
from shared.keys import BROKER
from shared.settings import ServiceSettings
from shared.tokens import client_session_ctx, verifier_ctx
from shared.web import base_app
from tests.conftest import Admin, Tenant, TokenFactory, basic_auth, resource_api


@asynccontextmanager
async def fresh_resource_server(overrides: dict[str, Any], auth_url: str) -> AsyncIterator[str]:
    settings = ServiceSettings(**overrides, service_name="late-resource", auth_url=auth_url)
    app = base_app(settings)
    app.cleanup_ctx.extend([broker_ctx, client_session_ctx, verifier_ctx])
    resource_api().install(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def probe(http: aiohttp.ClientSession, base: str, t: Tenant, token: str) -> int:
    url = f"{base}/v1/clinics/{t.clinic_id}/probe"
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        return response.status


async def eventually_status(
    http: aiohttp.ClientSession, base: str, t: Tenant, token: str, expected: int
) -> int:
    status = 0
    for _ in range(50):
        status = await probe(http, base, t, token)
        if status == expected:
            break
        await asyncio.sleep(0.1)
    return status


async def test_late_process_refuses_token_of_grant_revoked_before_it_started(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    overrides: dict[str, Any],
    auth_url: str,
) -> None:
    tenant = await admin.tenant()
    token = (await get_token(tenant, clinic_id=tenant.clinic_id))["access_token"]
    await admin.call("DELETE", f"/v1/admin/grants/{tenant.grant_id}", None, 200)
    async with fresh_resource_server(overrides, auth_url) as late:
        # The snapshot loads in the background right after start-up; it must win quickly.
        assert await eventually_status(http, late, tenant, token, 401) == 401


async def test_late_process_refuses_token_revoked_before_it_started(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    overrides: dict[str, Any],
    auth_url: str,
) -> None:
    tenant = await admin.tenant()
    token = (await get_token(tenant, clinic_id=tenant.clinic_id))["access_token"]
    headers = basic_auth(tenant.client_id, tenant.client_secret)
    async with http.post(auth_url + "/oauth/revoke", data={"token": token}, headers=headers) as r:
        assert r.status == 200
    other = await admin.tenant()
    other_token = (await get_token(other, clinic_id=other.clinic_id))["access_token"]
    async with fresh_resource_server(overrides, auth_url) as late:
        assert await eventually_status(http, late, tenant, token, 401) == 401
        # Unrelated tokens are unaffected by the snapshot.
        assert await probe(http, late, other, other_token) == 200


async def test_revocation_snapshot_needs_the_internal_credential(
    http: aiohttp.ClientSession, auth_url: str
) -> None:
    url = auth_url + "/internal/v1/revocations"
    async with http.get(url) as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"
    async with http.get(url, headers={"Authorization": "Bearer wrong"}) as response:
        assert response.status == 401
    headers = {"Authorization": f"Bearer {ServiceSettings().internal_token.get_secret_value()}"}
    async with http.get(url, headers=headers) as response:
        assert response.status == 200
        body = await response.json()
        assert isinstance(body["events"], list)


async def test_revocation_broadcast_while_disconnected_is_caught_up_after_reconnect(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    overrides: dict[str, Any],
    auth_url: str,
) -> None:
    tenant = await admin.tenant()
    token = (await get_token(tenant, clinic_id=tenant.clinic_id))["access_token"]
    settings = ServiceSettings(**overrides, service_name="blip-resource", auth_url=auth_url)
    app = base_app(settings)
    app.cleanup_ctx.extend([broker_ctx, client_session_ctx, verifier_ctx])
    resource_api().install(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        base = str(server.make_url("")).rstrip("/")
        assert await eventually_status(http, base, tenant, token, 200) == 200
        connection = app[BROKER]._connection
        assert connection is not None
        assert connection.transport is not None
        # A network blip: the exclusive revocation queue dies with the connection ...
        await connection.transport.connection.close(
            aiormq.exceptions.AMQPConnectionError("simulated network blip")
        )
        # ... so the broadcast of this revocation never reaches this process.
        await admin.call("DELETE", f"/v1/admin/grants/{tenant.grant_id}", None, 200)
        status = 0
        for _ in range(200):  # aio-pika reconnects after about 5 s
            status = await probe(http, base, tenant, token)
            if status == 401:
                break
            await asyncio.sleep(0.1)
        assert status == 401
    finally:
        await server.close()
