"""The registrations service (and the bookings service, whose client search follows it) on real
ports, registrars acting for fresh clinics, and a listener on the run's exchange."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import pytest
from aio_pika.abc import AbstractIncomingMessage
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from services.bookings.app import create_app as create_bookings_app
from services.bookings.settings import BookingsSettings
from services.registrations.app import create_app
from services.registrations.settings import RegistrationsSettings
from shared.broker import Broker
from shared.consumers import parse_message
from shared.errors import PROBLEM_BASE
from shared.events import Event
from tests.conftest import ADMIN_TOKEN, Admin, Tenant, TokenFactory, bearer_call

SCOPES = ["registrations:write", "clients:read"]
T = TypeVar("T")


@pytest.fixture(scope="session")
def registrations_settings(overrides: dict[str, Any], auth_url: str) -> RegistrationsSettings:
    return RegistrationsSettings(**overrides, auth_url=auth_url)


@pytest.fixture(scope="session")
async def registrations_url(
    registrations_settings: RegistrationsSettings,
) -> AsyncIterator[str]:
    server = TestServer(create_app(registrations_settings), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture(scope="session")
async def client_search_url(overrides: dict[str, Any], auth_url: str) -> AsyncIterator[str]:
    """The bookings service, whose client search is a projection of this service's events."""
    server = TestServer(
        create_bookings_app(BookingsSettings(**overrides, auth_url=auth_url)), host="127.0.0.1"
    )
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


@dataclass
class Registrar:
    """Calls the registrations API for one clinic with a clinic token."""

    http: aiohttp.ClientSession
    base: str
    tenant: Tenant
    token: str

    @property
    def clinic_id(self) -> str:
        return self.tenant.clinic_id

    @property
    def group_id(self) -> str:
        return self.tenant.group_id

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        expect: int | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        base: str | None = None,
    ) -> tuple[int, Any, CIMultiDict[str]]:
        url = f"{base or self.base}/v1/clinics/{self.clinic_id}{path}"
        return await bearer_call(
            self.http,
            method,
            url,
            self.token,
            body,
            expect=expect,
            headers=headers,
            params=params,
        )

    async def register(
        self, body: dict[str, Any], *, key: str | None = None, expect: int | None = 201
    ) -> tuple[int, Any, CIMultiDict[str]]:
        headers = {"Idempotency-Key": key} if key else None
        return await self.call("POST", "/registrations", body, expect=expect, headers=headers)

    async def client(self, client_id: str, *, expect: int | None = 200) -> Any:
        _, body, _ = await self.call("GET", f"/registrations/clients/{client_id}", expect=expect)
        return body


async def make_registrar(
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    base: str,
    *,
    scopes: list[str] | None = None,
) -> Registrar:
    tenant = await admin.tenant(scopes=scopes or SCOPES)
    token = await get_token(tenant, clinic_id=tenant.clinic_id)
    return Registrar(http, base, tenant, token["access_token"])


@pytest.fixture
async def registrar(
    admin: Admin, get_token: TokenFactory, http: aiohttp.ClientSession, registrations_url: str
) -> Registrar:
    return await make_registrar(admin, get_token, http, registrations_url)


async def sibling(
    admin: Admin,
    get_token: TokenFactory,
    of: Registrar,
    *,
    country: str = "GB",
    time_zone: str = "Europe/London",
    scopes: list[str] | None = None,
) -> Registrar:
    """Another clinic of the same group, granted to the same application."""
    clinic = await admin.call(
        "POST",
        "/v1/admin/clinics",
        {
            "group_id": of.group_id,
            "name": f"Sibling {uuid.uuid4().hex[:8]}",
            "time_zone": time_zone,
            "country": country,
            "sandbox": True,
        },
        201,
    )
    chosen = scopes or SCOPES
    grant = await admin.call(
        "POST",
        "/v1/admin/grants",
        {
            "application_id": of.tenant.application_id,
            "clinic_id": clinic["id"],
            "scopes": chosen,
        },
        201,
    )
    tenant = dataclasses.replace(
        of.tenant, clinic_id=clinic["id"], grant_id=grant["id"], scopes=chosen
    )
    token = await get_token(tenant, clinic_id=tenant.clinic_id)
    return Registrar(of.http, of.base, tenant, token["access_token"])


async def narrowed(get_token: TokenFactory, of: Registrar, scope: str) -> Registrar:
    """The same clinic with a token narrowed to ``scope``."""
    token = await get_token(of.tenant, clinic_id=of.clinic_id, scope=scope)
    return dataclasses.replace(of, token=token["access_token"])


class Operator:
    """The operator endpoints of the registrations service, with the admin token."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        expect: int | None = None,
        token: str = ADMIN_TOKEN,
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as r:
            data = await r.json(content_type=None)
            if expect is not None:
                assert r.status == expect, (r.status, data)
            return r.status, data


@pytest.fixture
def operator(http: aiohttp.ClientSession, registrations_url: str) -> Operator:
    return Operator(http, registrations_url)


class Bus:
    """Every ``client.*`` / ``patient.*`` event on the run's exchange, as it arrives."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        async with message.process():
            event = parse_message(message)
            if event is not None:
                self.events.append(event)

    def about(self, client_id: str) -> list[Event]:
        return [e for e in self.events if e.data.get("client_id") == client_id]

    async def wait_for(
        self, client_id: str, types: list[str], *, seconds: float = 15.0
    ) -> list[Event]:
        """The client's events once their types (in any order) include all of ``types``."""

        async def probe() -> list[Event] | None:
            seen = self.about(client_id)
            kinds = [e.type for e in seen]
            return seen if all(kinds.count(t) >= types.count(t) for t in types) else None

        return await eventually(probe, f"events {types} of client {client_id}", seconds=seconds)


@pytest.fixture(scope="session")
async def bus(amqp_url: str, overrides: dict[str, Any]) -> AsyncIterator[Bus]:
    listener = Bus()
    broker = Broker(amqp_url, overrides["events_exchange"])
    await broker.connect_forever()
    await broker.subscribe_broadcast(("client.*", "patient.*"), listener.on_message)
    yield listener
    await broker.close()


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


# --- request bodies and answers --------------------------------------------------------------


def tag() -> str:
    return uuid.uuid4().hex[:8]


def pet(name: str = "Rex", species: str = "dog", **extra: Any) -> dict[str, Any]:
    return {"name": name, "species": species, **extra}


def registration(
    *,
    first: str = "Ann",
    last: str = "Lee",
    email: str | None = "ann.lee@example.com",
    phone: str | None = "020 7946 0958",
    pets: list[dict[str, Any]] | None = None,
    consents: dict[str, bool] | None = None,
    **client: Any,
) -> dict[str, Any]:
    owner: dict[str, Any] = {"first_name": first, "last_name": last, **client}
    if email is not None:
        owner["email"] = email
    if phone is not None:
        owner["phone"] = phone
    body: dict[str, Any] = {"client": owner, "patients": pets or [pet()]}
    if consents is not None:
        body["consents"] = consents
    return body


def slug_of(problem: Any) -> str:
    assert isinstance(problem, dict), problem
    assert str(problem.get("type", "")).startswith(PROBLEM_BASE), problem
    return str(problem["type"]).removeprefix(PROBLEM_BASE)


def assert_problem(status: int, problem: Any, expected: int, slug: str) -> None:
    assert status == expected, (status, problem)
    assert slug_of(problem) == slug, problem


def field_errors(problem: Any) -> dict[str, str]:
    return {e["field"]: e["message"] for e in problem.get("errors", [])}
