"""The callbacks service's URL map, readable top to bottom."""

from __future__ import annotations

from services.callbacks import handlers as h
from services.callbacks import schemas as s
from shared.api import Api
from shared.pagination import PageQuery
from shared.scopes import EVENTS_READ, WEBHOOKS_MANAGE

E = "/v1/webhooks/endpoints"
ONE = E + "/{endpoint_id}"
D = "/v1/webhooks/deliveries/{delivery_id}"
MANAGE = (WEBHOOKS_MANAGE,)


def build_api() -> Api:
    api = Api(
        "Vetgate callbacks",
        description="Webhook endpoints, signed delivery (Standard Webhooks) with retries, replay, "
        "endpoint monitoring, and the event feed for reconciling.",
    )
    endpoints = ("endpoints",)
    api.add(
        "POST",
        E,
        h.create_endpoint,
        "Create an endpoint; the signing secret is in this answer only (Idempotency-Key)",
        body=s.EndpointCreate,
        response=s.EndpointCreated,
        status=201,
        scopes=MANAGE,
        tags=endpoints,
        errors=(403, 409),
    )
    api.add(
        "GET",
        E,
        h.list_endpoints,
        "The application's endpoints",
        query=PageQuery,
        response=s.EndpointPage,
        scopes=MANAGE,
        tags=endpoints,
        errors=(403,),
    )
    api.add(
        "GET",
        ONE,
        h.get_endpoint,
        "One endpoint (ETag)",
        response=s.EndpointRead,
        scopes=MANAGE,
        tags=endpoints,
        errors=(403, 404),
    )
    api.add(
        "PATCH",
        ONE,
        h.update_endpoint,
        "Change an endpoint or enable it again (If-Match)",
        body=s.EndpointUpdate,
        response=s.EndpointRead,
        scopes=MANAGE,
        tags=endpoints,
        errors=(403, 404, 412),
    )
    api.add(
        "DELETE",
        ONE,
        h.delete_endpoint,
        "Delete an endpoint and its deliveries",
        status=204,
        scopes=MANAGE,
        tags=endpoints,
        errors=(403, 404),
    )
    api.add(
        "POST",
        ONE + "/secret/rotate",
        h.rotate_secret,
        "A new signing secret; the old one keeps signing for 24 hours",
        response=s.SecretRotated,
        scopes=MANAGE,
        tags=endpoints,
        errors=(403, 404),
    )
    api.add(
        "POST",
        ONE + "/test",
        h.send_test,
        "Send a webhook.test event now and return the attempt",
        response=s.TestResult,
        scopes=MANAGE,
        tags=endpoints,
        errors=(403, 404),
    )
    api.add(
        "GET",
        ONE + "/health",
        h.endpoint_health,
        "Monitoring: state, last ping, consecutive failures",
        response=s.EndpointHealth,
        scopes=MANAGE,
        tags=endpoints,
        errors=(403, 404),
    )

    deliveries = ("deliveries",)
    api.add(
        "GET",
        ONE + "/deliveries",
        h.list_deliveries,
        "The endpoint's deliveries, optionally of one status",
        query=s.DeliveryListQuery,
        response=s.DeliveryPage,
        scopes=MANAGE,
        tags=deliveries,
        errors=(403, 404),
    )
    api.add(
        "POST",
        ONE + "/recover",
        h.recover_failed,
        "Resend every failed delivery of the endpoint since a time",
        body=s.RecoverRequest,
        response=s.RecoverResult,
        status=202,
        scopes=MANAGE,
        tags=deliveries,
        errors=(403, 404),
    )
    api.add(
        "GET",
        D,
        h.get_delivery,
        "A delivery with every attempt",
        response=s.DeliveryDetail,
        scopes=MANAGE,
        tags=deliveries,
        errors=(403, 404),
    )
    api.add(
        "POST",
        D + "/replay",
        h.replay_delivery,
        "Resend a delivered or failed delivery (the same webhook-id)",
        response=s.DeliveryRead,
        status=202,
        scopes=MANAGE,
        tags=deliveries,
        errors=(403, 404, 409),
    )

    api.add(
        "GET",
        "/v1/events",
        h.event_feed,
        "The application's events of the last 30 days after a cursor (PULL, to reconcile)",
        query=s.FeedQuery,
        response=s.FeedPage,
        scopes=(EVENTS_READ,),
        tags=("events",),
        errors=(403,),
    )
    return api
