"""Test topology: a throw-away database, a private exchange on the real broker, real servers.

Every test run creates its own database (``vetgate_test_<hex>``) and drops it afterwards, and
uses its own exchange and queue prefix, so a developer's data and other runs are never touched.
Tests isolate from each other by creating their own tenants, not by wiping tables.
"""

from __future__ import annotations

import base64
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus

import aio_pika
import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from services.auth.app import create_app as create_auth_app
from services.auth.settings import AuthSettings
from services.scratch import scratch_database
from shared import migrations
from shared.api import Api
from shared.broker import broker_ctx
from shared.db import create_pool
from shared.settings import ServiceSettings
from shared.tokens import PRINCIPAL, client_session_ctx, requires, verifier_ctx
from shared.web import base_app

ADMIN_TOKEN = "test-admin-" + secrets.token_hex(16)
RUN_ID = secrets.token_hex(4)
#: Durable queues the services declare, by name after the queue prefix.
SERVICE_QUEUES = ("bookings.projections", "registrations.directory", "callbacks.intake")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "fault: restarts the broker or the database the whole run shares; runs last"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fault tests (tests/test_faults.py) kill processes and restart RabbitMQ and Postgres under
    the whole session: they go last, in their own order, so no other test meets the aftermath."""
    faults = [item for item in items if item.get_closest_marker("fault")]
    if faults:
        items[:] = [item for item in items if not item.get_closest_marker("fault")] + faults


@pytest.fixture(scope="session")
def amqp_url() -> str:
    return os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    async with scratch_database("vetgate_test", RUN_ID) as dsn:
        yield dsn


async def private_schema_pool(database_url: str, schema: str) -> asyncpg.Pool:
    """A pool on a schema of its own with the platform tables (outbox, processed events), so
    that no running service's relay or consumer touches what a test writes there."""
    conn = await asyncpg.connect(database_url)
    try:
        await migrations.apply(conn, schema, migrations.load(migrations.SHARED_DIR, "shared/"))
    finally:
        await conn.close()
    return await create_pool(database_url, schema=schema, min_size=1, max_size=8)


def service_overrides(database_url: str, amqp_url: str) -> dict[str, Any]:
    """Settings every test server shares: this run's database, exchange and queue names."""
    return {
        "database_url": database_url,
        "amqp_url": amqp_url,
        "events_exchange": f"vetgate.test.{RUN_ID}",
        "queue_prefix": f"vetgate-test-{RUN_ID}",
        "admin_token": ADMIN_TOKEN,
        "issuer": "http://vetgate.test",
        "outbox_poll_seconds": 0.2,
        "jwks_min_refetch_seconds": 0.0,
        "db_pool_min": 1,
        "db_pool_max": 8,
        "log_level": "WARNING",
    }


@pytest.fixture(scope="session", autouse=True)
async def _remove_run_exchanges(amqp_url: str) -> AsyncIterator[None]:
    """The run's exchanges and service queues go when the run ends, so test runs leave the
    broker as they found it."""
    yield
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in SERVICE_QUEUES:
            for name in (f"vetgate-test-{RUN_ID}.{queue}", f"vetgate-test-{RUN_ID}.{queue}.dead"):
                await channel.queue_delete(name)
        for name in (f"vetgate.test.{RUN_ID}", f"vetgate.test.{RUN_ID}.dlx"):
            await channel.exchange_delete(name)


@pytest.fixture(scope="session")
def overrides(database_url: str, amqp_url: str) -> dict[str, Any]:
    return service_overrides(database_url, amqp_url)


@pytest.fixture(scope="session")
def auth_settings(overrides: dict[str, Any]) -> AuthSettings:
    return AuthSettings(
        **overrides,
        key_publish_delay_seconds=1.0,
        key_cache_seconds=0.2,
        auth_failure_burst=10,
        auth_failure_rate=0.5,
    )


@pytest.fixture(scope="session")
async def auth_server(auth_settings: AuthSettings) -> AsyncIterator[TestServer]:
    """The real auth service on a real port."""
    server = TestServer(create_auth_app(auth_settings), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture(scope="session")
def auth_url(auth_server: TestServer) -> str:
    return str(auth_server.make_url("")).rstrip("/")


def resource_api() -> Api:
    """A minimal resource service built on the shared verifier, as bookings & co. use it."""

    @requires("bookings:read")
    async def clinic_resource(request: web.Request) -> web.Response:
        p = request[PRINCIPAL]
        return web.json_response(
            {"clinic_id": str(p.clinic_id), "client_id": p.client_id, "user_id": str(p.user_id)}
        )

    @requires(clinic=False)
    async def app_resource(request: web.Request) -> web.Response:
        return web.json_response({"client_id": request[PRINCIPAL].client_id})

    api = Api("resource under test")
    api.add("GET", "/v1/clinics/{clinic_id}/probe", clinic_resource, "probe")
    api.add("GET", "/v1/probe", app_resource, "probe")
    return api


@pytest.fixture(scope="session")
async def resource_server(overrides: dict[str, Any], auth_url: str) -> AsyncIterator[TestServer]:
    """A separate resource server that verifies tokens against the auth server's JWKS."""
    settings = ServiceSettings(**overrides, service_name="resource", auth_url=auth_url)
    app = base_app(settings)
    app.cleanup_ctx.extend([broker_ctx, client_session_ctx, verifier_ctx])
    resource_api().install(app)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture(scope="session")
def resource_url(resource_server: TestServer) -> str:
    return str(resource_server.make_url("")).rstrip("/")


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


@pytest.fixture(scope="session")
async def auth_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """Direct access to the auth schema, for assertions on what was (not) written."""
    pool = await create_pool(database_url, schema="auth", min_size=1, max_size=4)
    yield pool
    await pool.close()


@dataclass
class Tenant:
    """A group with one clinic, a partner and an approved sandbox application granted it."""

    group_id: str
    clinic_id: str
    partner_id: str
    application_id: str
    client_id: str
    client_secret: str
    grant_id: str
    scopes: list[str] = field(default_factory=list)


class Admin:
    """The operator API over real HTTP."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def call(
        self, method: str, path: str, body: Any = None, expect: int | None = None
    ) -> Any:
        async with self.http.request(
            method, self.base + path, json=body, headers=self.headers
        ) as r:
            data = await r.json(content_type=None)
            if expect is not None:
                assert r.status == expect, (r.status, data)
            return data

    async def application_for(
        self, clinic_id: str, *, scopes: list[str], tier: int = 1, name: str = "App"
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """A new partner's approved sandbox application granted ``scopes`` on an existing
        clinic: (the application with its secret, the grant)."""
        tag = uuid.uuid4().hex[:8]
        partner = await self.call(
            "POST",
            "/v1/admin/partners",
            {"name": f"{name} partner {tag}", "contact_email": f"p{tag}@example.com"},
            201,
        )
        app = await self.call(
            "POST",
            f"/v1/admin/partners/{partner['id']}/applications",
            {
                "name": f"{name} {tag}",
                "environment": "sandbox",
                "contact_email": f"a{tag}@example.com",
                "tier": tier,
            },
            201,
        )
        await self.call("POST", f"/v1/admin/applications/{app['id']}/approve", None, 200)
        grant = await self.call(
            "POST",
            "/v1/admin/grants",
            {"application_id": app["id"], "clinic_id": clinic_id, "scopes": scopes},
            201,
        )
        return dict(app), dict(grant)

    async def tenant(
        self,
        *,
        scopes: list[str] | None = None,
        environment: str = "sandbox",
        approve: bool = True,
        tier: int = 2,
        time_zone: str = "Europe/London",
    ) -> Tenant:
        tag = uuid.uuid4().hex[:8]
        group = await self.call("POST", "/v1/admin/groups", {"name": f"Group {tag}"}, 201)
        clinic = await self.call(
            "POST",
            "/v1/admin/clinics",
            {
                "group_id": group["id"],
                "name": f"Clinic {tag}",
                "time_zone": time_zone,
                "sandbox": environment == "sandbox",
            },
            201,
        )
        partner = await self.call(
            "POST",
            "/v1/admin/partners",
            {"name": f"Partner {tag}", "contact_email": f"p{tag}@example.com"},
            201,
        )
        app = await self.call(
            "POST",
            f"/v1/admin/partners/{partner['id']}/applications",
            {
                "name": f"App {tag}",
                "environment": environment,
                "contact_email": f"a{tag}@example.com",
                "tier": tier,
            },
            201,
        )
        if approve:
            await self.call("POST", f"/v1/admin/applications/{app['id']}/approve", None, 200)
        chosen = scopes or ["bookings:read", "bookings:write"]
        grant = await self.call(
            "POST",
            "/v1/admin/grants",
            {"application_id": app["id"], "clinic_id": clinic["id"], "scopes": chosen},
            201,
        )
        return Tenant(
            group_id=group["id"],
            clinic_id=clinic["id"],
            partner_id=partner["id"],
            application_id=app["id"],
            client_id=app["client_id"],
            client_secret=app["client_secret"],
            grant_id=grant["id"],
            scopes=chosen,
        )


@pytest.fixture(scope="session")
def admin(http: aiohttp.ClientSession, auth_url: str) -> Admin:
    return Admin(http, auth_url)


@pytest.fixture
async def tenant(admin: Admin) -> Tenant:
    return await admin.tenant()


def basic_auth(client_id: str, secret: str) -> dict[str, str]:
    """RFC 6749 §2.3.1: both parts form-encoded, then Base64 — built by hand on purpose."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


TokenFactory = Callable[..., Awaitable[dict[str, Any]]]


async def client_token(
    http: aiohttp.ClientSession, base: str, credentials: dict[str, Any], **form: str
) -> dict[str, Any]:
    """POST ``base``/oauth/token, client credentials with HTTP Basic; the answer (asserts 200)."""
    async with http.post(
        base + "/oauth/token",
        data={"grant_type": "client_credentials", **form},
        headers=basic_auth(credentials["client_id"], credentials["client_secret"]),
    ) as r:
        body: dict[str, Any] = await r.json()
        assert r.status == 200, body
        return body


async def access_token(
    http: aiohttp.ClientSession, base: str, credentials: dict[str, Any], **form: str
) -> str:
    return str((await client_token(http, base, credentials, **form))["access_token"])


async def bearer_call(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    token: str,
    body: Any = None,
    *,
    expect: int | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> tuple[int, Any, CIMultiDict[str]]:
    """One JSON call with a bearer token: status, body (None for 204) and headers; with
    ``expect``, asserts the status."""
    sent = {"Authorization": f"Bearer {token}", **(headers or {})}
    async with http.request(method, url, json=body, headers=sent, params=params) as r:
        data = await r.json(content_type=None) if r.status != 204 else None
        if expect is not None:
            assert r.status == expect, (r.status, data)
        return r.status, data, CIMultiDict(r.headers)


@pytest.fixture
def get_token(http: aiohttp.ClientSession, auth_url: str) -> TokenFactory:
    """POST /oauth/token with HTTP Basic; returns the JSON answer (asserts 200)."""

    async def fetch(t: Tenant, **form: str) -> dict[str, Any]:
        data = {"grant_type": "client_credentials", **form}
        headers = basic_auth(t.client_id, t.client_secret)
        async with http.post(auth_url + "/oauth/token", data=data, headers=headers) as r:
            body = await r.json(content_type=None)
            assert r.status == 200, body
            return dict(body)

    return fetch
