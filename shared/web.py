"""What every service's aiohttp app has: middlewares, health routes, request parsing.

``base_app(settings)`` returns an app with request ids, JSON access logs, problem rendering,
metrics, a body size limit, ``/healthz``, ``/readyz`` and ``/metrics``; each service adds its
own ``cleanup_ctx`` entries and routes.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import asyncpg
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, SecretStr, ValidationError

from shared.conditional import etag
from shared.errors import (
    FieldError,
    PayloadTooLarge,
    ProblemError,
    Unauthorized,
    ValidationProblem,
)
from shared.keys import BROKER, DB_POOL, METRICS, SETTINGS, VERIFIER
from shared.logs import request_id_var
from shared.metrics import Metrics
from shared.randomness import unique_hex
from shared.settings import ServiceSettings

log = logging.getLogger("vetgate.http")

ModelT = TypeVar("ModelT", bound=BaseModel)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def problem_response(problem: ProblemError, request: web.Request | None = None) -> web.Response:
    body = problem.to_problem(request.path if request is not None else None)
    return web.Response(
        status=problem.status,
        text=json.dumps(body),
        content_type=problem.content_type,
        headers=problem.headers,
    )


_HTTP_SLUGS = {
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "Request body too large"),
}


def request_id_of(request: web.Request) -> str:
    """The caller's ``X-Request-Id`` if it is a sane token, otherwise a new one."""
    incoming = request.headers.get("X-Request-Id", "")
    return incoming if _REQUEST_ID_RE.match(incoming) else unique_hex(64)


@web.middleware
async def request_context_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, problem rendering, access log and metrics: the outermost layer."""
    request_id = request_id_of(request)
    token = request_id_var.set(request_id)
    started = time.perf_counter()
    route = request.match_info.route.resource
    route_name = route.canonical if route is not None else "unmatched"
    try:
        try:
            response = await handler(request)
        except ProblemError as problem:
            response = problem_response(problem, request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            slug, title = _HTTP_SLUGS.get(exc.status, ("http-error", exc.reason))
            response = problem_response(
                ProblemError(exc.reason, slug=slug, title=title, status=exc.status), request
            )
            for name in ("Allow",):
                if name in exc.headers:
                    response.headers[name] = exc.headers[name]
        except (
            OSError,
            # Also what a transaction's exit raises when the server closed its connection.
            asyncpg.InterfaceError,
            asyncpg.PostgresConnectionError,
            asyncpg.exceptions.OperatorInterventionError,
            asyncpg.TooManyConnectionsError,
        ) as exc:
            # The database (or another backing service) is out of reach, not a bug: a quick 503
            # the client may retry, and one log line instead of a traceback per request.
            log.warning("unavailable on %s %s: %s", request.method, route_name, type(exc).__name__)
            response = problem_response(
                ProblemError(
                    "The service cannot reach what it depends on; try again shortly",
                    slug="service-unavailable",
                    title="Service unavailable",
                    status=503,
                    headers={"Retry-After": "2"},
                    extra={"request_id": request_id},
                ),
                request,
            )
        except Exception:
            log.exception("unhandled error on %s %s", request.method, route_name)
            response = problem_response(
                ProblemError(
                    "An internal error occurred; quote the request id to support.",
                    slug="internal-error",
                    title="Internal server error",
                    status=500,
                    extra={"request_id": request_id},
                ),
                request,
            )
        response.headers["X-Request-Id"] = request_id
        elapsed = time.perf_counter() - started
        metrics = request.app.get(METRICS)
        if metrics is not None:
            metrics.observe_request(request.method, route_name, response.status, elapsed)
        if log.isEnabledFor(logging.INFO) and not request.path.startswith(
            ("/healthz", "/readyz", "/metrics")
        ):
            log.info(
                "%s %s %s",
                request.method,
                request.path,
                response.status,
                extra={
                    "service": request.app[SETTINGS].service_name,
                    "status": response.status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
        return response
    finally:
        request_id_var.reset(token)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "service": request.app[SETTINGS].service_name})


async def readyz(request: web.Request) -> web.Response:
    checks: dict[str, str] = {}
    pool = request.app.get(DB_POOL)
    try:
        if pool is None:
            raise OSError("no pool")
        async with pool.acquire(timeout=2) as conn:
            await conn.fetchval("SELECT 1")
        checks["database"] = "ok"
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        checks["database"] = "unavailable"
    broker = request.app.get(BROKER)
    checks["broker"] = "ok" if broker is not None and broker.is_ready() else "unavailable"
    verifier = request.app.get(VERIFIER)
    if verifier is not None:
        checks["revocations"] = "ok" if verifier.revocations.loaded else "loading"
    ready = all(v == "ok" for v in checks.values())
    return web.json_response(
        {"status": "ready" if ready else "not-ready", "checks": checks},
        status=200 if ready else 503,
    )


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4"})


def base_app(settings: ServiceSettings) -> web.Application:
    """An aiohttp app with the platform's middlewares and operational routes."""
    app = web.Application(
        middlewares=[request_context_middleware], client_max_size=settings.max_body_bytes
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics(settings.service_name)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app


# --- parsing ---------------------------------------------------------------------------------


def validation_problem(exc: ValidationError, location: str = "") -> ValidationProblem:
    errors = []
    for err in exc.errors(include_url=False):
        parts = [str(p) for p in err["loc"]]
        field = ".".join([location, *parts] if location else parts) or (location or "body")
        errors.append(FieldError(field, err["msg"]))
    return ValidationProblem(errors)


def _nul_fields(data: Any, where: str) -> list[FieldError]:
    """Where ``data`` holds U+0000, which no PostgreSQL text value can store.

    Walked with a stack of its own, not by recursion: a body may nest as deep as the JSON
    decoder allows."""
    found: list[FieldError] = []
    pending: list[tuple[Any, str]] = [(data, where)]
    while pending:
        value, name = pending.pop()
        if isinstance(value, str):
            if "\x00" in value:
                found.append(FieldError(name, "Must not contain the NUL character"))
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{name}.{key}" if name else str(key)
                if "\x00" in str(key):
                    found.append(FieldError(child, "Must not contain the NUL character"))
                pending.append((item, child))
        elif isinstance(value, list):
            pending.extend((item, f"{name}.{i}") for i, item in enumerate(value))
    return sorted(found, key=lambda e: e["field"])


def parse_model(model: type[ModelT], data: Any, location: str = "") -> ModelT:
    nul = _nul_fields(data, location)
    if nul:
        raise ValidationProblem(nul)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc, location) from None


async def read_json(request: web.Request) -> Any:
    if (
        request.content_length is not None
        and request.content_length > request.app[SETTINGS].max_body_bytes
    ):
        raise PayloadTooLarge("The request body exceeds the allowed size")
    if request.content_type != "application/json":
        raise ProblemError(
            "Send the body as application/json",
            slug="unsupported-media-type",
            title="Unsupported media type",
            status=415,
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge("The request body exceeds the allowed size") from None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationProblem(
            [FieldError("body", f"Malformed JSON: {exc}")], "The body is not valid JSON"
        ) from None
    except (ValueError, RecursionError):
        # An integer longer than Python converts (4300 digits), or arrays and objects nested
        # deeper than the decoder goes.
        raise ValidationProblem(
            [FieldError("body", "Malformed JSON: a number too long or nesting too deep")],
            "The body is not valid JSON",
        ) from None


async def parse_body(request: web.Request, model: type[ModelT]) -> ModelT:
    """The JSON body validated as ``model``; field errors become a 422 problem."""
    return parse_model(model, await read_json(request), "body")


def _repeated_field(key: str) -> ProblemError:
    return ValidationProblem([FieldError(f"body.{key}", "Given more than once")])


def _form_not_utf8() -> ProblemError:
    return ValidationProblem([FieldError("body", "The form is not UTF-8")])


async def read_form(
    request: web.Request,
    *,
    repeated: Callable[[str], ProblemError] = _repeated_field,
    malformed: Callable[[], ProblemError] = _form_not_utf8,
) -> Mapping[str, str]:
    """A urlencoded body as a dict; ``repeated`` builds the refusal of a repeated key, and
    ``malformed`` that of a body that is not UTF-8 (raw, or percent-encoded)."""
    if (
        request.content_length is not None
        and request.content_length > request.app[SETTINGS].max_body_bytes
    ):
        raise PayloadTooLarge("The request body exceeds the allowed size")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLarge("The request body exceeds the allowed size") from None
    try:
        pairs = parse_qsl(
            raw.decode(), keep_blank_values=True, strict_parsing=False, errors="strict"
        )
    except UnicodeDecodeError:
        raise malformed() from None
    # A repeated parameter is ambiguous (RFC 6749 §3.1 forbids it): refuse rather than pick one.
    form: dict[str, str] = {}
    for key, value in pairs:
        if key in form:
            raise repeated(key)
        form[key] = value
    return form


def parse_query(request: web.Request, model: type[ModelT]) -> ModelT:
    return parse_model(model, dict(request.query), "query")


def json_model(
    model: BaseModel, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=model.model_dump_json(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


# --- request parts every service reads the same way --------------------------------------------


def path_id(request: web.Request, name: str) -> uuid.UUID:
    """A path segment that must be an id; a 422 on ``path.<name>`` otherwise."""
    try:
        return uuid.UUID(request.match_info[name])
    except ValueError:
        raise ValidationProblem([FieldError(f"path.{name}", "Not a valid id")]) from None


def idempotency_key(request: web.Request) -> str | None:
    """The ``Idempotency-Key`` header, if given: 1 to 255 characters."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise ValidationProblem([FieldError("header.Idempotency-Key", "1 to 255 characters")])
    return key


def require_bearer(request: web.Request, expected: SecretStr, who: str) -> None:
    """A configured bearer credential (operator, internal), compared in constant time."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.get_secret_value().encode()
    ):
        raise Unauthorized(f"{who} credentials required", error="invalid_token")


def json_tagged(model: BaseModel, version: int, *, status: int = 200) -> web.Response:
    """A versioned resource with its ``ETag``, for ``If-Match`` on the next change."""
    return json_model(model, status=status, headers={"ETag": etag(version)})
