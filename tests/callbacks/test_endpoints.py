"""Webhook endpoints over real HTTP: the CRUD rules, secrets, SSRF refusals, scopes, isolation,
secret rotation, test sends and the health read."""

from __future__ import annotations

import asyncio
import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.callbacks.signing import new_secret
from shared.pagination import encode_cursor
from tests.callbacks.conftest import (
    Callbacks,
    CallbacksFactory,
    Partner,
    PartnerFactory,
    Receiver,
)
from tests.conftest import Admin, TokenFactory
from tests.polling import eventually

E = "/v1/webhooks/endpoints"
PROBLEM = "application/problem+json"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    data: Any


async def send(
    partner: Partner,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = "partner",
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> Reply:
    """One request with the partner's token (or ``token``, or none), keeping the headers."""
    all_headers = dict(headers or {})
    if token == "partner":
        token = partner.token
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    async with partner.http.request(
        method, partner.base + path, json=body, headers=all_headers, params=params
    ) as r:
        data = await r.json(content_type=None) if r.status != 204 else None
        return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, data)


def fields_of(reply: Reply) -> list[str]:
    """The fields a 422 problem names; also checks that it is a problem document."""
    assert reply.status == 422, (reply.status, reply.data)
    assert reply.headers["content-type"].startswith(PROBLEM), reply.headers
    assert reply.data["status"] == 422
    return [e["field"] for e in reply.data["errors"]]


def assert_problem(reply: Reply, status: int) -> None:
    assert reply.status == status, (reply.status, reply.data)
    assert reply.headers["content-type"].startswith(PROBLEM), reply.headers
    assert reply.data["status"] == status


def secret_bytes(secret: str) -> bytes:
    assert secret.startswith("whsec_"), secret
    return base64.b64decode(secret.removeprefix("whsec_"), validate=True)


async def ready(service: Callbacks, http: aiohttp.ClientSession) -> None:
    """A freshly started server answers partner calls only once its revocations are loaded."""

    async def check() -> bool:
        async with http.get(service.url + "/readyz") as r:
            return r.status == 200

    await eventually(check, "the callbacks server to be ready")


async def list_ids(partner: Partner) -> list[str]:
    reply = await send(partner, "GET", E, params={"limit": "200"})
    assert reply.status == 200, reply.data
    return [item["id"] for item in reply.data["items"]]


# --- create, read, list -----------------------------------------------------------------------


async def test_create_shows_the_secret_once(
    partner: Partner, receiver: Receiver, callbacks: Callbacks
) -> None:
    url = receiver.url("/created")
    reply = await send(
        partner,
        "POST",
        E,
        {"url": url, "description": "Front desk", "event_types": ["booking.created"]},
    )
    assert reply.status == 201, reply.data
    created = reply.data
    assert reply.headers["location"] == f"{E}/{created['id']}"
    assert reply.headers["etag"] == '"1"'
    assert reply.headers["cache-control"] == "no-store"
    assert len(secret_bytes(created["secret"])) >= 24
    assert created["url"] == url
    assert created["description"] == "Front desk"
    assert created["event_types"] == ["booking.created"]
    assert created["clinic_ids"] is None
    assert created["enabled"] is True
    assert created["ordered"] is False

    one = await send(partner, "GET", reply.headers["location"])
    assert one.status == 200
    assert one.headers["etag"] == '"1"'
    assert "secret" not in one.data
    assert created["secret"] not in str(one.data)
    assert {k: v for k, v in created.items() if k != "secret"} == one.data

    listed = await send(partner, "GET", E)
    assert listed.status == 200
    assert [i["id"] for i in listed.data["items"]] == [created["id"]]
    assert "secret" not in listed.data["items"][0]

    # At rest the secret is sealed, never in clear.
    async with callbacks.pool.acquire() as conn:
        stored = await conn.fetchval(
            "SELECT ciphertext FROM endpoint_secrets WHERE endpoint_id = $1",
            uuid.UUID(created["id"]),
        )
    assert created["secret"].encode() not in bytes(stored)
    assert secret_bytes(created["secret"]) not in bytes(stored)


async def test_each_endpoint_gets_its_own_secret(partner: Partner, receiver: Receiver) -> None:
    first = await partner.endpoint(receiver.url("/a"))
    second = await partner.endpoint(receiver.url("/a"))
    assert first["id"] != second["id"]
    assert first["secret"] != second["secret"]


async def test_list_pages_with_a_cursor(partner: Partner, receiver: Receiver) -> None:
    made = [(await partner.endpoint(receiver.url(f"/p{n}")))["id"] for n in range(3)]

    page1 = await send(partner, "GET", E, params={"limit": "2"})
    assert page1.status == 200
    assert [i["id"] for i in page1.data["items"]] == made[:2]
    assert page1.data["next_cursor"]

    page2 = await send(
        partner, "GET", E, params={"limit": "2", "cursor": page1.data["next_cursor"]}
    )
    assert page2.status == 200
    assert [i["id"] for i in page2.data["items"]] == made[2:]
    assert page2.data["next_cursor"] is None

    whole = await send(partner, "GET", E, params={"limit": "3"})
    assert [i["id"] for i in whole.data["items"]] == made
    assert whole.data["next_cursor"] is None


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor!",
        encode_cursor("only-one"),
        encode_cursor("yesterday", "somebody"),
        encode_cursor(datetime.now(UTC), "not-a-uuid"),
    ],
)
async def test_a_bad_list_cursor_is_refused_on_the_cursor(partner: Partner, cursor: str) -> None:
    reply = await send(partner, "GET", E, params={"cursor": cursor})
    assert fields_of(reply) == ["query.cursor"]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": "0"}, "query.limit"), ({"limit": "201"}, "query.limit")],
)
async def test_list_limits(partner: Partner, params: dict[str, str], field: str) -> None:
    assert field in fields_of(await send(partner, "GET", E, params=params))


async def test_list_updated_since(partner: Partner, receiver: Receiver) -> None:
    made = [(await partner.endpoint(receiver.url(f"/u{n}")))["id"] for n in range(3)]
    changed = await send(partner, "PATCH", f"{E}/{made[1]}", {"description": "changed"})
    assert changed.status == 200
    since = changed.data["updated_at"]

    reply = await send(partner, "GET", E, params={"updated_since": since})
    assert reply.status == 200
    assert [i["id"] for i in reply.data["items"]] == [made[1]]
    assert reply.data["items"][0]["description"] == "changed"

    earlier = (datetime.fromisoformat(since) - timedelta(days=1)).isoformat()
    everything = await send(partner, "GET", E, params={"updated_since": earlier})
    assert [i["id"] for i in everything.data["items"]] == made


async def test_an_unknown_endpoint_is_404_and_a_bad_id_422(partner: Partner) -> None:
    assert_problem(await send(partner, "GET", f"{E}/{uuid.uuid4()}"), 404)
    assert fields_of(await send(partner, "GET", f"{E}/not-an-id")) == ["path.endpoint_id"]


# --- change and delete ------------------------------------------------------------------------


async def test_patch_with_if_match(partner: Partner, receiver: Receiver) -> None:
    endpoint = await partner.endpoint(receiver.url("/m"))
    path = f"{E}/{endpoint['id']}"

    first = await send(
        partner, "PATCH", path, {"description": "v2", "rate_limit": 5}, headers={"If-Match": '"1"'}
    )
    assert first.status == 200, first.data
    assert first.headers["etag"] == '"2"'
    assert first.data["description"] == "v2"
    assert first.data["rate_limit"] == 5
    assert first.data["url"] == endpoint["url"]

    stale = await send(partner, "PATCH", path, {"description": "lost"}, headers={"If-Match": '"1"'})
    assert_problem(stale, 412)
    assert stale.headers["etag"] == '"2"'

    now = await send(partner, "GET", path)
    assert now.data["description"] == "v2"
    assert now.headers["etag"] == '"2"'

    forced = await send(partner, "PATCH", path, {"ordered": True}, headers={"If-Match": "*"})
    assert forced.status == 200
    assert forced.headers["etag"] == '"3"'
    assert forced.data["ordered"] is True


async def test_patch_null_clears_the_clearable_fields(partner: Partner, receiver: Receiver) -> None:
    endpoint = await partner.endpoint(
        receiver.url("/n"),
        event_types=["booking.created"],
        clinic_ids=[partner.tenant.clinic_id],
        rate_limit=10,
    )
    reply = await send(
        partner,
        "PATCH",
        f"{E}/{endpoint['id']}",
        {"event_types": None, "clinic_ids": None, "rate_limit": None},
    )
    assert reply.status == 200, reply.data
    assert reply.data["event_types"] is None
    assert reply.data["clinic_ids"] is None
    assert reply.data["rate_limit"] is None


@pytest.mark.parametrize("name", ["url", "description", "ordered", "enabled"])
async def test_patch_null_is_refused_for_required_fields(
    partner: Partner, receiver: Receiver, name: str
) -> None:
    endpoint = await partner.endpoint(receiver.url("/null"))
    path = f"{E}/{endpoint['id']}"
    assert fields_of(await send(partner, "PATCH", path, {name: None})) == [f"body.{name}"]
    after = await send(partner, "GET", path)
    assert after.headers["etag"] == '"1"'
    assert after.data["url"] == endpoint["url"]


async def test_patch_checks_the_new_url(partner: Partner, receiver: Receiver) -> None:
    endpoint = await partner.endpoint(receiver.url("/keep"))
    path = f"{E}/{endpoint['id']}"
    assert fields_of(await send(partner, "PATCH", path, {"url": "http://10.0.0.1/"})) == [
        "body.url"
    ]
    assert "body.colour" in fields_of(await send(partner, "PATCH", path, {"colour": "red"}))
    assert (await send(partner, "GET", path)).data["url"] == endpoint["url"]

    moved = await send(partner, "PATCH", path, {"url": receiver.url("/moved")})
    assert moved.status == 200
    assert moved.data["url"] == receiver.url("/moved")


async def test_delete(partner: Partner, receiver: Receiver) -> None:
    keep = await partner.endpoint(receiver.url("/keep"))
    gone = await partner.endpoint(receiver.url("/gone"))
    path = f"{E}/{gone['id']}"

    reply = await send(partner, "DELETE", path)
    assert reply.status == 204
    assert_problem(await send(partner, "GET", path), 404)
    assert_problem(await send(partner, "DELETE", path), 404)
    assert_problem(await send(partner, "PATCH", path, {"description": "x"}), 404)
    assert await list_ids(partner) == [keep["id"]]


# --- idempotency ------------------------------------------------------------------------------


async def test_idempotency_key_answers_with_the_same_endpoint(
    partner: Partner, receiver: Receiver
) -> None:
    key = {"Idempotency-Key": f"create-{uuid.uuid4()}"}
    body = {"url": receiver.url("/idem"), "description": "once", "ordered": True}
    first = await send(partner, "POST", E, body, headers=key)
    assert first.status == 201, first.data

    # The same body, its keys in another order, is the same request.
    again = await send(partner, "POST", E, dict(reversed(list(body.items()))), headers=key)
    assert again.status == 200, again.data
    assert again.data["id"] == first.data["id"]
    assert again.data["secret"] == first.data["secret"]
    assert again.headers["location"] == first.headers["location"]

    other = await send(partner, "POST", E, {**body, "description": "twice"}, headers=key)
    assert "header.Idempotency-Key" in fields_of(other)

    assert await list_ids(partner) == [first.data["id"]]


async def test_idempotency_keys_belong_to_one_application(
    partner_for: PartnerFactory, callbacks: Callbacks, receiver: Receiver
) -> None:
    a = await partner_for(callbacks)
    b = await partner_for(callbacks)
    key = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}
    body = {"url": receiver.url("/k")}
    first = await send(a, "POST", E, body, headers=key)
    second = await send(b, "POST", E, body, headers=key)
    assert first.status == 201
    assert second.status == 201
    assert first.data["id"] != second.data["id"]
    assert first.data["secret"] != second.data["secret"]


async def test_an_overlong_idempotency_key_is_refused(partner: Partner, receiver: Receiver) -> None:
    reply = await send(
        partner, "POST", E, {"url": receiver.url("/k")}, headers={"Idempotency-Key": "k" * 256}
    )
    assert fields_of(reply) == ["header.Idempotency-Key"]
    assert await list_ids(partner) == []


async def test_concurrent_requests_with_one_idempotency_key_make_one_endpoint(
    partner: Partner, receiver: Receiver
) -> None:
    key = {"Idempotency-Key": f"race-{uuid.uuid4()}"}
    body = {"url": receiver.url("/race")}
    replies = await asyncio.gather(*(send(partner, "POST", E, body, headers=key) for _ in range(6)))
    statuses = sorted(r.status for r in replies)
    assert statuses == [200] * 5 + [201], [(r.status, r.data) for r in replies]
    assert len({r.data["id"] for r in replies}) == 1
    assert len({r.data["secret"] for r in replies}) == 1
    assert len(await list_ids(partner)) == 1


# --- validation -------------------------------------------------------------------------------

HOOK = "HOOK"  # replaced by the receiver's URL


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"url": HOOK, "event_types": ["booking.created", "booking.exploded"]},
            "body.event_types.1",
        ),
        ({"url": HOOK, "event_types": ["token.revoked"]}, "body.event_types.0"),
        ({"url": HOOK, "event_types": []}, "body.event_types"),
        ({"url": "not a url"}, "body.url"),
        ({"url": "ftp://example.com/hook"}, "body.url"),
        ({"url": "https://example.com/hook#part"}, "body.url"),
        ({"url": ""}, "body.url"),
        ({"description": "no url"}, "body.url"),
        ({"url": HOOK, "rate_limit": 0}, "body.rate_limit"),
        ({"url": HOOK, "rate_limit": 10_001}, "body.rate_limit"),
        ({"url": HOOK, "colour": "red"}, "body.colour"),
        ({"url": HOOK, "clinic_ids": ["not-a-uuid"]}, "body.clinic_ids.0"),
        ({"url": HOOK, "description": "x" * 501}, "body.description"),
    ],
)
async def test_invalid_create_bodies_name_the_field(
    partner: Partner, receiver: Receiver, body: dict[str, Any], field: str
) -> None:
    real = {k: receiver.url("/v") if v == HOOK else v for k, v in body.items()}
    reply = await send(partner, "POST", E, real)
    assert field in fields_of(reply), reply.data
    assert await list_ids(partner) == []


async def test_a_body_that_is_not_json_is_refused(partner: Partner) -> None:
    async with partner.http.post(
        partner.base + E,
        data=b"{not json",
        headers={"Authorization": f"Bearer {partner.token}", "Content-Type": "application/json"},
    ) as r:
        assert r.status == 422
        assert r.headers["Content-Type"].startswith(PROBLEM)


async def test_clinic_ids_must_be_granted(
    partner_for: PartnerFactory, callbacks: Callbacks, admin: Admin, receiver: Receiver
) -> None:
    partner = await partner_for(callbacks)
    other = await admin.tenant()
    hook = receiver.url("/c")

    for clinic in (str(uuid.uuid4()), other.clinic_id):
        reply = await send(partner, "POST", E, {"url": hook, "clinic_ids": [clinic]})
        assert fields_of(reply) == ["body.clinic_ids"]
        assert clinic in reply.data["errors"][0]["message"]

    mixed = await send(
        partner, "POST", E, {"url": hook, "clinic_ids": [partner.tenant.clinic_id, other.clinic_id]}
    )
    assert fields_of(mixed) == ["body.clinic_ids"]
    assert other.clinic_id in mixed.data["errors"][0]["message"]
    assert await list_ids(partner) == []

    mine = await send(partner, "POST", E, {"url": hook, "clinic_ids": [partner.tenant.clinic_id]})
    assert mine.status == 201, mine.data
    assert mine.data["clinic_ids"] == [partner.tenant.clinic_id]

    patched = await send(
        partner, "PATCH", f"{E}/{mine.data['id']}", {"clinic_ids": [other.clinic_id]}
    )
    assert fields_of(patched) == ["body.clinic_ids"]


async def test_an_application_has_a_maximum_of_endpoints(
    start: CallbacksFactory,
    partner_for: PartnerFactory,
    receiver: Receiver,
    http: aiohttp.ClientSession,
) -> None:
    service = await start(max_endpoints_per_application=2)
    await ready(service, http)
    partner = await partner_for(service)
    first = await partner.endpoint(receiver.url("/1"))
    await partner.endpoint(receiver.url("/2"))

    third = await send(partner, "POST", E, {"url": receiver.url("/3")})
    assert_problem(third, 409)
    assert third.data["type"].endswith("too-many-endpoints")
    assert len(await list_ids(partner)) == 2

    # The limit is per application.
    other = await partner_for(service)
    await other.endpoint(receiver.url("/other"))

    assert (await send(partner, "DELETE", f"{E}/{first['id']}")).status == 204
    await partner.endpoint(receiver.url("/3"))
    assert len(await list_ids(partner)) == 2


async def test_concurrent_creates_respect_the_maximum(
    start: CallbacksFactory,
    partner_for: PartnerFactory,
    receiver: Receiver,
    http: aiohttp.ClientSession,
) -> None:
    service = await start(max_endpoints_per_application=2)
    await ready(service, http)
    partner = await partner_for(service)
    replies = await asyncio.gather(
        *(send(partner, "POST", E, {"url": receiver.url(f"/r{n}")}) for n in range(6))
    )
    statuses = sorted(r.status for r in replies)
    assert statuses == [201, 201, 409, 409, 409, 409], [(r.status, r.data) for r in replies]
    assert len(await list_ids(partner)) == 2


# --- who may call -----------------------------------------------------------------------------


async def test_a_token_is_required(partner: Partner) -> None:
    for method, path in (("GET", E), ("POST", E), ("GET", f"{E}/{uuid.uuid4()}")):
        reply = await send(partner, method, path, {"url": "https://example.com/"}, token=None)
        assert_problem(reply, 401)
        assert reply.headers["www-authenticate"].startswith("Bearer")
    assert_problem(await send(partner, "GET", E, token="not.a.token"), 401)


async def test_webhooks_manage_is_required(
    partner: Partner, receiver: Receiver, get_token: TokenFactory
) -> None:
    endpoint = await partner.endpoint(receiver.url("/scoped"))
    feed_only = (await get_token(partner.tenant, scope="events:read"))["access_token"]
    one = f"{E}/{endpoint['id']}"
    for method, path, body in (
        ("GET", E, None),
        ("POST", E, {"url": receiver.url("/x")}),
        ("GET", one, None),
        ("PATCH", one, {"description": "no"}),
        ("DELETE", one, None),
        ("POST", one + "/secret/rotate", None),
        ("POST", one + "/test", None),
        ("GET", one + "/health", None),
        ("GET", one + "/deliveries", None),
    ):
        reply = await send(partner, method, path, body, token=feed_only)
        assert_problem(reply, 403)
        assert "webhooks:manage" in reply.data["detail"]
        assert 'error="insufficient_scope"' in reply.headers["www-authenticate"]
    assert receiver.at("/scoped", kind="webhook.test") == []
    assert await list_ids(partner) == [endpoint["id"]]


async def test_a_clinic_token_needs_webhooks_manage_too(
    partner: Partner, receiver: Receiver, get_token: TokenFactory
) -> None:
    tenant = partner.tenant
    plain = (await get_token(tenant, clinic_id=tenant.clinic_id))["access_token"]
    assert_problem(await send(partner, "GET", E, token=plain), 403)
    assert_problem(await send(partner, "POST", E, {"url": receiver.url("/c")}, token=plain), 403)

    managing = (
        await get_token(tenant, clinic_id=tenant.clinic_id, scope="bookings:read webhooks:manage")
    )["access_token"]
    made = await send(partner, "POST", E, {"url": receiver.url("/c")}, token=managing)
    assert made.status == 201, made.data
    # The endpoint belongs to the application, whichever of its tokens made it.
    assert await list_ids(partner) == [made.data["id"]]
    listed = await send(partner, "GET", E, token=managing)
    assert [i["id"] for i in listed.data["items"]] == [made.data["id"]]


async def test_applications_never_see_each_others_endpoints(
    partner_for: PartnerFactory, callbacks: Callbacks, receiver: Receiver
) -> None:
    a = await partner_for(callbacks)
    b = await partner_for(callbacks)
    hook = receiver.url("/mine")
    endpoint = await a.endpoint(hook, description="A's")
    tested = await send(a, "POST", f"{E}/{endpoint['id']}/test")
    assert tested.status == 200, tested.data
    delivery = tested.data["delivery_id"]
    one = f"{E}/{endpoint['id']}"

    for method, path, body in (
        ("GET", one, None),
        ("PATCH", one, {"description": "B's now"}),
        ("PATCH", one, {"url": receiver.url("/stolen")}),
        ("DELETE", one, None),
        ("POST", one + "/secret/rotate", None),
        ("POST", one + "/test", None),
        ("GET", one + "/health", None),
        ("GET", one + "/deliveries", None),
        ("POST", one + "/recover", {"since": "2020-01-01T00:00:00+00:00"}),
        ("GET", f"/v1/webhooks/deliveries/{delivery}", None),
        ("POST", f"/v1/webhooks/deliveries/{delivery}/replay", None),
    ):
        assert_problem(await send(b, method, path, body), 404)

    assert await list_ids(b) == []
    mine = await send(a, "GET", one)
    assert mine.status == 200
    assert mine.headers["etag"] == '"1"'
    assert mine.data["description"] == "A's"
    assert mine.data["url"] == hook
    # Only A's own test reached the receiver, signed with A's (unrotated) secret.
    tests = receiver.at("/mine", kind="webhook.test")
    assert len(tests) == 1
    assert Webhook(endpoint["secret"]).verify(tests[0].body, tests[0].headers)
    assert receiver.at("/stolen") == []
    detail = await send(a, "GET", f"/v1/webhooks/deliveries/{delivery}")
    assert detail.status == 200
    assert len(detail.data["attempt_log"]) == 1


# --- SSRF -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2/",
        "http://10.0.0.1/",
        "http://192.168.0.10:8080/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://100.64.0.1/",
        "http://2130706433/",
        "http://127.1/",
        "http://nonexistent-host.invalid/hook",
    ],
)
async def test_urls_reaching_inside_are_refused(partner: Partner, url: str) -> None:
    reply = await send(partner, "POST", E, {"url": url})
    assert fields_of(reply) == ["body.url"]
    assert await list_ids(partner) == []


async def test_local_hosts_are_refused_unless_allowed(
    start: CallbacksFactory, partner_for: PartnerFactory, http: aiohttp.ClientSession
) -> None:
    service = await start(webhook_allowed_hosts=())
    await ready(service, http)
    partner = await partner_for(service)
    for url in ("http://localhost/", "http://localhost:8080/hook", "http://127.0.0.1:8080/"):
        reply = await send(partner, "POST", E, {"url": url})
        assert fields_of(reply) == ["body.url"], url
    assert await list_ids(partner) == []


async def test_production_applications_need_https(
    partner_for: PartnerFactory, callbacks: Callbacks, receiver: Receiver
) -> None:
    partner = await partner_for(callbacks, environment="production")
    reply = await send(partner, "POST", E, {"url": "http://hooks.example.com/vetgate"})
    assert fields_of(reply) == ["body.url"]
    assert "https" in reply.data["errors"][0]["message"]
    # An address refusal still applies to production over https.
    refused = await send(partner, "POST", E, {"url": "https://10.0.0.1/"})
    assert fields_of(refused) == ["body.url"]
    assert await list_ids(partner) == []
    # The hosts allowed by the settings (the local receivers) are exempt.
    allowed = await send(partner, "POST", E, {"url": receiver.url("/prod")})
    assert allowed.status == 201, allowed.data


async def test_a_sandbox_application_may_use_http(partner: Partner, receiver: Receiver) -> None:
    reply = await send(partner, "POST", E, {"url": receiver.url("/plain")})
    assert reply.status == 201
    assert reply.data["url"].startswith("http://")


# --- secret rotation and test sends -------------------------------------------------------------


async def test_rotation_signs_with_both_secrets(partner: Partner, receiver: Receiver) -> None:
    endpoint = await partner.endpoint(receiver.url("/rot"))
    old = endpoint["secret"]
    path = f"{E}/{endpoint['id']}"

    before = datetime.now(UTC)
    rotated = await send(partner, "POST", path + "/secret/rotate")
    assert rotated.status == 200, rotated.data
    assert rotated.headers["cache-control"] == "no-store"
    new = rotated.data["secret"]
    assert new != old
    assert len(secret_bytes(new)) >= 24
    until = datetime.fromisoformat(rotated.data["previous_valid_until"])
    assert until.tzinfo is not None
    expected = before + timedelta(hours=24)
    assert expected - timedelta(minutes=2) < until < expected + timedelta(minutes=2)

    result = await send(partner, "POST", path + "/test")
    assert result.status == 200, result.data
    assert result.data["succeeded"] is True
    got = receiver.at("/rot", kind="webhook.test")
    assert len(got) == 1
    request = got[0]
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    assert Webhook(old).verify(request.body, request.headers)["type"] == "webhook.test"
    assert Webhook(new).verify(request.body, request.headers)["type"] == "webhook.test"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(request.body, request.headers)

    assert "secret" not in (await send(partner, "GET", path)).data


async def test_a_test_send_returns_the_attempt(partner: Partner, receiver: Receiver) -> None:
    endpoint = await partner.endpoint(receiver.url("/t"), event_types=["booking.created"])
    reply = await send(partner, "POST", f"{E}/{endpoint['id']}/test")
    assert reply.status == 200, reply.data
    result = reply.data
    assert result["succeeded"] is True
    attempt = result["attempt"]
    assert attempt["status_code"] == 200
    assert attempt["trigger"] == "test"
    assert isinstance(attempt["duration_ms"], int)
    assert attempt["duration_ms"] >= 0
    assert attempt["error"] is None
    assert attempt["response_excerpt"] == "ok"

    # The answer comes after the attempt: the receiver already has it.
    got = receiver.at("/t", kind="webhook.test")
    assert len(got) == 1
    request = got[0]
    assert request.headers["webhook-id"] == result["event_id"]
    payload = Webhook(endpoint["secret"]).verify(request.body, request.headers)
    assert payload["id"] == result["event_id"]
    assert payload["type"] == "webhook.test"
    assert payload["data"]["endpoint_id"] == endpoint["id"]

    detail = await send(partner, "GET", f"/v1/webhooks/deliveries/{result['delivery_id']}")
    assert detail.status == 200
    assert detail.data["status"] == "succeeded"
    assert detail.data["event_type"] == "webhook.test"
    assert detail.data["event_id"] == result["event_id"]
    assert detail.data["attempts"] == 1
    assert [a["id"] for a in detail.data["attempt_log"]] == [attempt["id"]]


async def test_a_failing_test_send_is_reported_and_not_retried(
    partner: Partner, receiver: Receiver
) -> None:
    async def broken(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(status=500, text="kaputt")

    endpoint = await partner.endpoint(receiver.on("/broken", broken))
    reply = await send(partner, "POST", f"{E}/{endpoint['id']}/test")
    assert reply.status == 200, reply.data
    result = reply.data
    assert result["succeeded"] is False
    assert result["attempt"]["status_code"] == 500
    assert result["attempt"]["trigger"] == "test"
    assert result["attempt"]["response_excerpt"] == "kaputt"
    assert len(receiver.at("/broken", kind="webhook.test")) == 1

    detail = await send(partner, "GET", f"/v1/webhooks/deliveries/{result['delivery_id']}")
    assert detail.data["status"] == "failed"
    assert detail.data["last_status"] == 500
    assert detail.data["next_attempt_at"] is None
    # A test does not start the endpoint's failure clock.
    health = await send(partner, "GET", f"{E}/{endpoint['id']}/health")
    assert health.data["failing_since"] is None
    assert health.data["enabled"] is True


async def test_health_of_a_fresh_endpoint(partner: Partner, receiver: Receiver) -> None:
    # Pings wait here, so no ping can have been answered when health is read.
    release = asyncio.Event()

    async def slow(request: web.Request, n: int) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="ok")

    endpoint = await partner.endpoint(receiver.on("/fresh", slow))
    try:
        reply = await send(partner, "GET", f"{E}/{endpoint['id']}/health")
        assert reply.status == 200, reply.data
        health = reply.data
        assert health == {
            "endpoint_id": endpoint["id"],
            "state": "unknown",
            "enabled": True,
            "last_ping_at": None,
            "last_ping_status": None,
            "last_ping_error": None,
            "consecutive_failures": 0,
            "alerted": False,
            "next_ping_at": health["next_ping_at"],
            "last_success_at": None,
            "failing_since": None,
        }
        assert health["next_ping_at"] is not None

        off = await send(partner, "PATCH", f"{E}/{endpoint['id']}", {"enabled": False})
        assert off.status == 200
        assert off.data["enabled"] is False
        assert off.data["disabled_at"] is not None
        disabled = (await send(partner, "GET", f"{E}/{endpoint['id']}/health")).data
        assert disabled["state"] == "disabled"
        assert disabled["enabled"] is False
        assert disabled["next_ping_at"] is None
    finally:
        release.set()


async def test_an_idempotent_replay_carries_the_current_etag(
    partner: Partner, receiver: Receiver
) -> None:
    key = {"Idempotency-Key": f"etag-{uuid.uuid4()}"}
    body = {"url": receiver.url("/etag")}
    first = await send(partner, "POST", E, body, headers=key)
    assert first.status == 201
    changed = await send(partner, "PATCH", first.headers["location"], {"description": "v2"})
    assert changed.headers["etag"] == '"2"'

    again = await send(partner, "POST", E, body, headers=key)
    assert again.status == 200
    assert again.data["description"] == "v2"
    assert again.headers["etag"] == changed.headers["etag"]
