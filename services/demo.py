"""``vetgate demo``: a partner's first integration, played against the running sandbox.

Everything here goes through the public API the way a partner's code would: tokens, mappings,
a day of slots, availability, a booking, its signed webhook at a receiver started here (and
checked by hand, as a partner without a library would), reschedule, cancel, a registration and
the event feed. Each step prints the HTTP call it made and what came back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import quote_plus
from zoneinfo import ZoneInfo

import aiohttp
from aiohttp import web

CLINIC_SCOPES = "bookings:read bookings:write registrations:write clients:read"
APP_SCOPES = "webhooks:manage events:read"
TOLERANCE_SECONDS = 300


class DemoFailed(Exception):
    """A step did not get the answer it needed; the message says which and why."""


def basic_auth(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1 client authentication: both parts form-encoded, then Base64."""
    raw = f"{quote_plus(client_id)}:{quote_plus(client_secret)}"
    return "Basic " + base64.b64encode(raw.encode()).decode()


def verify_webhook(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Standard Webhooks: HMAC-SHA256 of ``id.timestamp.body`` with the secret's bytes, compared
    with every ``v1,`` signature sent, and a timestamp no older than five minutes."""
    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "0")
    if abs(time.time() - int(stamp)) > TOLERANCE_SECONDS:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    sent = [s.removeprefix("v1,") for s in headers.get("webhook-signature", "").split()]
    return any(hmac.compare_digest(expected, s) for s in sent)


class Receiver:
    """The partner's webhook endpoint: a small aiohttp server on this machine."""

    def __init__(self, host: str | None = None) -> None:
        """``host``: the name the callbacks service reaches this machine by, when that is not
        127.0.0.1 (a service in a container); the receiver then listens on every interface."""
        self.received: asyncio.Queue[tuple[dict[str, str], bytes]] = asyncio.Queue()
        self._runner: web.AppRunner | None = None
        self._host = host
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/webhooks", self._receive)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "0.0.0.0" if self._host else "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        host = self._host or "127.0.0.1"
        if ":" in host:  # an IPv6 literal
            host = f"[{host.strip('[]')}]"
        self.url = f"http://{host}:{port}/webhooks"

    async def _receive(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        await self.received.put((headers, await request.read()))
        return web.Response(status=204)

    async def wait_for(self, event_type: str, within: float = 15.0) -> tuple[dict[str, str], bytes]:
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DemoFailed(f"no {event_type} webhook arrived within {within:.0f} s")
            headers, body = await asyncio.wait_for(self.received.get(), left)
            if json.loads(body).get("type") == event_type:
                return headers, body

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class Partner:
    """HTTP calls with a transcript line for each."""

    def __init__(self, session: aiohttp.ClientSession, base: str, say: Callable[[str], None]):
        self.session = session
        self.base = base.rstrip("/")
        self.say = say
        self.token = ""

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        form: dict[str, str] | None = None,
        auth: str | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        expect: tuple[int, ...] = (200, 201),
    ) -> Any:
        sent = dict(headers or {})
        bearer = token if token is not None else self.token
        if auth is not None:
            sent["Authorization"] = auth
        elif bearer:
            sent["Authorization"] = f"Bearer {bearer}"
        self.say(f"   → {method} {path}" + (f"  {json.dumps(body)}" if body is not None else ""))
        async with self.session.request(
            method, self.base + path, json=body, data=form, headers=sent
        ) as response:
            answer = await response.json(content_type=None) if response.status != 204 else None
        self.say(f"   ← {response.status}")
        if response.status not in expect:
            raise DemoFailed(f"{method} {path} answered {response.status}: {answer}")
        return answer


async def run(
    *,
    base_url: str,
    client_id: str,
    client_secret: str,
    clinic_id: str,
    receiver_host: str | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Play the partner; return what it made (ids), or raise DemoFailed."""
    receiver = Receiver(receiver_host)
    await receiver.start()
    timeout = aiohttp.ClientTimeout(total=30)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            return await _play(
                Partner(session, base_url, say), receiver, client_id, client_secret, clinic_id
            )
    finally:
        await receiver.stop()


async def _play(
    p: Partner, receiver: Receiver, client_id: str, client_secret: str, clinic_id: str
) -> dict[str, Any]:
    basic = basic_auth(client_id, client_secret)
    c = f"/v1/clinics/{clinic_id}"

    p.say("1. Get an access token for the clinic (OAuth 2.0 client credentials)")
    got = await p.call(
        "POST",
        "/oauth/token",
        form={"grant_type": "client_credentials", "clinic_id": clinic_id, "scope": CLINIC_SCOPES},
        auth=basic,
    )
    p.token = got["access_token"]
    p.say(f"   token valid {got['expires_in']} s, scopes: {got['scope']}")

    p.say("2. Subscribe a webhook endpoint (an application token; the secret is shown once)")
    app_token = (
        await p.call(
            "POST",
            "/oauth/token",
            form={"grant_type": "client_credentials", "scope": APP_SCOPES},
            auth=basic,
        )
    )["access_token"]
    endpoint = await p.call(
        "POST",
        "/v1/webhooks/endpoints",
        body={
            "url": receiver.url,
            "event_types": ["booking.created", "booking.rescheduled", "booking.cancelled"],
            "clinic_ids": [clinic_id],
            "description": "vetgate demo",
        },
        token=app_token,
        headers={"Idempotency-Key": f"demo-endpoint-{secrets.token_hex(6)}"},
    )
    p.say(f"   endpoint {endpoint['id']}, secret {endpoint['secret'][:10]}…")

    p.say("3. Map your own ids to the clinic's practitioners and services")
    vets = await p.call("GET", f"{c}/practitioners?limit=10")
    services = await p.call("GET", f"{c}/services?limit=10")
    vet = vets["items"][0]
    service = next(s for s in services["items"] if vet["id"] in s["practitioner_ids"])
    # Your own id for this practitioner: stable, so that running the demo again maps it again.
    mine = f"demo-vet-{vet['id'][:8]}"
    await p.call("PUT", f"{c}/mappings/practitioner/{mine}", body={"resource_id": vet["id"]})
    p.say(f"   your '{mine}' is {vet['name']} ({vet['id']})")

    day = _next_weekday(ZoneInfo("Europe/London"))
    p.say(f"4. Publish {vet['name']}'s slots for {day} (replaces that day's working hours)")
    london = ZoneInfo("Europe/London")
    start = datetime.combine(day, datetime.min.time().replace(hour=9), london)
    await p.call(
        "PUT",
        f"{c}/practitioners/{vet['id']}/slots/{day}",
        body={
            "slots": [{"start": start.isoformat(), "end": (start + timedelta(hours=3)).isoformat()}]
        },
    )

    p.say("5. Search availability for that day")
    query = f"service_id={service['id']}&practitioner_id={vet['id']}"
    window = f"from={_q(start - timedelta(hours=9))}&to={_q(start + timedelta(hours=15))}"
    found = await p.call("GET", f"{c}/availability?{query}&{window}")
    slots = found["slots"]
    if len(slots) < 2:
        raise DemoFailed(f"expected bookable starts on {day}, got {slots}")
    p.say(f"   {len(slots)} bookable starts, first {slots[0]['start']}")

    p.say("6. Book the first one (an Idempotency-Key makes a retry safe)")
    booking = await p.call(
        "POST",
        f"{c}/bookings",
        body={
            "practitioner_id": vet["id"],
            "service_id": service["id"],
            "start": slots[0]["start"],
            "prospect": {
                "owner": {"first_name": "Dana", "last_name": "Demo", "email": "dana@example.com"},
                "pet": {"name": "Biscuit", "species": "dog"},
            },
        },
        headers={"Idempotency-Key": f"demo-booking-{secrets.token_hex(6)}"},
    )
    p.say(f"   booking {booking['id']} at {booking['start']}, status {booking['status']}")

    p.say("7. Receive the signed booking.created webhook and check its signature")
    headers, body = await receiver.wait_for("booking.created")
    if not verify_webhook(endpoint["secret"], headers, body):
        raise DemoFailed("the booking.created webhook's signature did not verify")
    event = json.loads(body)
    p.say(
        f"   webhook-id {headers['webhook-id']}: {event['type']} for booking "
        f"{event['data']['id']}, sequence {event['sequence']}; signature verified"
    )

    p.say("8. Reschedule to the next free start")
    moved = await p.call(
        "POST",
        f"{c}/bookings/{booking['id']}/reschedule",
        body={"start": slots[-1]["start"]},
        headers={"If-Match": f'"{booking["version"]}"'},
    )
    p.say(f"   now at {moved['start']}")

    p.say("9. Cancel it")
    cancelled = await p.call(
        "POST",
        f"{c}/bookings/{booking['id']}/cancel",
        body={"reason": "The demo is over"},
        headers={"If-Match": f'"{moved["version"]}"'},
    )
    p.say(f"   status {cancelled['status']}")

    p.say("10. Register a new client with a pet (the form says what to ask)")
    form = await p.call("GET", f"{c}/registration-form")
    consents = {item["code"]: True for item in form["consents"] if item.get("required")}
    tag = secrets.token_hex(3)
    client = await p.call(
        "POST",
        f"{c}/registrations",
        body={
            "client": {
                "first_name": "Robin",
                "last_name": f"Demo-{tag}",
                "email": f"robin.{tag}@example.com",
                "phone": "020 7946 0958",
            },
            "patients": [{"name": "Pickle", "species": form["species"][0]["code"]}],
            "consents": consents,
        },
        headers={"Idempotency-Key": f"demo-registration-{tag}"},
    )
    p.say(f"   client {client['id']} with pet {client['patients'][0]['name']}")

    p.say("11. Pull the event feed (what a partner whose endpoint was down reconciles from)")
    feed = await p.call("GET", "/v1/events?limit=200", token=app_token)
    mine_events = [e for e in feed["items"] if e["data"].get("id") == booking["id"]]
    p.say(
        f"   {len(feed['items'])} events on this page; this booking's: "
        + ", ".join(f"{e['type']} #{e['sequence']}" for e in mine_events)
    )
    return {
        "endpoint_id": endpoint["id"],
        "booking_id": booking["id"],
        "client_id": client["id"],
        "webhook_id": headers["webhook-id"],
        "feed_types": [e["type"] for e in mine_events],
    }


def _next_weekday(tz: ZoneInfo) -> date:
    day = datetime.now(tz).date() + timedelta(days=2)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def _q(moment: datetime) -> str:
    return moment.isoformat().replace("+", "%2B")
