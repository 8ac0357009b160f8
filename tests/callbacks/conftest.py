"""The callbacks service on a real port, real receivers, a real SMTP server, events on the bus.

Each callbacks server started here gets a schema and a queue prefix of its own, so that a test
needing unusual settings (a fast ping interval, a short retry schedule) never shares deliveries
with another server.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import Message
from email.parser import BytesParser
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiosmtpd.controller import Controller

from services import registry
from services.callbacks.app import create_app
from services.callbacks.settings import CallbacksSettings
from shared import migrations
from shared.broker import Broker
from shared.db import create_pool
from shared.events import ClientChanged, Event
from tests.conftest import RUN_ID, Admin, Tenant, TokenFactory, bearer_call
from tests.polling import eventually

APP_SCOPES = "webhooks:manage events:read"
LOCAL_HOSTS = ("127.0.0.1", "localhost")
FAST_RETRIES = (0.0, 0.3, 0.6, 0.9)


# --- receivers --------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        import json

        return json.loads(self.body)


Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]


async def ok(request: web.Request, n: int) -> web.StreamResponse:
    return web.Response(status=200, text="ok")


@dataclass
class Receiver:
    """A partner's endpoint: a real aiohttp server that records what reaches each path and
    answers as the test tells it (by path, with the count of requests to that path so far)."""

    server: TestServer
    received: list[Received] = field(default_factory=list)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    def on(self, path: str, behaviour: Behaviour) -> str:
        self.behaviours[path] = behaviour
        return self.url(path)

    def at(self, path: str, *, kind: str | None = None) -> list[Received]:
        found = [r for r in self.received if r.path == path]
        if kind is not None:
            found = [r for r in found if r.json().get("type") == kind]
        return found

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        count = len(self.at(request.path))
        self.received.append(Received(request.path, dict(request.headers), body, time.monotonic()))
        behaviour = self.behaviours.get(request.path, ok)
        return await behaviour(request, count)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    app = web.Application()
    holder: dict[str, Receiver] = {}

    async def route(request: web.Request) -> web.StreamResponse:
        return await holder["r"].handle(request)

    app.router.add_route("*", "/{tail:.*}", route)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    holder["r"] = Receiver(server)
    yield holder["r"]
    await server.close()


# --- mail -------------------------------------------------------------------------------------


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.messages.append(BytesParser().parsebytes(envelope.content))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Message]:
        return [m for m in self.messages if m["To"] == address]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def smtp() -> Any:
    """A real SMTP server (aiosmtpd) on a local port; mail lands in ``smtp.inbox``."""
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    controller.inbox = inbox  # type: ignore[attr-defined]
    yield controller
    controller.stop()


# --- the callbacks service --------------------------------------------------------------------


@dataclass
class Callbacks:
    server: TestServer
    settings: CallbacksSettings
    pool: asyncpg.Pool

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


CallbacksFactory = Callable[..., Awaitable[Callbacks]]


@pytest.fixture(scope="session")
def callbacks_base(overrides: dict[str, Any], auth_url: str, smtp: Any) -> dict[str, Any]:
    return {
        **overrides,
        "auth_url": auth_url,
        "webhook_allowed_hosts": LOCAL_HOSTS,
        "retry_schedule": FAST_RETRIES,
        "retry_jitter": 0.0,
        "ping_interval_seconds": 3600.0,
        "dispatch_poll_seconds": 0.1,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "connect_timeout_seconds": 2.0,
        "attempt_timeout_seconds": 3.0,
        "ordering_gap_seconds": 2.0,
    }


async def start_callbacks(
    base: dict[str, Any], database_url: str, **changes: Any
) -> tuple[Callbacks, Callable[[], Awaitable[None]]]:
    """A callbacks server on a schema and queue of its own (migrated here)."""
    tag = secrets.token_hex(3)
    schema = f"callbacks_{tag}"
    settings = CallbacksSettings(
        **{**base, "db_schema": schema, "queue_prefix": f"vetgate-test-{RUN_ID}-{tag}", **changes}
    )
    conn = await asyncpg.connect(database_url)
    try:
        await migrations.apply(
            conn, schema, migrations.migrations_for(registry.get("callbacks").directory)
        )
    finally:
        await conn.close()
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    pool = await create_pool(database_url, schema=schema, min_size=1, max_size=4)

    async def stop() -> None:
        await pool.close()
        await server.close()
        connection = await aio_pika.connect(base["amqp_url"])
        async with connection:
            channel = await connection.channel()
            for name in ("callbacks.intake", "callbacks.intake.dead"):
                await channel.queue_delete(f"{settings.queue_prefix}.{name}")

    return Callbacks(server, settings, pool), stop


@pytest.fixture(scope="session")
async def callbacks(callbacks_base: dict[str, Any], database_url: str) -> AsyncIterator[Callbacks]:
    """The shared callbacks server of the run (fast retries, pings once an hour)."""
    service, stop = await start_callbacks(callbacks_base, database_url)
    yield service
    await stop()


@pytest.fixture
async def start(
    callbacks_base: dict[str, Any], database_url: str
) -> AsyncIterator[CallbacksFactory]:
    """Start callbacks servers with other settings; they stop when the test ends."""
    stops: list[Callable[[], Awaitable[None]]] = []

    async def factory(**changes: Any) -> Callbacks:
        service, stop = await start_callbacks(callbacks_base, database_url, **changes)
        stops.append(stop)
        return service

    yield factory
    for stop in reversed(stops):
        with contextlib.suppress(Exception):
            await stop()


# --- events on the bus ------------------------------------------------------------------------


@pytest.fixture(scope="session")
async def bus(overrides: dict[str, Any]) -> AsyncIterator[Broker]:
    """A publisher on the run's exchange, as the other services' outbox relays publish."""
    broker = Broker(overrides["amqp_url"], overrides["events_exchange"])
    await broker.connect_forever()
    yield broker
    await broker.close()


async def publish(bus: Broker, event: Event) -> Event:
    await bus.publish(event.type, event.model_dump(mode="json"), event.id)
    return event


def booking_event(
    clinic_id: str,
    *,
    booking_id: uuid.UUID | None = None,
    sequence: int = 1,
    type: str = "booking.created",
) -> Event:
    booking = booking_id or uuid.uuid4()
    return Event(
        type=type,
        clinic_id=uuid.UUID(clinic_id),
        aggregate=f"booking:{booking}",
        sequence=sequence,
        data={"id": str(booking), "status": "booked"},
    )


def client_event(tenant: Tenant) -> Event:
    """A ``client.registered`` of the tenant's clinic, shaped as the registrations service
    emits it: other services' consumers on the run's exchange read it too."""
    data = ClientChanged(
        client_id=uuid.uuid4(),
        group_id=uuid.UUID(tenant.group_id),
        clinic_id=uuid.UUID(tenant.clinic_id),
        first_name="Ann",
        last_name="Lee",
        changed_at=datetime.now(UTC),
    )
    return Event(
        type="client.registered",
        clinic_id=data.clinic_id,
        aggregate=f"client:{data.client_id}",
        data=data.model_dump(mode="json"),
    )


# --- partners ---------------------------------------------------------------------------------


@dataclass
class Partner:
    """A partner application managing its webhooks with an application token."""

    http: aiohttp.ClientSession
    base: str
    tenant: Tenant
    token: str

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        expect: int | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        status, data, _ = await bearer_call(
            self.http,
            method,
            self.base + path,
            self.token,
            body,
            expect=expect,
            headers=headers,
            params=params,
        )
        return status, data

    async def endpoint(self, url: str, **fields: Any) -> dict[str, Any]:
        _, data = await self.call(
            "POST", "/v1/webhooks/endpoints", {"url": url, **fields}, expect=201
        )
        return dict(data)


PartnerFactory = Callable[..., Awaitable[Partner]]


async def projected(service: Callbacks, tenant: Tenant, clinic_id: str | None = None) -> None:
    """Wait until the callbacks service lets the tenant's application see the events of its
    clinic (or of ``clinic_id``): the clinic, application and grant are projected."""
    clinic = clinic_id or tenant.clinic_id

    async def known() -> bool:
        async with service.pool.acquire() as conn:
            return bool(
                await conn.fetchval(
                    "SELECT may_see($1, $2, 'booking.created')",
                    uuid.UUID(tenant.application_id),
                    uuid.UUID(clinic),
                )
            )

    await eventually(known, f"the grant on clinic {clinic} in the callbacks projection")


async def another_clinic(admin: Admin, tenant: Tenant) -> str:
    """A sandbox clinic in the tenant's group, granted to no one yet."""
    clinic = await admin.call(
        "POST",
        "/v1/admin/clinics",
        {
            "group_id": tenant.group_id,
            "name": f"Another {uuid.uuid4().hex[:6]}",
            "time_zone": "Europe/London",
            "sandbox": True,
        },
        201,
    )
    return str(clinic["id"])


async def grant_clinic(
    admin: Admin, service: Callbacks, tenant: Tenant, clinic_id: str
) -> dict[str, Any]:
    """Grant the tenant's application ``bookings:read`` on the clinic; return the grant once the
    callbacks service lets the application see the clinic's events."""
    grant: dict[str, Any] = await admin.call(
        "POST",
        "/v1/admin/grants",
        {
            "application_id": tenant.application_id,
            "clinic_id": clinic_id,
            "scopes": ["bookings:read"],
        },
        201,
    )
    await projected(service, tenant, clinic_id)
    return grant


@pytest.fixture
def partner_for(
    admin: Admin, get_token: TokenFactory, http: aiohttp.ClientSession
) -> PartnerFactory:
    """A fresh tenant (granted bookings and clients scopes) and its application token, against
    the given callbacks server."""

    async def make(service: Callbacks, **tenant_options: Any) -> Partner:
        options = {"scopes": ["bookings:read", "bookings:write", "clients:read"], **tenant_options}
        tenant = await admin.tenant(**options)
        token = await get_token(tenant, scope=APP_SCOPES)
        await projected(service, tenant)
        return Partner(http, service.url, tenant, token["access_token"])

    return make


@pytest.fixture
async def partner(partner_for: PartnerFactory, callbacks: Callbacks) -> Partner:
    return await partner_for(callbacks)
