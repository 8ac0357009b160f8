"""The local gateway: one public base URL in front of the four services.

It routes exactly as ``deploy/nginx/nginx.conf`` does in containers, so that the process topology
used in development and tests is the one deployed.

Each service may run as several copies. Requests go round robin across a service's copies; a copy
that refuses a connection is passed over for a few seconds, and the request goes to the next copy
once. A request that reached a copy whose connection then broke before any answer is tried on the
next copy only if repeating it is safe: an idempotent method, or an ``Idempotency-Key`` header.
Otherwise the caller gets a 502 (or a 503 when no copy could be reached, a 504 on a timeout) at
once, as problem+json, like nginx's ``proxy_next_upstream error`` default.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp
import yarl
from aiohttp import web

from services.registry import SERVICE_NAMES as SERVICES
from shared.errors import NotFound, PayloadTooLarge, ProblemError
from shared.web import problem_response, request_id_of

log = logging.getLogger("vetgate.gateway")

MAX_BODY = 1024 * 1024
#: How long a copy that refused a connection is passed over (nginx's ``fail_timeout``).
FAIL_TIMEOUT_SECONDS = 5.0
#: Methods that may be sent twice with the effect of once (RFC 9110 §9.2.2).
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
#: Where ``vetgate run gateway`` reads its upstreams when no ``--upstream`` is given.
UPSTREAMS_ENV = "VETGATE_GATEWAY_UPSTREAMS"
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


class Copies:
    """One service's copies: round robin, passing over those that refused a connection lately."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        fail_timeout: float = FAIL_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("a service needs at least one upstream URL")
        self.urls = tuple(u.rstrip("/") for u in urls)
        self._fail_timeout = fail_timeout
        self._clock = clock
        self._next = 0
        self._down_until: dict[str, float] = {}

    def pick(self) -> list[str]:
        """The copies to try for one request, in order: at most two, distinct."""
        start = self._next
        self._next = (start + 1) % len(self.urls)
        rotation = self.urls[start:] + self.urls[:start]
        now = self._clock()
        # Copies that refused lately go last (stable), so they are tried only if all did.
        ordered = sorted(rotation, key=lambda url: self._down_until.get(url, 0.0) > now)
        return ordered[:2]

    def refused(self, url: str) -> None:
        self._down_until[url] = self._clock() + self._fail_timeout

    def answered(self, url: str) -> None:
        self._down_until.pop(url, None)


def parse_upstreams(entries: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``service=URL[,URL...]`` entries as {service: URLs}; a later entry for a service replaces
    an earlier one. Raises ValueError naming what is wrong."""
    found: dict[str, tuple[str, ...]] = {}
    for entry in entries:
        service, sep, urls = entry.strip().partition("=")
        service = service.strip()
        if not sep or service not in SERVICES:
            raise ValueError(
                f"{entry!r}: expected SERVICE=URL[,URL...], SERVICE one of {', '.join(SERVICES)}"
            )
        copies = tuple(u.strip().rstrip("/") for u in urls.split(",") if u.strip())
        if not copies:
            raise ValueError(f"{entry!r}: no URL for {service}")
        for url in copies:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
                raise ValueError(f"{entry!r}: {url!r} is not a base URL like http://host:port")
        found[service] = copies
    return found


def upstreams_from(
    entries: Sequence[str], environ: Mapping[str, str]
) -> dict[str, tuple[str, ...]]:
    """Upstreams from ``--upstream`` entries over ``VETGATE_GATEWAY_UPSTREAMS`` (entries separated
    by spaces or ``;``); every service must have at least one."""
    from_env = environ.get(UPSTREAMS_ENV, "").replace(";", " ").split()
    upstreams = {**parse_upstreams(from_env), **parse_upstreams(entries)}
    missing = [name for name in SERVICES if name not in upstreams]
    if missing:
        raise ValueError(
            f"no upstream for {', '.join(missing)}: give --upstream SERVICE=URL[,URL...] "
            f"or set {UPSTREAMS_ENV}"
        )
    return upstreams


UPSTREAMS: web.AppKey[dict[str, Copies]] = web.AppKey("upstreams")
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
        return await _forward(request, service, raw, body, headers)
    except web.HTTPRequestEntityTooLarge:
        error = problem_response(PayloadTooLarge("The request body exceeds 1 MB"), request)
    except ProblemError as problem:
        error = problem_response(problem, request)
    error.headers["X-Request-Id"] = request_id
    return error


def _unavailable(service: str, status: int, detail: str) -> ProblemError:
    return ProblemError(
        detail,
        status=status,
        slug="upstream-unavailable",
        title="Service unavailable",
        headers={"Retry-After": "2"},
    )


async def _forward(
    request: web.Request, service: str, raw: str, body: bytes, headers: dict[str, str]
) -> web.Response:
    """Send the request to a copy of ``service``, and to the next copy once if that is safe."""
    copies = request.app[UPSTREAMS][service]
    session = request.app[SESSION]
    repeatable = request.method in IDEMPOTENT_METHODS or "Idempotency-Key" in request.headers
    chosen = copies.pick()
    for attempt, base in enumerate(chosen):
        last = attempt == len(chosen) - 1
        url = yarl.URL(base + raw, encoded=True)
        try:
            upstream = await session.request(
                request.method, url, data=body, headers=headers, allow_redirects=False
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # Nothing was sent: any request may go to the next copy.
            copies.refused(base)
            log.warning(
                "%s copy %s refused the connection for %s (%s)%s",
                service,
                base,
                request.method,
                type(exc).__name__,
                "" if last else "; trying the next copy",
            )
            if last:
                raise _unavailable(
                    service, 503, f"The {service} service is not answering; try again shortly"
                ) from None
            continue
        except (aiohttp.ServerTimeoutError, TimeoutError):
            # It may still be working on the request: never sent twice.
            raise _unavailable(
                service, 504, f"The {service} service did not answer in time"
            ) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            # Sent, and the connection broke before an answer: the request may have been
            # carried out, so only a request that is safe to repeat goes to the next copy.
            log.warning(
                "%s copy %s dropped the connection before answering %s (%s)%s",
                service,
                base,
                request.method,
                type(exc).__name__,
                "; trying the next copy" if repeatable and not last else "",
            )
            if repeatable and not last:
                continue
            raise _unavailable(
                service,
                502,
                f"The {service} service dropped the connection before answering; the request "
                "may or may not have taken effect",
            ) from None
        except aiohttp.ClientError:
            raise _unavailable(
                service, 502, f"The {service} service gave an answer that could not be read"
            ) from None
        try:
            payload = await upstream.read()
        except (aiohttp.ClientError, TimeoutError):
            raise _unavailable(
                service, 502, f"The {service} service broke off its answer"
            ) from None
        finally:
            upstream.release()
        copies.answered(base)
        response = web.Response(status=upstream.status, body=payload)
        # Names as the service wrote them (the parsed headers would hand some back in another
        # case); the body is passed on as received (no auto_decompress), so its
        # Content-Encoding must go with it.
        for raw_key, raw_value in upstream.raw_headers:
            key = raw_key.decode("latin-1")
            if key.lower() not in _HOP_BY_HOP:
                response.headers.add(key, raw_value.decode("latin-1"))
        return response
    raise AssertionError("unreachable: the last copy either answers or raises")


async def _session_ctx(app: web.Application) -> AsyncIterator[None]:
    timeout = aiohttp.ClientTimeout(total=30, connect=3)
    connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=30)
    app[SESSION] = aiohttp.ClientSession(
        timeout=timeout, connector=connector, auto_decompress=False
    )
    yield
    await app[SESSION].close()


def create_gateway(
    upstreams: Mapping[str, str | Sequence[str]], *, fail_timeout: float = FAIL_TIMEOUT_SECONDS
) -> web.Application:
    """The gateway app; ``upstreams`` maps each service name to its base URL, or to the base
    URLs of its copies."""
    app = web.Application(client_max_size=MAX_BODY)
    app[UPSTREAMS] = {
        name: Copies([urls] if isinstance(urls, str) else urls, fail_timeout=fail_timeout)
        for name, urls in upstreams.items()
    }
    app.cleanup_ctx.append(_session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app
