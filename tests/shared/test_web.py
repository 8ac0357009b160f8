"""The shared aiohttp base: problem rendering, body parsing, request ids and operational routes."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import BaseModel, Field

from shared.broker import broker_ctx
from shared.db import pool_ctx
from shared.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE
from shared.settings import ServiceSettings
from shared.web import base_app, parse_body

MAX_BODY = 1024
SECRET = "db password is hunter2"


class ItemIn(BaseModel):
    name: str = Field(min_length=1)
    tags: list[str] = []


async def create_item(request: web.Request) -> web.Response:
    item = await parse_body(request, ItemIn)
    return web.json_response(item.model_dump(), status=201)


async def get_item(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["item_id"]})


async def boom(request: web.Request) -> web.Response:
    raise RuntimeError(SECRET)


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def make_app(overrides: dict[str, Any]) -> web.Application:
    settings = ServiceSettings(**overrides, service_name="webtest", max_body_bytes=MAX_BODY)
    app = base_app(settings)
    app.router.add_post("/items", create_item)
    app.router.add_get("/items/{item_id}", get_item)
    app.router.add_get("/boom", boom)
    app.router.add_get("/ok", ok)
    return app


@pytest.fixture(scope="module")
async def base_url(overrides: dict[str, Any]) -> AsyncIterator[str]:
    """The app without pool or broker, served on a real port."""
    server = TestServer(make_app(overrides), host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def problem(r: aiohttp.ClientResponse, status: int, slug: str) -> dict[str, Any]:
    """Assert an RFC 9457 problem with ``status`` and ``slug``; return its body."""
    body = await r.json(content_type=None)
    assert r.status == status, body
    assert r.content_type == PROBLEM_CONTENT_TYPE
    assert body["type"] == PROBLEM_BASE + slug
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", r.headers["X-Request-Id"])
    return dict(body)


async def test_unknown_path_is_a_404_problem(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(base_url + "/nowhere") as r:
        body = await problem(r, 404, "not-found")
    assert body["title"] == "Not found"
    assert body["instance"] == "/nowhere"


async def test_wrong_method_is_a_405_problem(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.delete(base_url + "/ok") as r:
        body = await problem(r, 405, "method-not-allowed")
        assert "GET" in r.headers["Allow"]
    assert body["title"] == "Method not allowed"


async def test_body_over_the_limit_is_a_413_problem(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    big = {"name": "x" * (MAX_BODY * 2)}
    async with http.post(base_url + "/items", json=big) as r:
        await problem(r, 413, "payload-too-large")


async def test_chunked_body_over_the_limit_is_a_413_problem(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(8):
            yield b"x" * (MAX_BODY // 2)
        yield b'"}'

    headers = {"Content-Type": "application/json"}
    async with http.post(base_url + "/items", data=chunks(), headers=headers) as r:
        assert r.request_info.headers.get("Transfer-Encoding") == "chunked"
        await problem(r, 413, "payload-too-large")


async def test_malformed_json_is_a_422_on_the_body(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    headers = {"Content-Type": "application/json"}
    async with http.post(base_url + "/items", data=b'{"name": ', headers=headers) as r:
        body = await problem(r, 422, "validation-error")
    assert body["errors"][0]["field"] == "body"


async def test_missing_field_is_a_422_naming_it(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.post(base_url + "/items", json={"tags": ["a"]}) as r:
        body = await problem(r, 422, "validation-error")
    assert [e["field"] for e in body["errors"]] == ["body.name"]
    assert "body.name" in body["detail"]

    async with http.post(base_url + "/items", json={"name": "n", "tags": ["a", 7]}) as r:
        body = await problem(r, 422, "validation-error")
    assert [e["field"] for e in body["errors"]] == ["body.tags.1"]

    async with http.post(base_url + "/items", json=["not", "an", "object"]) as r:
        body = await problem(r, 422, "validation-error")
    assert [e["field"] for e in body["errors"]] == ["body"]


async def test_valid_body_is_accepted(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.post(base_url + "/items", json={"name": "n", "tags": ["a"]}) as r:
        assert r.status == 201
        assert await r.json() == {"name": "n", "tags": ["a"]}


async def test_wrong_content_type_is_a_415_problem(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    async with http.post(base_url + "/items", data="name=n") as r:
        await problem(r, 415, "unsupported-media-type")
    headers = {"Content-Type": "text/plain"}
    async with http.post(base_url + "/items", data='{"name": "n"}', headers=headers) as r:
        await problem(r, 415, "unsupported-media-type")


async def test_unhandled_error_is_a_bare_500(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(base_url + "/boom") as r:
        text = await r.text()
        body = await problem(r, 500, "internal-error")
        request_id = r.headers["X-Request-Id"]
    assert SECRET not in text
    assert "RuntimeError" not in text
    assert "Traceback" not in text
    assert body["request_id"] == request_id


async def test_incoming_request_id_is_echoed(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(base_url + "/ok", headers={"X-Request-Id": "abc-123.x:y_z"}) as r:
        assert r.status == 200
        assert r.headers["X-Request-Id"] == "abc-123.x:y_z"
    async with http.get(base_url + "/boom", headers={"X-Request-Id": "trace-500"}) as r:
        body = await problem(r, 500, "internal-error")
        assert r.headers["X-Request-Id"] == "trace-500"
    assert body["request_id"] == "trace-500"


@pytest.mark.parametrize("incoming", ["has space", "x" * 129, "new\\nline", "<script>"])
async def test_unusable_request_id_is_replaced(
    http: aiohttp.ClientSession, base_url: str, incoming: str
) -> None:
    async with http.get(base_url + "/ok", headers={"X-Request-Id": incoming}) as r:
        assert r.status == 200
        assert r.headers["X-Request-Id"] != incoming
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", r.headers["X-Request-Id"])


async def test_request_ids_differ(http: aiohttp.ClientSession, base_url: str) -> None:
    ids: set[str] = set()
    for _ in range(5):
        async with http.get(base_url + "/ok") as r:
            ids.add(r.headers["X-Request-Id"])
    assert len(ids) == 5


async def test_healthz(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(base_url + "/healthz") as r:
        assert r.status == 200
        assert await r.json() == {"status": "ok", "service": "webtest"}


async def test_metrics_count_requests_by_route(http: aiohttp.ClientSession, base_url: str) -> None:
    for _ in range(3):
        async with http.get(base_url + "/ok") as r:
            assert r.status == 200
    async with http.get(base_url + "/items/42") as r:
        assert r.status == 200
    async with http.get(base_url + "/no/such/route") as r:
        assert r.status == 404
    async with http.get(base_url + "/metrics") as r:
        assert r.status == 200
        assert r.content_type == "text/plain"
        text = await r.text()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("http_requests_total{")
    }
    ok = 'http_requests_total{method="GET",route="/ok",status="200"}'
    assert samples[ok] >= 3
    # Path parameters stay templates, so the label set does not grow with the ids requested.
    assert 'http_requests_total{method="GET",route="/items/{item_id}",status="200"}' in samples
    assert not any("/items/42" in key for key in samples)
    assert not any("/no/such/route" in key for key in samples)
    assert "http_request_duration_seconds_bucket" in text


async def test_readyz_without_pool_or_broker_is_503(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    async with http.get(base_url + "/readyz") as r:
        assert r.status == 503
        body = await r.json()
    assert body == {
        "status": "not-ready",
        "checks": {"database": "unavailable", "broker": "unavailable"},
    }


async def test_readyz_with_pool_and_broker_is_ready(
    http: aiohttp.ClientSession, overrides: dict[str, Any]
) -> None:
    app = make_app(overrides)
    app.cleanup_ctx.extend([pool_ctx, broker_ctx])
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with http.get(server.make_url("/readyz")) as r:
            body = await r.json()
            assert r.status == 200, body
        assert body == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}
    finally:
        await server.close()
