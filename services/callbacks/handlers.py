"""HTTP only: authenticate, parse, call the rules, render."""

from __future__ import annotations

import uuid

from aiohttp import web

from services.callbacks import service
from services.callbacks.keys import CONTEXT
from services.callbacks.schemas import (
    DeliveryListQuery,
    EndpointCreate,
    EndpointUpdate,
    FeedQuery,
    RecoverRequest,
)
from shared.pagination import PageQuery
from shared.scopes import EVENTS_READ, WEBHOOKS_MANAGE
from shared.tokens import PRINCIPAL, requires
from shared.web import idempotency_key, json_model, json_tagged, parse_body, parse_query, path_id


def _endpoint_id(request: web.Request) -> uuid.UUID:
    return path_id(request, "endpoint_id")


@requires(WEBHOOKS_MANAGE, clinic=False)
async def create_endpoint(request: web.Request) -> web.Response:
    data = await parse_body(request, EndpointCreate)
    endpoint, version, created = await service.create_endpoint(
        request.app[CONTEXT], request[PRINCIPAL], data, key=idempotency_key(request)
    )
    response = json_tagged(endpoint, version, status=201 if created else 200)
    response.headers["Location"] = f"/v1/webhooks/endpoints/{endpoint.id}"
    response.headers["Cache-Control"] = "no-store"
    return response


@requires(WEBHOOKS_MANAGE, clinic=False)
async def list_endpoints(request: web.Request) -> web.Response:
    page = await service.list_endpoints(
        request.app[CONTEXT], request[PRINCIPAL], parse_query(request, PageQuery)
    )
    return json_model(page)


@requires(WEBHOOKS_MANAGE, clinic=False)
async def get_endpoint(request: web.Request) -> web.Response:
    endpoint, version = await service.get_endpoint(
        request.app[CONTEXT], request[PRINCIPAL], _endpoint_id(request)
    )
    return json_tagged(endpoint, version)


@requires(WEBHOOKS_MANAGE, clinic=False)
async def update_endpoint(request: web.Request) -> web.Response:
    data = await parse_body(request, EndpointUpdate)
    endpoint, version = await service.update_endpoint(
        request.app[CONTEXT],
        request[PRINCIPAL],
        _endpoint_id(request),
        data,
        if_match=request.headers.get("If-Match"),
    )
    return json_tagged(endpoint, version)


@requires(WEBHOOKS_MANAGE, clinic=False)
async def delete_endpoint(request: web.Request) -> web.Response:
    await service.delete_endpoint(request.app[CONTEXT], request[PRINCIPAL], _endpoint_id(request))
    return web.Response(status=204)


@requires(WEBHOOKS_MANAGE, clinic=False)
async def rotate_secret(request: web.Request) -> web.Response:
    rotated = await service.rotate_secret(
        request.app[CONTEXT], request[PRINCIPAL], _endpoint_id(request)
    )
    return json_model(rotated, headers={"Cache-Control": "no-store"})


@requires(WEBHOOKS_MANAGE, clinic=False)
async def send_test(request: web.Request) -> web.Response:
    result = await service.send_test(
        request.app[CONTEXT], request[PRINCIPAL], _endpoint_id(request)
    )
    return json_model(result)


@requires(WEBHOOKS_MANAGE, clinic=False)
async def endpoint_health(request: web.Request) -> web.Response:
    health = await service.endpoint_health(
        request.app[CONTEXT], request[PRINCIPAL], _endpoint_id(request)
    )
    return json_model(health)


@requires(WEBHOOKS_MANAGE, clinic=False)
async def recover_failed(request: web.Request) -> web.Response:
    data = await parse_body(request, RecoverRequest)
    result = await service.recover_failed(
        request.app[CONTEXT], request[PRINCIPAL], _endpoint_id(request), data.since
    )
    return json_model(result, status=202)


@requires(WEBHOOKS_MANAGE, clinic=False)
async def list_deliveries(request: web.Request) -> web.Response:
    page = await service.list_deliveries(
        request.app[CONTEXT],
        request[PRINCIPAL],
        _endpoint_id(request),
        parse_query(request, DeliveryListQuery),
    )
    return json_model(page)


@requires(WEBHOOKS_MANAGE, clinic=False)
async def get_delivery(request: web.Request) -> web.Response:
    delivery = await service.get_delivery(
        request.app[CONTEXT], request[PRINCIPAL], path_id(request, "delivery_id")
    )
    return json_model(delivery)


@requires(WEBHOOKS_MANAGE, clinic=False)
async def replay_delivery(request: web.Request) -> web.Response:
    delivery = await service.replay_delivery(
        request.app[CONTEXT], request[PRINCIPAL], path_id(request, "delivery_id")
    )
    return json_model(delivery, status=202)


@requires(EVENTS_READ, clinic=False)
async def event_feed(request: web.Request) -> web.Response:
    page = await service.feed(
        request.app[CONTEXT], request[PRINCIPAL], parse_query(request, FeedQuery)
    )
    return json_model(page)
