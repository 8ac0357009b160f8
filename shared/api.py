"""Declaring routes once: the aiohttp route table and the OpenAPI document come from one list.

Each service's ``routes.py`` builds an :class:`Api`, adds operations with their pydantic models,
and calls ``api.install(app)``. ``GET /openapi.json`` then describes exactly what is routed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from shared.errors import PROBLEM_CONTENT_TYPE

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    form: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    scopes: tuple[str, ...] = ()
    security: str | None = "bearer"
    tags: tuple[str, ...] = ()
    errors: tuple[int, ...] = ()
    extra_responses: dict[int, str] = field(default_factory=dict)
    #: How errors are rendered: problem details, and for OAuth endpoints also RFC 6749 JSON.
    error_media_types: tuple[str, ...] = (PROBLEM_CONTENT_TYPE,)


class Api:
    def __init__(self, title: str, version: str = "1.0.0", description: str = "") -> None:
        self.title = title
        self.version = version
        self.description = description
        self.operations: list[Operation] = []

    def add(self, method: str, path: str, handler: Handler, summary: str, **kw: Any) -> None:
        self.operations.append(Operation(method.upper(), path, handler, summary, **kw))

    def install(self, app: web.Application) -> None:
        for op in self.operations:
            app.router.add_route(op.method, op.path, op.handler)
        app.router.add_get("/openapi.json", self._serve_openapi)
        app.router.add_get("/docs", self._serve_docs)

    async def _serve_openapi(self, request: web.Request) -> web.Response:
        return web.json_response(self.openapi())

    async def _serve_docs(self, request: web.Request) -> web.Response:
        return web.Response(text=render_docs(self), content_type="text/html")

    def openapi(self) -> dict[str, Any]:
        schemas: dict[str, Any] = {"Problem": _PROBLEM_SCHEMA}
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            paths.setdefault(op.path, {})[op.method.lower()] = self._operation(op, schemas)
        return {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": self.version, "description": self.description},
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                    "basic": {"type": "http", "scheme": "basic"},
                },
            },
        }

    def _operation(self, op: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "summary": op.summary,
            "operationId": op.handler.__name__,
            "tags": list(op.tags),
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _path_params(op.path)
        ]
        if op.query is not None:
            query_schema = op.query.model_json_schema()
            required = set(query_schema.get("required", []))
            for name, prop in query_schema.get("properties", {}).items():
                params.append(
                    {"name": name, "in": "query", "required": name in required, "schema": prop}
                )
        if params:
            spec["parameters"] = params
        if op.body is not None:
            spec["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(op.body, schemas)}},
            }
        if op.form is not None:
            spec["requestBody"] = {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {"schema": _ref(op.form, schemas)}
                },
            }
        ok: dict[str, Any] = {"description": "OK"}
        if op.response is not None:
            ok["content"] = {"application/json": {"schema": _ref(op.response, schemas)}}
        responses: dict[str, Any] = {str(op.status): ok}
        problem: dict[str, Any] = {"content": {}}
        for media_type in op.error_media_types:
            name = "Problem"
            if media_type != PROBLEM_CONTENT_TYPE:
                name = "OAuthError"
                schemas[name] = _OAUTH_ERROR_SCHEMA
            problem["content"][media_type] = {"schema": {"$ref": f"#/components/schemas/{name}"}}
        # Every path parameter is parsed (an id, a date, a type) and refused with a 422 too.
        validated = op.body or op.query or op.form or _path_params(op.path)
        codes = set(op.errors) | {422} if validated else set(op.errors)
        if op.security:
            codes |= {401, 429}
        for code in sorted(codes):
            responses[str(code)] = {"description": _REASONS.get(code, "Error"), **problem}
        for code, text in op.extra_responses.items():
            responses[str(code)] = {"description": text}
        spec["responses"] = responses
        if op.security:
            spec["security"] = [{op.security: []}]
        if op.scopes:
            spec["x-scopes"] = list(op.scopes)
        return spec


def _path_params(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]


def _ref(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        schemas[name] = definition
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


_REASONS = {
    400: "Bad request",
    401: "Missing, expired or invalid credentials",
    403: "Not allowed for this token",
    404: "Not found",
    409: "Conflict with the current state",
    412: "Precondition failed",
    413: "Body too large",
    422: "Validation error",
    429: "Rate limited",
}

_PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "required": ["type", "title", "status"],
}


_OAUTH_ERROR_SCHEMA: dict[str, Any] = {
    "description": "RFC 6749 section 5.2 error response, with the problem details members",
    "allOf": [{"$ref": "#/components/schemas/Problem"}],
    "type": "object",
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
    "required": ["error"],
}


def render_docs(api: Api) -> str:
    """A plain, dependency-free reference page generated from the same operations."""
    rows = []
    for op in api.operations:
        scopes = ", ".join(op.scopes) or "—"
        rows.append(
            f"<tr><td><code>{op.method}</code></td><td><code>{op.path}</code></td>"
            f"<td>{op.summary}</td><td>{scopes}</td></tr>"
        )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{api.title}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}</style></head>"
        f"<body><h1>{api.title}</h1><p>{api.description}</p>"
        "<p>Machine-readable: <a href='openapi.json'>openapi.json</a></p>"
        "<table><tr><th>Method</th><th>Path</th><th>What it does</th><th>Scopes</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
