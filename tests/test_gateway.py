"""The local gateway: the routing table of deploy/README.md, and real proxying to real servers."""

from __future__ import annotations

import gzip
import io
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp import web
from aiohttp.test_utils import TestServer

from services.gateway import MAX_BODY, ROUTES, create_gateway, route
from shared.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE

SERVICES = ("auth", "bookings", "registrations", "callbacks")
BOOKINGS_RESOURCES = (
    "practitioners",
    "services",
    "insurances",
    "mappings",
    "availability",
    "bookings",
    "clients",
    "schedules",
    "slots",
    "breaks",
)
REGISTRATIONS_RESOURCES = ("registrations", "registration-form", "patients")
CLINIC = "9ead7be5-f1a9-5a91-811e-f3a6ef65573e"
NGINX_CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx" / "nginx.conf"


# --- route(): the table in deploy/README.md, row by row ----------------------------------------


def _resource_cases() -> list[tuple[str, str]]:
    cases: list[tuple[str, str]] = []
    for service, resources in (
        ("bookings", BOOKINGS_RESOURCES),
        ("registrations", REGISTRATIONS_RESOURCES),
    ):
        for resource in resources:
            base = f"/v1/clinics/{CLINIC}/{resource}"
            cases += [(base, service), (base + "/", service), (base + "/abc/def", service)]
    return cases


ROUTED: list[tuple[str, str]] = [
    # /oauth/…, /.well-known/…, /v1/admin/…
    ("/oauth/token", "auth"),
    ("/oauth/introspect", "auth"),
    ("/oauth/revoke", "auth"),
    ("/oauth/", "auth"),
    ("/.well-known/jwks.json", "auth"),
    ("/.well-known/oauth-authorization-server", "auth"),
    ("/.well-known/", "auth"),
    ("/v1/admin/groups", "auth"),
    ("/v1/admin/applications/abc/approve", "auth"),
    ("/v1/admin/", "auth"),
    # /v1/clinics, /v1/clinics/
    ("/v1/clinics", "auth"),
    ("/v1/clinics/", "auth"),
    # one clinic
    (f"/v1/clinics/{CLINIC}", "auth"),
    (f"/v1/clinics/{CLINIC}/", "auth"),
    ("/v1/clinics/x", "auth"),
    # bookings and registrations resources under a clinic
    *_resource_cases(),
    # /v1/groups/…
    ("/v1/groups/", "registrations"),
    ("/v1/groups/abc/registrations", "registrations"),
    # /v1/webhooks/…, /v1/events, /v1/events/
    ("/v1/webhooks/", "callbacks"),
    ("/v1/webhooks/abc/deliveries", "callbacks"),
    ("/v1/events", "callbacks"),
    ("/v1/events/", "callbacks"),
]


@pytest.mark.parametrize(("path", "service"), ROUTED)
def test_route_sends_public_path_unchanged_to_its_service(path: str, service: str) -> None:
    assert route(path) == (service, path)


@pytest.mark.parametrize("service", SERVICES)
def test_route_serves_each_openapi_document_from_its_service(service: str) -> None:
    assert route(f"/openapi/{service}.json") == (service, "/openapi.json")


NOT_ROUTED = [
    # a resource name must end the path or be followed by "/"
    "/v1/clinics/x/servicesfoo",
    "/v1/clinics/x/bookingsx",
    "/v1/clinics/x/registration-formx",
    "/v1/clinics/x/patients-old",
    "/v1/clinics/x/unknown",
    "/v1/clinics/x/y/bookings",
    "/v1/clinicsx",
    "/v1/clinicsx/abc",
    # paths are matched as sent: repeated slashes are not merged
    "/v1/clinics//",
    "/v1/clinics//bookings",
    "//oauth/token",
    # bare prefixes
    "/oauth",
    "/.well-known",
    "/v1/admin",
    "/v1/groups",
    "/v1/webhooks",
    # events: exactly /v1/events or /v1/events/
    "/v1/events/abc",
    "/v1/eventsx",
    # documents of services that do not exist, or near their names
    "/openapi/gateway.json",
    "/openapi/auth.jsonx",
    "/openapi/auth.json/",
    "/openapi/auth",
    "/openapi.json",
    # the services' operational routes are not public
    "/healthz",
    "/readyz",
    "/metrics",
    "/docs",
    # elsewhere
    "/",
    "",
    "/v1",
    "/v2/clinics",
    "/V1/clinics",
    "/api/oauth/token",
]


@pytest.mark.parametrize("path", NOT_ROUTED)
def test_route_refuses_near_misses(path: str) -> None:
    assert route(path) is None


def test_nginx_routes_the_same_regular_expressions_to_the_same_services() -> None:
    """The routing table exists twice; the regex rows must be identical in both."""
    nginx: dict[str, str] = {}
    for pattern, body in re.findall(
        r"location ~ (\S+) \{(.*?)\}", NGINX_CONF.read_text(), flags=re.DOTALL
    ):
        upstream = re.search(r"proxy_pass http://vetgate_(\w+)", body)
        assert upstream is not None, pattern
        nginx[pattern] = upstream.group(1)
    ours = {pattern.pattern: service for pattern, service in ROUTES}
    assert len(nginx) == 3
    for pattern, service in nginx.items():
        assert ours.get(pattern) == service, pattern


# --- the gateway in front of real upstream servers ---------------------------------------------


def echo_app(service: str) -> web.Application:
    """An upstream that answers with what reached it, as the services echo the request id."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen = {
            "service": service,
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query": [[k, v] for k, v in request.query.items()],
            "body": body.decode("utf-8", "replace"),
            "host": request.headers.get("Host"),
            "request_id": request.headers.getall("X-Request-Id", []),
            "forwarded_for": request.headers.getall("X-Forwarded-For", []),
            "forwarded_proto": request.headers.getall("X-Forwarded-Proto", []),
            "forwarded_host": request.headers.getall("X-Forwarded-Host", []),
            "content_type": request.headers.get("Content-Type"),
            "custom": request.headers.get("X-Custom"),
        }
        status = int(request.headers.get("X-Echo-Status", "200"))
        payload = json.dumps(seen).encode()
        response = web.Response(status=status, content_type="application/json")
        if "X-Echo-Gzip" in request.headers:
            payload = gzip.compress(payload)
            response.headers["Content-Encoding"] = "gzip"
        response.body = payload
        response.headers["X-Upstream"] = service
        response.headers["Cache-Control"] = "no-store"
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        if "X-Request-Id" in request.headers:
            response.headers["X-Request-Id"] = request.headers["X-Request-Id"]
        return response

    app = web.Application(client_max_size=4 * MAX_BODY)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
async def upstreams() -> AsyncIterator[dict[str, str]]:
    servers = {name: TestServer(echo_app(name), host="127.0.0.1") for name in SERVICES}
    for server in servers.values():
        await server.start_server()
    yield {name: str(s.make_url("")).rstrip("/") for name, s in servers.items()}
    for server in servers.values():
        await server.close()


@pytest.fixture(scope="module")
async def gateway_url(upstreams: dict[str, str]) -> AsyncIterator[str]:
    server = TestServer(create_gateway(upstreams), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture(scope="module")
async def half_down_gateway_url(upstreams: dict[str, str]) -> AsyncIterator[str]:
    """A gateway whose bookings upstream is not listening."""
    down = {**upstreams, "bookings": f"http://127.0.0.1:{closed_port()}"}
    server = TestServer(create_gateway(down), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def assert_problem(r: aiohttp.ClientResponse, status: int, slug: str) -> dict[str, Any]:
    assert r.status == status, await r.text()
    assert r.content_type == PROBLEM_CONTENT_TYPE
    body: dict[str, Any] = await r.json(content_type=None)
    assert body["type"] == PROBLEM_BASE + slug
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    return body


@pytest.mark.parametrize(
    ("path", "service"),
    [
        ("/oauth/token", "auth"),
        ("/v1/clinics", "auth"),
        (f"/v1/clinics/{CLINIC}/bookings/b1", "bookings"),
        (f"/v1/clinics/{CLINIC}/registration-form", "registrations"),
        ("/v1/groups/g1/registrations", "registrations"),
        ("/v1/webhooks/w1", "callbacks"),
        ("/v1/events", "callbacks"),
    ],
)
async def test_each_route_reaches_its_upstream(
    http: aiohttp.ClientSession, gateway_url: str, path: str, service: str
) -> None:
    async with http.get(gateway_url + path) as r:
        assert r.status == 200
        seen = await r.json()
    assert seen["service"] == service
    assert seen["path"] == path
    assert r.headers["X-Upstream"] == service


async def test_method_path_query_body_and_headers_are_proxied(
    http: aiohttp.ClientSession, gateway_url: str
) -> None:
    body = json.dumps({"name": "Rex", "note": "ünïcode"}).encode()
    query = [("a", "1"), ("a", "2"), ("q", "hello world"), ("plus", "1+1"), ("empty", "")]
    async with http.put(
        gateway_url + f"/v1/clinics/{CLINIC}/bookings/b1",
        params=query,
        data=body,
        headers={
            "Content-Type": "application/json",
            "X-Request-Id": "gw-test-123",
            "X-Forwarded-For": "203.0.113.7",
            "X-Custom": "kept",
        },
    ) as r:
        assert r.status == 200
        seen = await r.json()
        assert r.headers["X-Request-Id"] == "gw-test-123"
        # Header names come back as the service wrote them (case-sensitive clients exist).
        assert "X-Request-Id" in {name.decode() for name, _ in r.raw_headers}
    assert seen["service"] == "bookings"
    assert seen["method"] == "PUT"
    assert seen["path"] == f"/v1/clinics/{CLINIC}/bookings/b1"
    assert seen["query"] == [list(pair) for pair in query]
    assert seen["body"] == body.decode()
    assert seen["content_type"] == "application/json"
    assert seen["custom"] == "kept"
    assert seen["request_id"] == ["gw-test-123"]
    assert seen["forwarded_for"] == ["203.0.113.7, 127.0.0.1"]
    assert seen["forwarded_proto"] == ["http"]
    gateway_host = yarl.URL(gateway_url).raw_authority
    assert seen["forwarded_host"] == [gateway_host]
    assert seen["host"] == gateway_host


@pytest.mark.parametrize(
    ("raw", "path", "query"),
    [
        ("/v1/webhooks/a%3Fb%23c", "/v1/webhooks/a?b#c", []),
        ("/v1/webhooks/a%20b/%C3%BC?x=%2B1&x=2", "/v1/webhooks/a b/ü", [["x", "+1"], ["x", "2"]]),
        (
            "/v1/events?q=a%26b%3Dc&empty=&flag",
            "/v1/events",
            [["q", "a&b=c"], ["empty", ""], ["flag", ""]],
        ),
        (
            "/v1/events/?redirect=%2Fv1%2Fadmin%2F..%2F",
            "/v1/events/",
            [["redirect", "/v1/admin/../"]],
        ),
    ],
)
async def test_path_and_query_go_upstream_exactly_as_sent(
    http: aiohttp.ClientSession,
    gateway_url: str,
    raw: str,
    path: str,
    query: list[list[str]],
) -> None:
    async with http.get(yarl.URL(gateway_url + raw, encoded=True)) as r:
        assert r.status == 200, await r.text()
        seen = await r.json()
    assert seen["raw_path"] == raw
    assert seen["path"] == path
    assert seen["query"] == query


@pytest.mark.parametrize("method", ["GET", "POST", "PATCH", "DELETE", "OPTIONS"])
async def test_every_method_is_proxied(
    http: aiohttp.ClientSession, gateway_url: str, method: str
) -> None:
    async with http.request(method, gateway_url + "/v1/webhooks/w1", data=b"x") as r:
        assert r.status == 200
        assert (await r.json())["method"] == method


async def test_request_id_is_generated_when_absent(
    http: aiohttp.ClientSession, gateway_url: str
) -> None:
    async with http.get(gateway_url + "/v1/events") as r:
        seen = await r.json()
    assert len(seen["request_id"]) == 1
    assert seen["request_id"][0]
    assert r.headers["X-Request-Id"] == seen["request_id"][0]
    assert seen["forwarded_for"] == ["127.0.0.1"]


async def test_forwarded_headers_sent_in_lower_case_are_replaced_not_duplicated(
    http: aiohttp.ClientSession, gateway_url: str
) -> None:
    headers = {
        "x-request-id": "lower-1",
        "x-forwarded-for": "198.51.100.1",
        "x-forwarded-proto": "https",
        "x-forwarded-host": "spoofed.example",
    }
    async with http.get(gateway_url + "/v1/events", headers=headers) as r:
        seen = await r.json()
    assert seen["request_id"] == ["lower-1"]
    assert seen["forwarded_for"] == ["198.51.100.1, 127.0.0.1"]
    assert seen["forwarded_host"] == [yarl.URL(gateway_url).raw_authority]


async def test_forwarded_proto_from_a_tls_terminator_is_kept(
    http: aiohttp.ClientSession, gateway_url: str
) -> None:
    async with http.get(gateway_url + "/v1/events", headers={"X-Forwarded-Proto": "https"}) as r:
        seen = await r.json()
    assert seen["forwarded_proto"] == ["https"]


@pytest.mark.parametrize("status", [201, 204, 401, 404, 409, 422, 503])
async def test_upstream_status_and_headers_pass_through(
    http: aiohttp.ClientSession, gateway_url: str, status: int
) -> None:
    async with http.post(
        gateway_url + "/v1/admin/groups", headers={"X-Echo-Status": str(status)}
    ) as r:
        assert r.status == status
        assert r.headers["X-Upstream"] == "auth"
        assert r.headers["Cache-Control"] == "no-store"
        assert r.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
        if status != 204:
            assert r.content_type == "application/json"
            assert r.headers.getall("Content-Type") == [r.headers["Content-Type"]]
            assert (await r.json())["service"] == "auth"


async def test_compressed_upstream_answer_keeps_its_content_encoding(
    http: aiohttp.ClientSession, gateway_url: str
) -> None:
    async with http.get(gateway_url + "/v1/events", headers={"X-Echo-Gzip": "1"}) as r:
        assert r.status == 200
        assert r.headers["Content-Encoding"] == "gzip"
        assert (await r.json())["service"] == "callbacks"


async def test_openapi_document_is_fetched_from_the_service(
    http: aiohttp.ClientSession, gateway_url: str
) -> None:
    async with http.get(gateway_url + "/openapi/registrations.json?x=1") as r:
        seen = await r.json()
    assert seen["service"] == "registrations"
    assert seen["path"] == "/openapi.json"


async def test_unknown_path_is_a_404_problem(http: aiohttp.ClientSession, gateway_url: str) -> None:
    for path in ("/nowhere", "/v1/clinics/x/servicesfoo", "/v1/clinicsx", "/readyz"):
        async with http.get(gateway_url + path, headers={"X-Request-Id": "nf-1"}) as r:
            body = await assert_problem(r, 404, "not-found")
            assert r.headers["X-Request-Id"] == "nf-1"
            assert body["instance"] == path


@pytest.mark.parametrize(
    "raw",
    [
        "/v1/clinics/../admin/x",
        "/v1/clinics/x/bookings/../../../admin/groups",
        "/v1/admin/./groups",
        "/oauth/..",
        "/v1/clinics/%2e%2e/admin/x",
        "/v1/clinics/x/bookings/%2E%2E/%2e%2e/%2e%2e/admin/groups",
        "/v1/clinics/x/bookings/.%2e/.%2E/..%2Fadmin%2Fgroups",
        "/v1/webhooks/%2e",
    ],
)
async def test_dot_segments_are_a_400_problem(
    http: aiohttp.ClientSession, gateway_url: str, raw: str
) -> None:
    async with http.get(yarl.URL(gateway_url + raw, encoded=True)) as r:
        await assert_problem(r, 400, "bad-path")
        assert r.headers["X-Request-Id"]


async def test_dots_inside_a_segment_are_not_dot_segments(
    http: aiohttp.ClientSession, gateway_url: str
) -> None:
    async with http.get(gateway_url + "/v1/webhooks/a..b/.c") as r:
        assert r.status == 200
        assert (await r.json())["path"] == "/v1/webhooks/a..b/.c"


async def test_body_over_one_mebibyte_is_a_413_problem(
    http: aiohttp.ClientSession, gateway_url: str
) -> None:
    body = io.BytesIO(b"x" * (MAX_BODY + 1))
    async with http.post(gateway_url + "/v1/admin/groups", data=body) as r:
        await assert_problem(r, 413, "payload-too-large")


async def test_chunked_body_over_one_mebibyte_is_a_413_problem(
    http: aiohttp.ClientSession, gateway_url: str
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * (MAX_BODY // 4)

    async with http.post(gateway_url + "/v1/admin/groups", data=chunks()) as r:
        await assert_problem(r, 413, "payload-too-large")


async def test_body_of_exactly_one_mebibyte_is_proxied(
    http: aiohttp.ClientSession, gateway_url: str
) -> None:
    async with http.post(gateway_url + "/v1/admin/groups", data=b"y" * MAX_BODY) as r:
        assert r.status == 200
        assert len((await r.json())["body"]) == MAX_BODY


async def test_upstream_down_is_a_503_problem_with_retry_after(
    http: aiohttp.ClientSession, half_down_gateway_url: str
) -> None:
    path = f"/v1/clinics/{CLINIC}/bookings"
    async with http.get(half_down_gateway_url + path, headers={"X-Request-Id": "down-1"}) as r:
        body = await assert_problem(r, 503, "upstream-unavailable")
        assert r.headers["Retry-After"] == "2"
        assert r.headers["X-Request-Id"] == "down-1"
    assert "bookings" in body["detail"]
    # The other services behind the same gateway still answer.
    async with http.get(half_down_gateway_url + "/v1/events") as r:
        assert r.status == 200


async def test_gateway_healthz(http: aiohttp.ClientSession, gateway_url: str) -> None:
    async with http.get(gateway_url + "/healthz") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "ok"


async def test_healthz_answers_with_every_upstream_down(http: aiohttp.ClientSession) -> None:
    down = {name: f"http://127.0.0.1:{closed_port()}" for name in SERVICES}
    server = TestServer(create_gateway(down), host="127.0.0.1")
    await server.start_server()
    try:
        async with http.get(server.make_url("/healthz")) as r:
            assert r.status == 200
        async with http.get(server.make_url("/oauth/token")) as r:
            await assert_problem(r, 503, "upstream-unavailable")
    finally:
        await server.close()
