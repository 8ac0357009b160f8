"""The API contract, fuzzed: schemathesis against every service's own ``/openapi.json``.

For each operation of the four services, Hypothesis generates requests from the document the
running server serves (valid ones, and ones that break the schema) and sends them with real
credentials, so that they get past authentication and reach validation and the handlers:

* clinic paths: a clinic token of a fresh tenant granted every clinic scope, ``clinic_id`` fixed
  to its clinic (and the ids of a real practitioner, client, pet ... where the path has them);
* ``/v1/webhooks`` and ``/v1/events``: an application token (``webhooks:manage events:read``);
* ``/v1/admin`` and the operator paths: the admin token; ``/internal``: the internal token;
* ``/oauth/*``: HTTP Basic with the tenant's client credentials.

Every answer must be no 5xx, have a documented status code and content type, match the
documented schema, and every error must be RFC 9457 problem details (``application/json`` with
the RFC 6749 ``error`` member on the OAuth endpoints).

The auth service is fuzzed on a private instance (its own schema and exchange): fuzzing its
operator API rotates signing keys and creates directory entries, which must not leak into the
rest of the run. While requests are sent, the event loop's name lookups answer only for
loopback, numeric and the infrastructure's hosts, and connections to anything but loopback are
refused and recorded: generated webhook URLs never reach the network, and a connection the SSRF
policy should have stopped (private, link-local ... addresses) fails the test.

Hypothesis runs in a worker thread (schemathesis' transport is synchronous ``requests``) while the
servers keep serving on the test's event loop. Generation is derandomized: every run sends the
same requests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiohttp
import asyncpg
import pytest
import requests
import schemathesis
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from services import registry
from services.auth.app import create_app as create_auth_app
from services.auth.routes import build_api as auth_api
from services.auth.settings import AuthSettings
from services.bookings.app import create_app as create_bookings_app
from services.bookings.routes import build_api as bookings_api
from services.bookings.settings import BookingsSettings
from services.callbacks.routes import build_api as callbacks_api
from services.callbacks.ssrf import refusal
from services.registrations.app import create_app as create_registrations_app
from services.registrations.routes import build_api as registrations_api
from services.registrations.settings import RegistrationsSettings
from shared import migrations
from shared.api import Api
from shared.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE
from shared.settings import ServiceSettings
from tests.callbacks.conftest import LOCAL_HOSTS, free_port, projected, start_callbacks
from tests.conftest import ADMIN_TOKEN, RUN_ID, Admin, Tenant, basic_auth, bearer_call
from tests.registrations.conftest import registration

#: Generated requests per operation (valid and invalid ones together).
MAX_EXAMPLES = 20
CLINIC_SCOPES = ["bookings:read", "bookings:write", "registrations:write", "clients:read"]
APP_SCOPES = "webhooks:manage events:read"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
APIS: dict[str, Callable[[], Api]] = {
    "auth": auth_api,
    "bookings": bookings_api,
    "registrations": registrations_api,
    "callbacks": callbacks_api,
}
FORM = "application/x-www-form-urlencoded"
CLINIC = "/v1/clinics/{clinic_id}"
PRACTITIONER = CLINIC + "/practitioners/{practitioner_id}"

#: Requests sent to an operation on every run before the generated ones: what the fuzzer (or a
#: probe after it) once answered with a 5xx, by test id. Values are ``operation.Case`` arguments
#: (path parameters are added to the fixed ones; ``headers`` replace the credentials').
EXAMPLES: dict[str, list[dict[str, Any]]] = {
    # U+0000 reached PostgreSQL ("invalid byte sequence for encoding UTF8: 0x00").
    f"bookings POST {CLINIC}/services": [
        {"body": {"name": "Vaccination\x00", "duration_minutes": 15}},
    ],
    f"bookings GET {CLINIC}/practitioners": [
        {"query": {"external_id": "PMS\x00"}},
        # A cursor is the client's to tamper with: a time out of range inside.
        {
            "query": {
                "cursor": base64.urlsafe_b64encode(
                    b'["0001-01-01T00:00:00+05:00", "00000000-0000-0000-0000-000000000000"]'
                ).decode()
            }
        },
    ],
    f"bookings GET {CLINIC}/mappings/{{resource_type}}": [
        {
            "path_parameters": {"resource_type": "practitioner"},
            "query": {"cursor": base64.urlsafe_b64encode(b'["PMS\\u0000"]').decode()},
        },
    ],
    f"bookings GET {CLINIC}/mappings/{{resource_type}}/{{external_id}}": [
        {"path_parameters": {"resource_type": "practitioner", "external_id": "PMS\x00"}},
    ],
    f"bookings DELETE {CLINIC}/mappings/{{resource_type}}/{{external_id}}": [
        {"path_parameters": {"resource_type": "practitioner", "external_id": "PMS\x00"}},
    ],
    # Times Python or PostgreSQL cannot hold once in UTC (or in the clinic zone) were a 500;
    # local mean time (London before 1847: -00:01:15) was rendered as no RFC 3339 date-time.
    f"bookings POST {PRACTITIONER}/breaks": [
        {"body": {"start": "0001-01-01T00:00:00+05:00", "end": "0001-01-01T01:00:00+05:00"}},
        {"body": {"start": "9999-12-31T22:00:00-05:00", "end": "9999-12-31T23:00:00-05:00"}},
        {"body": {"start": "1800-03-03T08:30:00+00:00", "end": "1800-03-03T09:30:00+00:00"}},
    ],
    f"bookings GET {PRACTITIONER}/breaks": [
        {"query": {"from": "0001-01-01T00:00:00+05:00", "to": "0001-01-02T00:00:00+05:00"}},
        {"query": {"from": "1800-03-03T00:00:00+00:00", "to": "1800-03-04T00:00:00+00:00"}},
    ],
    f"bookings PUT {PRACTITIONER}/slots/{{date}}": [
        {"path_parameters": {"date": "9999-12-31"}, "body": {"slots": []}},
    ],
    f"bookings GET {CLINIC}/bookings": [
        {"query": {"from": "0001-01-01T00:00:00+05:00"}},
        {"query": {"to": "9999-12-31T23:00:00-05:00"}},
    ],
    "callbacks POST /v1/webhooks/endpoints/{endpoint_id}/recover": [
        {"body": {"since": "0001-01-01T00:00:00+05:00"}},
    ],
    "auth GET /v1/clinics": [
        {"query": {"updated_since": "0001-01-01T00:00:00+05:00"}},
    ],
    # U+0000 in a client id, user name or token reached PostgreSQL.
    "auth POST /oauth/token": [
        {
            "body": {"grant_type": "password", "username": "vet\x00", "password": "x"},
            "media_type": FORM,
        },
        {
            "body": {
                "grant_type": "client_credentials",
                "client_id": "a\x00",
                "client_secret": "b",
            },
            "media_type": FORM,
            "headers": {"Authorization": ""},
        },
        {
            "body": {"grant_type": "client_credentials"},
            "media_type": FORM,
            "headers": {"Authorization": "Basic " + base64.b64encode(b"a%00b:c").decode()},
        },
    ],
    "auth POST /oauth/introspect": [{"body": {"token": "a\x00"}, "media_type": FORM}],
}


#: Path parameters the documents call mere strings, with values that pass their parsing: some of
#: the generated requests use them, so that lookups run too, not only the 422 for a bad id.
LIKELY = {
    "resource_type": "practitioner",
    "date": "2027-03-01",
    "booking_id": "6f1c4a52-0d1e-4d39-9a55-000000000001",
    "break_id": "6f1c4a52-0d1e-4d39-9a55-000000000002",
    "delivery_id": "6f1c4a52-0d1e-4d39-9a55-000000000003",
}


def _operations() -> list[Any]:
    return [
        pytest.param(service, op.method, op.path, id=f"{service} {op.method} {op.path}")
        for service, build in APIS.items()
        for op in build().operations
    ]


# --- the network seen by the servers --------------------------------------------------------------


@dataclass
class NetworkGuard:
    """Name lookups only for loopback, numeric and the infrastructure's hosts; connections only
    to loopback (and Unix sockets). Everything else is refused and recorded."""

    loop: asyncio.AbstractEventLoop
    infrastructure: frozenset[str]
    lookups_refused: list[str] = field(default_factory=list)
    connects_refused: list[str] = field(default_factory=list)
    _getaddrinfo: Any = None
    _sock_connect: Any = None

    async def getaddrinfo(self, host: Any, port: Any, **kw: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name != "localhost" and name not in self.infrastructure:
            kw["flags"] = kw.get("flags", 0) | socket.AI_NUMERICHOST
        try:
            return await self._getaddrinfo(host, port, **kw)
        except socket.gaierror:
            self.lookups_refused.append(str(name))
            raise

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
            if not ip.is_loopback:
                self.connects_refused.append(str(ip))
                raise ConnectionRefusedError(f"tests connect nowhere but loopback, not {ip}")
        await self._sock_connect(sock, address)

    @contextlib.contextmanager
    def installed(self) -> Iterator[NetworkGuard]:
        self._getaddrinfo, self._sock_connect = self.loop.getaddrinfo, self.loop.sock_connect
        self.loop.getaddrinfo = self.getaddrinfo  # type: ignore[method-assign]
        self.loop.sock_connect = self.sock_connect  # type: ignore[method-assign]
        try:
            yield self
        finally:
            del self.loop.getaddrinfo
            del self.loop.sock_connect

    def internal_connects(self) -> list[str]:
        """Refused connections to addresses the SSRF policy itself should have refused."""
        return [ip for ip in self.connects_refused if refusal(ip) is not None]


# --- the servers under test -----------------------------------------------------------------------


@dataclass
class Target:
    """One running service, the credentials for its paths and the ids its paths are fixed to."""

    url: str
    headers: Callable[[str, dict[str, Any]], dict[str, str]]
    path_ids: dict[str, str]
    #: Ids for one operation ("METHOD path"), e.g. a resource of its own for a DELETE.
    own_ids: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Values for the other path parameters, used in some of the requests (see ``LIKELY``).
    likely: dict[str, str] = field(default_factory=dict)

    def ids_for(self, method: str, path: str) -> dict[str, str]:
        return {**self.path_ids, **self.own_ids.get(f"{method} {path}", {})}


@dataclass
class World:
    targets: dict[str, Target]
    infrastructure: frozenset[str]
    callbacks_url: str
    url_tester_token: str

    def guard(self) -> NetworkGuard:
        return NetworkGuard(asyncio.get_running_loop(), self.infrastructure)


async def _start(app: web.Application, stack: contextlib.AsyncExitStack) -> str:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    stack.push_async_callback(server.close)
    return str(server.make_url("")).rstrip("/")


async def _token(http: aiohttp.ClientSession, auth_url: str, tenant: Tenant, **form: str) -> str:
    data = {"grant_type": "client_credentials", **form}
    headers = basic_auth(tenant.client_id, tenant.client_secret)
    async with http.post(auth_url + "/oauth/token", data=data, headers=headers) as r:
        body = await r.json(content_type=None)
        assert r.status == 200, body
        return str(body["access_token"])


async def _created(http: aiohttp.ClientSession, url: str, token: str, body: Any) -> str:
    _, data, _ = await bearer_call(http, "POST", url, token, body, expect=201)
    return str(data["id"])


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _private_auth(
    overrides: dict[str, Any], database_url: str, stack: contextlib.AsyncExitStack
) -> str:
    """An auth server on a schema and an exchange of its own."""
    tag = secrets.token_hex(3)
    settings = AuthSettings(
        **{
            **overrides,
            "db_schema": f"auth_contract_{tag}",
            "events_exchange": f"vetgate.test.{RUN_ID}.contract-{tag}",
            "queue_prefix": f"vetgate-test-{RUN_ID}-contract-{tag}",
        },
        key_publish_delay_seconds=0.0,
        key_cache_seconds=0.2,
    )
    conn = await asyncpg.connect(database_url)
    try:
        await migrations.apply(
            conn, settings.db_schema, migrations.migrations_for(registry.get("auth").directory)
        )
    finally:
        await conn.close()

    async def drop_exchanges() -> None:
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            for name in (settings.events_exchange, settings.events_exchange + ".dlx"):
                await channel.exchange_delete(name)

    stack.push_async_callback(drop_exchanges)
    return await _start(create_auth_app(settings), stack)


async def _receiver(stack: contextlib.AsyncExitStack) -> str:
    """A partner's webhook endpoint on loopback that accepts everything."""

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", accept)
    return await _start(app, stack) + "/hooks"


async def _auth_target(
    overrides: dict[str, Any],
    database_url: str,
    http: aiohttp.ClientSession,
    stack: contextlib.AsyncExitStack,
) -> Target:
    """A tenant whose application the OAuth endpoints authenticate, and a second application
    that the operator API approves, suspends and loses grants of."""
    url = await _private_auth(overrides, database_url, stack)
    private = Admin(http, url)
    owner = await private.tenant(scopes=CLINIC_SCOPES)
    victim = await private.tenant(scopes=CLINIC_SCOPES)
    directory_token = await _token(http, url, owner, scope="clinics:read")
    internal = ServiceSettings().internal_token.get_secret_value()

    def headers(path: str, op: dict[str, Any]) -> dict[str, str]:
        schemes = {name for requirement in op.get("security", []) for name in requirement}
        if "basic" in schemes:
            return basic_auth(owner.client_id, owner.client_secret)
        if path.startswith("/internal/"):
            return _bearer(internal)
        if path.startswith("/v1/admin/"):
            return _bearer(ADMIN_TOKEN)
        return _bearer(directory_token) if schemes else {}

    return Target(
        url,
        headers,
        {
            "clinic_id": owner.clinic_id,
            "partner_id": owner.partner_id,
            "app_id": victim.application_id,
            "grant_id": victim.grant_id,
        },
    )


@pytest.fixture(scope="module")
async def world(
    overrides: dict[str, Any],
    database_url: str,
    auth_url: str,
    admin: Admin,
    http: aiohttp.ClientSession,
) -> AsyncIterator[World]:
    async with contextlib.AsyncExitStack() as stack:
        auth = await _auth_target(overrides, database_url, http, stack)

        # bookings and registrations: one tenant granted every clinic scope.
        tenant = await admin.tenant(scopes=CLINIC_SCOPES)
        token = await _token(http, auth_url, tenant, clinic_id=tenant.clinic_id)
        bookings_url = await _start(
            create_bookings_app(BookingsSettings(**overrides, auth_url=auth_url)), stack
        )
        registrations_url = await _start(
            create_registrations_app(RegistrationsSettings(**overrides, auth_url=auth_url)), stack
        )
        clinic = CLINIC.format(clinic_id=tenant.clinic_id)
        catalogue = {
            kind: await _created(http, f"{bookings_url}{clinic}/{kind}", token, body)
            for kind, body in (
                ("practitioners", {"name": "Dr Fuzz"}),
                ("services", {"name": "Check-up", "duration_minutes": 15}),
                ("insurances", {"name": "PetCover"}),
            )
        }
        registrations = f"{registrations_url}{clinic}/registrations"
        _, client, _ = await bearer_call(
            http, "POST", registrations, token, registration(), expect=201
        )
        doomed_client = await _created(
            http,
            registrations,
            token,
            registration(first="Bo", last="Fox", email="bo@example.com", phone="020 7946 0959"),
        )

        def clinic_headers(path: str, op: dict[str, Any]) -> dict[str, str]:
            return _bearer(ADMIN_TOKEN if path.startswith("/v1/groups/") else token)

        bookings = Target(
            bookings_url,
            clinic_headers,
            {"clinic_id": tenant.clinic_id, "practitioner_id": catalogue["practitioners"]},
            {
                f"{method} {CLINIC}/{kind}/{{resource_id}}": {"resource_id": resource_id}
                for kind, resource_id in catalogue.items()
                for method in ("GET", "PATCH", "DELETE")
            },
        )
        erase = {"client_id": doomed_client}
        registrations_target = Target(
            registrations_url,
            clinic_headers,
            {
                "clinic_id": tenant.clinic_id,
                "group_id": tenant.group_id,
                "client_id": client["id"],
                "patient_id": client["patients"][0]["id"],
            },
            {
                f"POST {CLINIC}/registrations/clients/{{client_id}}/erase": erase,
                "POST /v1/groups/{group_id}/clients/{client_id}/erase": erase,
            },
        )

        # callbacks: an application token of another tenant, and endpoints on loopback.
        callbacks_base = {
            **overrides,
            "auth_url": auth_url,
            "webhook_allowed_hosts": LOCAL_HOSTS,
            "ping_interval_seconds": 3600.0,
            "dispatch_poll_seconds": 0.1,
            "smtp_host": "127.0.0.1",
            "smtp_port": free_port(),
            "connect_timeout_seconds": 2.0,
            "attempt_timeout_seconds": 3.0,
        }
        callbacks, stop = await start_callbacks(callbacks_base, database_url)
        stack.push_async_callback(stop)
        partner = await admin.tenant(scopes=CLINIC_SCOPES)
        app_token = await _token(http, auth_url, partner, scope=APP_SCOPES)
        await projected(callbacks, partner)
        hook = {"url": await _receiver(stack)}
        endpoints = callbacks.url + "/v1/webhooks/endpoints"
        endpoint = await _created(http, endpoints, app_token, hook)
        doomed_endpoint = await _created(http, endpoints, app_token, hook)
        _, sent, _ = await bearer_call(
            http, "POST", f"{endpoints}/{endpoint}/test", app_token, expect=200
        )
        callbacks_target = Target(
            callbacks.url,
            lambda path, op: _bearer(app_token),
            {"endpoint_id": endpoint},
            {"DELETE /v1/webhooks/endpoints/{endpoint_id}": {"endpoint_id": doomed_endpoint}},
            likely={"delivery_id": sent["delivery_id"]},
        )
        url_tester = await admin.tenant(scopes=CLINIC_SCOPES)

        hosts = {urlsplit(overrides[k]).hostname for k in ("database_url", "amqp_url")}
        yield World(
            targets={
                "auth": auth,
                "bookings": bookings,
                "registrations": registrations_target,
                "callbacks": callbacks_target,
            },
            infrastructure=frozenset(h for h in hosts if h),
            callbacks_url=callbacks.url,
            url_tester_token=await _token(http, auth_url, url_tester, scope=APP_SCOPES),
        )


@pytest.fixture(scope="module")
async def documents(world: World, http: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
    """Each service's OpenAPI document, as its server serves it."""
    served = {}
    for service, target in world.targets.items():
        async with http.get(target.url + "/openapi.json") as r:
            assert r.status == 200
            served[service] = await r.json()
    return served


def load(document: dict[str, Any]) -> Any:
    """The schema as schemathesis sees it; credentials are always the fixtures' valid ones (no
    generated or removed ``Authorization``), so every request reaches validation."""
    config = schemathesis.Config()
    config.projects.default.generation.update(with_security_parameters=False)
    return schemathesis.openapi.from_dict(document, config=config)


# --- the checks -----------------------------------------------------------------------------------


def _media_type(response: Any) -> str:
    values = response.headers.get("content-type") or [""]
    return str(values[0]).split(";", 1)[0].strip().lower()


def check_problem(response: Any, *, oauth: bool) -> None:
    """Errors are RFC 9457 problem details; the OAuth endpoints' are RFC 6749 JSON as well."""
    if response.status_code < 400:
        return
    media_type = _media_type(response)
    body = response.json()
    assert isinstance(body, dict), body
    if oauth and media_type == "application/json":
        assert isinstance(body.get("error"), str), body
    else:
        assert media_type == PROBLEM_CONTENT_TYPE, (response.status_code, media_type, body)
    assert str(body.get("type", "")).startswith(PROBLEM_BASE), body
    assert isinstance(body.get("title"), str), body
    assert body.get("status") == response.status_code, body


QUICK = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def fuzz(schema: Any, test_id: str, method: str, path: str, target: Target) -> None:
    """The examples, then generated valid and invalid requests, through every check."""
    operation = schema[path][method]
    spec = schema.raw_schema["paths"][path][method.lower()]
    ids = target.ids_for(method, path)
    template = [p["name"] for p in spec.get("parameters", []) if p["in"] == "path"]
    fixed = {name: ids[name] for name in template if name in ids}
    headers = target.headers(path, spec)
    oauth = path.startswith("/oauth/")

    def send(case: Any, extra: dict[str, str]) -> None:
        response = case.call_and_validate(
            base_url=target.url,
            session=session,
            headers={**headers, **extra},
            checks=CHECKS,
            timeout=30,
        )
        check_problem(response, oauth=oauth)

    with requests.Session() as session:
        for example in EXAMPLES.get(test_id, []):
            kwargs = dict(example)
            extra = kwargs.pop("headers", {})
            kwargs["path_parameters"] = {**fixed, **kwargs.get("path_parameters", {})}
            send(operation.Case(**kwargs), extra)

        likely = {**LIKELY, **target.likely}
        guessed = {n: likely[n] for n in template if n in likely and n not in fixed}
        variants = [fixed, {**fixed, **guessed}] if guessed else [fixed]
        strategies = []
        for path_parameters in variants:
            strategies.append(
                operation.as_strategy(GenerationMode.POSITIVE, path_parameters=path_parameters)
            )
            # Only where something is left to break: a negative case must negate something.
            if "requestBody" in spec or any(
                p["name"] not in path_parameters for p in spec.get("parameters", [])
            ):
                strategies.append(
                    operation.as_strategy(GenerationMode.NEGATIVE, path_parameters=path_parameters)
                )
        strategy = st.one_of(strategies)

        @settings(QUICK, max_examples=MAX_EXAMPLES)
        @given(case=strategy)
        def contract(case: Any) -> None:
            send(case, {})

        contract()


# --- the tests ------------------------------------------------------------------------------------


async def test_every_served_operation_is_fuzzed(documents: dict[str, dict[str, Any]]) -> None:
    for service, document in documents.items():
        assert document == APIS[service]().openapi(), service
        served = {(m.upper(), p) for p, ops in document["paths"].items() for m in ops}
        fuzzed = {(op.method, op.path) for op in APIS[service]().operations}
        assert served == fuzzed, service
    assert set(EXAMPLES) <= {p.id for p in _operations()}


@pytest.mark.parametrize(("service", "method", "path"), _operations())
async def test_operation_honours_its_contract(
    service: str,
    method: str,
    path: str,
    world: World,
    documents: dict[str, dict[str, Any]],
) -> None:
    schema = load(documents[service])
    test_id = f"{service} {method} {path}"
    with world.guard().installed() as guard:
        await asyncio.to_thread(fuzz, schema, test_id, method, path, world.targets[service])
    # Generated webhook URLs may name public hosts (the guard kept those off the network), but
    # nothing may have tried a private, link-local or otherwise internal address.
    assert not guard.internal_connects(), guard.connects_refused


def _webhook_urls() -> st.SearchStrategy[str]:
    """URLs aimed at the platform's own network, or anywhere, in the forms parsers disagree on."""
    hosts = st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
        st.sampled_from(
            [
                "localhost",
                "127.0.0.1",
                "127.1",
                "0",
                "0.0.0.0",
                "2130706433",
                "0x7f000001",
                "017700000001",
                "[::1]",
                "[::ffff:127.0.0.1]",
                "[::ffff:a9fe:a9fe]",
                "[2002:a9fe:a9fe::]",
                "169.254.169.254",
                "100.100.100.200",
                "metadata.google.internal",
                "10.0.0.1",
                "192.168.0.1",
                "example.com",
            ]
        ),
        st.from_regex(r"\A[a-z0-9-]{1,12}(\.[a-z0-9-]{1,8}){0,2}\Z"),
    )
    return st.builds(
        "{}://{}{}{}{}".format,
        st.sampled_from(["http", "https", "HTTP", "ftp", "file", "gopher"]),
        st.sampled_from(["", "user:pw@", "127.0.0.1@", "a@127.0.0.1:1@"]),
        hosts,
        st.sampled_from(["", ":0", ":80", ":8080", ":65535", ":65536", ":-1"]),
        st.sampled_from(["/", "/hooks", "/a?b=c", "/#frag", "", "/%00"]),
    )


def _accepted_host_is_public(url: str) -> None:
    """A URL the service accepted names an allowed host or a public address."""
    host = urlsplit(url).hostname or ""
    if host in LOCAL_HOSTS:
        return
    # The guard answers numeric names only, so that is what the service could have resolved.
    found = socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    for entry in found:
        address = str(entry[4][0])
        assert refusal(address) is None, (url, address)


async def test_generated_webhook_urls_never_reach_the_network(world: World) -> None:
    """Endpoint URLs aimed everywhere: a 201 only for public or allowed hosts, a 422 for the
    rest, never a 5xx, never a connection."""
    url = world.callbacks_url + "/v1/webhooks/endpoints"
    headers = _bearer(world.url_tester_token)

    def run() -> None:
        with requests.Session() as session:

            @settings(QUICK, max_examples=100)
            @given(target=_webhook_urls())
            def create(target: str) -> None:
                r = session.post(url, json={"url": target}, headers=headers, timeout=30)
                assert r.status_code in (201, 409, 422), (target, r.status_code, r.text)
                if r.status_code == 201:
                    _accepted_host_is_public(target)
                    session.delete(f"{url}/{r.json()['id']}", headers=headers, timeout=30)

            create()

    with world.guard().installed() as guard:
        await asyncio.to_thread(run)
    assert guard.connects_refused == [], guard.lookups_refused


async def test_the_guard_keeps_deliveries_off_the_network(
    world: World, http: aiohttp.ClientSession
) -> None:
    """What makes the checks above meaningful: a delivery to a public address is attempted, and
    the guard refuses (and records) the connection."""
    url = world.callbacks_url + "/v1/webhooks/endpoints"
    token = world.url_tester_token
    endpoint = await _created(http, url, token, {"url": "http://1.1.1.1/hooks"})
    with world.guard().installed() as guard:
        _, result, _ = await bearer_call(http, "POST", f"{url}/{endpoint}/test", token, expect=200)
    await bearer_call(http, "DELETE", f"{url}/{endpoint}", token, expect=204)
    assert result["succeeded"] is False, result
    assert guard.connects_refused == ["1.1.1.1"]
    assert not guard.internal_connects()
