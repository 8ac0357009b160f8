"""The local gateway: one public base URL in front of the four services.

It routes exactly as ``deploy/nginx/nginx.conf`` does in containers, so that the process topology
used in development and tests is the one deployed.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import aiohttp
import yarl
from aiohttp import web

from shared.errors import NotFound, PayloadTooLarge, ProblemError, ServiceUnavailable
from shared.web import problem_response, request_id_of

MAX_BODY = 1024 * 1024
_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
    )
)

#: Public path → service. Paths never collide across services; first match wins.
ROUTES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), service)
    for pattern, service in (
        (r"^/oauth/", "auth"),
        (r"^/\.well-known/", "auth"),
        (r"^/v1/admin/", "auth"),
        (r"^/v1/clinics/?$", "auth"),
        (r"^/v1/clinics/[^/]+/?$", "auth"),
        (
            r"^/v1/clinics/[^/]+/(practitioners|services|insurances|mappings|availability|"
            r"bookings|clients|schedules|slots|breaks)(/|$)",
            "bookings",
        ),
        (r"^/v1/clinics/[^/]+/(registrations|registration-form|patients)(/|$)", "registrations"),
        (r"^/v1/groups/", "registrations"),
        (r"^/v1/webhooks/", "callbacks"),
        (r"^/v1/events/?$", "callbacks"),
    )
)
_DOCS = re.compile(r"^/openapi/(auth|bookings|registrations|callbacks)\.json$")

UPSTREAMS: web.AppKey[dict[str, str]] = web.AppKey("upstreams")
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("gateway_session")


def route(path: str) -> tuple[str, str] | None:
    """(service, upstream path) for a public path, or None if nothing serves it."""
    docs = _DOCS.match(path)
    if docs:
        return docs.group(1), "/openapi.json"
    for pattern, service in ROUTES:
        if pattern.match(path):
            return service, path
    return None


async def proxy(request: web.Request) -> web.StreamResponse:
    request_id = request_id_of(request)
    try:
        if request.path == "/healthz":
            return web.json_response({"status": "ok", "service": "gateway"})
        # Dot segments would be resolved by the upstream client after routing; refuse them so
        # that the route decided here is the route taken. Routing sees the decoded path, so
        # percent-encoded dots (``%2e%2e``) count too.
        segments = request.raw_path.split("?", 1)[0].split("/") + request.path.split("/")
        if any(part in (".", "..") for part in segments):
            raise ProblemError("Dot segments are not allowed in API paths", slug="bad-path")
        target = route(request.path)
        if target is None:
            raise NotFound(f"No API path {request.path}")
        service, path = target
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise PayloadTooLarge("The request body exceeds 1 MB")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["X-Request-Id"] = request_id
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        # Kept when a TLS terminator in front of the gateway set it, as nginx does.
        headers["X-Forwarded-Proto"] = request.headers.get("X-Forwarded-Proto") or request.scheme
        headers["X-Forwarded-Host"] = request.host
        # The path and query go upstream as sent, like nginx's proxy_pass: re-encoding the decoded
        # path would turn an escaped "?" or "#" into a query or a fragment.
        raw = request.rel_url.raw_path if path == request.path else path
        if request.rel_url.raw_query_string:
            raw += "?" + request.rel_url.raw_query_string
        url = yarl.URL(request.app[UPSTREAMS][service] + raw, encoded=True)
        try:
            async with request.app[SESSION].request(
                request.method,
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
            ) as upstream:
                payload = await upstream.read()
                response = web.Response(status=upstream.status, body=payload)
                for key, value in upstream.headers.items():
                    # The body is passed on as received (no auto_decompress), so its
                    # Content-Encoding must go with it.
                    if key.lower() not in _HOP_BY_HOP:
                        response.headers.add(key, value)
                return response
        except (aiohttp.ClientError, TimeoutError):
            raise ServiceUnavailable(
                f"The {service} service is not answering; try again shortly",
                slug="upstream-unavailable",
                headers={"Retry-After": "2"},
            ) from None
    except web.HTTPRequestEntityTooLarge:
        error = problem_response(PayloadTooLarge("The request body exceeds 1 MB"), request)
    except ProblemError as problem:
        error = problem_response(problem, request)
    error.headers["X-Request-Id"] = request_id
    return error


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=30, connect=3)
    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=30)
    app[SESSION] = aiohttp.ClientSession(
        timeout=timeout, connector=connector, auto_decompress=False
    )
    yield
    await app[SESSION].close()


def create_gateway(upstreams: dict[str, str]) -> web.Application:
    """The gateway app; ``upstreams`` maps each service name to its base URL."""
    app = web.Application(client_max_size=MAX_BODY)
    app[UPSTREAMS] = upstreams
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app
