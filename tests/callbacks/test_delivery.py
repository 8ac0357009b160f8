"""Webhook delivery over real HTTP and the real broker: signing, retries, redirects, 410,
Retry-After, exhaustion with replay and recovery, isolation from a hanging endpoint, ordering,
filters and grants, an endpoint's rate limit, auto-disable, a worker dying with leases held, and
a booking made through the real bookings service arriving as a signed webhook.

Every endpoint is also pinged once when it is created (monitoring), so the receivers here tell
pings from events by the envelope's ``type`` and count only events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.bookings.app import create_app as create_bookings_app
from services.bookings.settings import BookingsSettings
from services.callbacks.app import create_app
from services.callbacks.settings import CallbacksSettings
from shared.broker import Broker
from shared.events import Event
from tests.bookings.conftest import Partner as ClinicDesk
from tests.bookings.test_bookings import open_desk
from tests.callbacks.conftest import (
    Callbacks,
    CallbacksFactory,
    Partner,
    PartnerFactory,
    Received,
    Receiver,
    another_clinic,
    booking_event,
    client_event,
    grant_clinic,
    publish,
)
from tests.callbacks.mailbox import all_mail_sent, contact_of, mail_rows, mails, text_of
from tests.conftest import Admin, TokenFactory
from tests.polling import eventually
from tests.test_cli import ok, process_env, vetgate

E = "/v1/webhooks/endpoints"
D = "/v1/webhooks/deliveries"
PING = "ping"


# --- receivers that script their answers to events (pings always get 200) ---------------------


Answer = int | tuple[int, dict[str, str]]


class Script:
    """Answers the k-th event request with ``first[k]``, and ``then`` after those; a ping is
    answered 200 and not counted. ``then`` may be changed while the test runs."""

    def __init__(self, *first: Answer, then: Answer = 200) -> None:
        self.first = list(first)
        self.then = then
        self.events = 0

    async def __call__(self, request: web.Request, n: int) -> web.StreamResponse:
        body = json.loads(await request.read())
        if body.get("type") == PING:
            return web.Response(status=200)
        k = self.events
        self.events += 1
        answer = self.first[k] if k < len(self.first) else self.then
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return web.Response(status=status, headers=headers, text=f"answer {status}")


class Gate:
    """Holds every event request open until released (or ``hold`` seconds pass), then 200."""

    def __init__(self, hold: float = 30.0) -> None:
        self.hold = hold
        self.open = asyncio.Event()

    async def __call__(self, request: web.Request, n: int) -> web.StreamResponse:
        body = json.loads(await request.read())
        if body.get("type") != PING and not self.open.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.open.wait(), self.hold)
        return web.Response(status=200)


def events_at(receiver: Receiver, path: str) -> list[Received]:
    """What reached ``path`` other than monitoring pings, in arrival order."""
    return [r for r in receiver.at(path) if r.json().get("type") != PING]


def of_event(receiver: Receiver, path: str, event: Event) -> list[Received]:
    return [r for r in events_at(receiver, path) if r.headers.get("webhook-id") == str(event.id)]


# --- the API and the service's tables ------------------------------------------------------------


async def deliveries(
    partner: Partner, endpoint_id: str, status: str | None = None
) -> list[dict[str, Any]]:
    params = {"limit": "200"}
    if status is not None:
        params["status"] = status
    _, page = await partner.call("GET", f"{E}/{endpoint_id}/deliveries", params=params, expect=200)
    return list(page["items"])


async def detail(partner: Partner, delivery_id: str) -> dict[str, Any]:
    _, body = await partner.call("GET", f"{D}/{delivery_id}", expect=200)
    return dict(body)


async def delivery_of(
    partner: Partner, endpoint_id: str, event: Event, *, status: str, seconds: float = 10.0
) -> dict[str, Any]:
    """The endpoint's delivery of ``event`` once it has ``status``, with its attempt log."""

    async def check() -> dict[str, Any] | None:
        for item in await deliveries(partner, endpoint_id):
            if item["event_id"] == str(event.id):
                found = await detail(partner, item["id"])
                return found if found["status"] == status else None
        return None

    found: dict[str, Any] = await eventually(check, f"a {status} delivery of {event.type}", seconds)
    return found


async def get_endpoint(partner: Partner, endpoint_id: str) -> dict[str, Any]:
    _, body = await partner.call("GET", f"{E}/{endpoint_id}", expect=200)
    return dict(body)


async def kept(service: Callbacks, event: Event) -> list[uuid.UUID]:
    """Wait until the service has taken ``event`` in (kept and fanned out in one transaction);
    return the endpoints it made deliveries for."""

    async def taken() -> bool:
        async with service.pool.acquire() as conn:
            return bool(
                await conn.fetchval("SELECT true FROM events WHERE event_id = $1", event.id)
            )

    await eventually(taken, f"{event.type} taken in")
    async with service.pool.acquire() as conn:
        rows = await conn.fetch("SELECT endpoint_id FROM deliveries WHERE event_id = $1", event.id)
    return [r["endpoint_id"] for r in rows]


# --- signing ---------------------------------------------------------------------------------


async def test_delivery_is_signed_and_carries_the_event_envelope(
    partner: Partner, receiver: Receiver, bus: Broker
) -> None:
    endpoint = await partner.endpoint(receiver.url("/signed"))
    event = await publish(bus, booking_event(partner.tenant.clinic_id, sequence=1))

    got = await eventually(lambda: of_event(receiver, "/signed", event), "the webhook")
    request = got[0]
    payload = Webhook(endpoint["secret"]).verify(request.body, request.headers)
    assert payload == event.model_dump(mode="json")
    assert json.loads(request.body) == event.model_dump(mode="json")
    assert request.headers["webhook-id"] == str(event.id)
    assert request.headers["Content-Type"] == "application/json"
    # Another secret does not verify it.
    other = await partner.endpoint(receiver.url("/other"))
    with pytest.raises(WebhookVerificationError):
        Webhook(other["secret"]).verify(request.body, request.headers)


# --- retries ---------------------------------------------------------------------------------


async def test_a_500_is_retried_and_one_success_is_recorded(
    partner: Partner, receiver: Receiver, bus: Broker
) -> None:
    url = receiver.on("/flaky", Script(500))
    endpoint = await partner.endpoint(url)
    event = await publish(bus, booking_event(partner.tenant.clinic_id))

    delivery = await delivery_of(partner, endpoint["id"], event, status="succeeded")
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 200]
    assert [a["trigger"] for a in delivery["attempt_log"]] == ["scheduled", "scheduled"]
    assert delivery["attempts"] == 2
    assert delivery["last_status"] == 200
    assert delivery["completed_at"] is not None
    assert delivery["next_attempt_at"] is None

    requests = events_at(receiver, "/flaky")
    assert len(requests) == 2
    assert {r.headers["webhook-id"] for r in requests} == {str(event.id)}
    # Nothing more is sent once it has succeeded (the retry schedule would have gone on).
    await asyncio.sleep(1.5)
    assert len(events_at(receiver, "/flaky")) == 2
    assert (await detail(partner, delivery["id"]))["attempts"] == 2

    succeeded = await deliveries(partner, endpoint["id"], "succeeded")
    assert [d["id"] for d in succeeded] == [delivery["id"]]
    assert await deliveries(partner, endpoint["id"], "failed") == []
    assert await deliveries(partner, endpoint["id"], "pending") == []
    status, problem = await partner.call(
        "GET", f"{E}/{endpoint['id']}/deliveries", params={"status": "done"}
    )
    assert status in (400, 422), problem


async def test_an_answer_with_nul_bytes_is_recorded_beside_the_others(
    partner: Partner, receiver: Receiver, bus: Broker
) -> None:
    async def binary(request: web.Request, n: int) -> web.StreamResponse:
        return web.Response(
            body=b"ok\x00\x1f\x8b\x00binary", content_type="application/octet-stream"
        )

    endpoint = await partner.endpoint(receiver.on("/binary", binary))
    plain = await partner.endpoint(receiver.url("/plain"))
    event = await publish(bus, booking_event(partner.tenant.clinic_id))

    delivery = await delivery_of(partner, endpoint["id"], event, status="succeeded")
    [attempt] = delivery["attempt_log"]
    assert attempt["response_excerpt"].startswith("ok\ufffd")
    assert "\x00" not in attempt["response_excerpt"]
    # The attempt recorded in the same batch is not held back by it.
    assert (await delivery_of(partner, plain["id"], event, status="succeeded"))["attempts"] == 1
    # The excerpt is kept as it came, so the answer is asked for uncompressed.
    assert {r.headers.get("Accept-Encoding") for r in receiver.at("/binary")} == {"identity"}


async def test_a_redirect_is_not_followed_and_is_retried(
    partner: Partner, receiver: Receiver, bus: Broker
) -> None:
    target = receiver.url("/target")
    url = receiver.on("/moved", Script((302, {"Location": target})))
    endpoint = await partner.endpoint(url)
    event = await publish(bus, booking_event(partner.tenant.clinic_id))

    delivery = await delivery_of(partner, endpoint["id"], event, status="succeeded")
    first, second = delivery["attempt_log"]
    assert first["status_code"] == 302
    assert "redirect" in first["error"]
    assert second["status_code"] == 200
    assert len(events_at(receiver, "/moved")) == 2
    assert receiver.at("/target") == []


async def test_a_429_retry_after_is_honoured(
    partner: Partner, receiver: Receiver, bus: Broker
) -> None:
    url = receiver.on("/busy", Script((429, {"Retry-After": "1"})))
    endpoint = await partner.endpoint(url)
    event = await publish(bus, booking_event(partner.tenant.clinic_id))

    delivery = await delivery_of(partner, endpoint["id"], event, status="succeeded")
    assert [a["status_code"] for a in delivery["attempt_log"]] == [429, 200]
    first, second = events_at(receiver, "/busy")
    # The schedule alone would retry after 0.3 s; the receiver asked for 1 s.
    assert second.at - first.at >= 0.8


# --- 410 and disabling -------------------------------------------------------------------------


async def test_a_410_disables_the_endpoint_until_it_is_enabled_again(
    partner: Partner,
    receiver: Receiver,
    bus: Broker,
    callbacks: Callbacks,
    admin: Admin,
    smtp: Any,
) -> None:
    script = Script(then=410)
    url = receiver.on("/gone", script)
    endpoint = await partner.endpoint(url)
    contact = await contact_of(admin, partner)
    event = await publish(bus, booking_event(partner.tenant.clinic_id))

    delivery = await delivery_of(partner, endpoint["id"], event, status="failed")
    assert [a["status_code"] for a in delivery["attempt_log"]] == [410]
    read = await get_endpoint(partner, endpoint["id"])
    assert read["enabled"] is False
    assert "410" in read["disabled_reason"]
    assert read["disabled_at"] is not None

    got = await eventually(lambda: mails(smtp, contact, "disabled"), "the disabled mail")
    assert "410" in text_of(got[0])

    # Disabled: an event makes no delivery at all.
    later = await publish(bus, booking_event(partner.tenant.clinic_id))
    assert uuid.UUID(endpoint["id"]) not in await kept(callbacks, later)

    script.then = 200
    _, enabled = await partner.call("PATCH", f"{E}/{endpoint['id']}", {"enabled": True}, expect=200)
    assert enabled["enabled"] is True
    assert enabled["disabled_reason"] is None
    again = await publish(bus, booking_event(partner.tenant.clinic_id))
    await delivery_of(partner, endpoint["id"], again, status="succeeded")
    assert of_event(receiver, "/gone", later) == []
    assert len(of_event(receiver, "/gone", event)) == 1

    await all_mail_sent(callbacks)
    assert len(mails(smtp, contact, "disabled")) == 1
    assert await mail_rows(callbacks, endpoint["id"], "disabled") == 1


async def test_an_endpoint_failing_too_long_is_disabled_with_one_mail(
    start: CallbacksFactory,
    partner_for: PartnerFactory,
    receiver: Receiver,
    bus: Broker,
    admin: Admin,
    smtp: Any,
) -> None:
    service = await start(auto_disable_after_seconds=1, retry_schedule=(0, 0.5, 0.5, 0.5, 0.5, 0.5))
    partner = await partner_for(service)
    contact = await contact_of(admin, partner)
    url = receiver.on("/silent", Script(then=500))
    endpoint = await partner.endpoint(url)
    event = await publish(bus, booking_event(partner.tenant.clinic_id))

    async def disabled() -> dict[str, Any] | None:
        read = await get_endpoint(partner, endpoint["id"])
        return read if not read["enabled"] else None

    read = await eventually(disabled, "the endpoint disabled")
    assert "no delivery succeeded" in read["disabled_reason"]
    await eventually(lambda: mails(smtp, contact, "disabled"), "the disabled mail")

    # Attempts stop with the endpoint: the delivery waits, no longer tried.
    [pending] = await deliveries(partner, endpoint["id"])
    assert pending["event_id"] == str(event.id)
    tried = len(events_at(receiver, "/silent"))
    assert 2 <= tried < 6
    await asyncio.sleep(1.5)
    assert len(events_at(receiver, "/silent")) == tried
    await all_mail_sent(service)
    assert len(mails(smtp, contact, "disabled")) == 1
    assert await mail_rows(service, endpoint["id"], "disabled") == 1


# --- exhaustion, replay, recovery --------------------------------------------------------------


async def test_a_delivery_failing_every_attempt_fails_and_replays_once(
    partner: Partner, receiver: Receiver, bus: Broker
) -> None:
    url = receiver.on("/down", Script(then=500))
    endpoint = await partner.endpoint(url)
    event = await publish(bus, booking_event(partner.tenant.clinic_id))

    delivery = await delivery_of(partner, endpoint["id"], event, status="failed")
    assert [a["status_code"] for a in delivery["attempt_log"]] == [500] * 4
    assert delivery["attempts"] == 4
    assert len(events_at(receiver, "/down")) == 4
    assert [d["id"] for d in await deliveries(partner, endpoint["id"], "failed")] == [
        delivery["id"]
    ]

    _, replayed = await partner.call("POST", f"{D}/{delivery['id']}/replay", expect=202)
    assert replayed["status"] == "pending"
    await eventually(lambda: len(events_at(receiver, "/down")) == 5, "the replayed request")

    async def failed_again() -> dict[str, Any] | None:
        found = await detail(partner, delivery["id"])
        return found if found["status"] == "failed" and found["attempts"] == 5 else None

    after = await eventually(failed_again, "the replay recorded")
    assert after["attempt_log"][-1]["trigger"] == "replay"
    assert after["attempt_log"][-1]["status_code"] == 500
    assert {r.headers["webhook-id"] for r in events_at(receiver, "/down")} == {str(event.id)}
    # A replay is one attempt: no schedule follows it.
    await asyncio.sleep(1.5)
    assert len(events_at(receiver, "/down")) == 5


async def test_replaying_a_pending_delivery_conflicts(
    partner: Partner, receiver: Receiver, bus: Broker
) -> None:
    url = receiver.on("/later", Script(then=(429, {"Retry-After": "3600"})))
    endpoint = await partner.endpoint(url)
    event = await publish(bus, booking_event(partner.tenant.clinic_id))

    async def tried() -> dict[str, Any] | None:
        for item in await deliveries(partner, endpoint["id"]):
            if item["event_id"] == str(event.id) and item["attempts"] == 1:
                return item
        return None

    delivery = await eventually(tried, "the first attempt recorded")
    assert delivery["status"] == "pending"
    assert delivery["next_attempt_at"] is not None
    status, problem = await partner.call("POST", f"{D}/{delivery['id']}/replay")
    assert status == 409, problem
    assert str(problem["type"]).endswith("delivery-pending")
    assert len(events_at(receiver, "/later")) == 1
    await partner.call("DELETE", f"{E}/{endpoint['id']}", expect=204)


async def test_recover_resends_the_failed_deliveries_since_a_time(
    partner: Partner, receiver: Receiver, bus: Broker
) -> None:
    script = Script(then=500)
    url = receiver.on("/recover", script)
    endpoint = await partner.endpoint(url)
    since = datetime.now(UTC) - timedelta(minutes=1)
    first = await publish(bus, booking_event(partner.tenant.clinic_id))
    second = await publish(bus, booking_event(partner.tenant.clinic_id))
    for event in (first, second):
        await delivery_of(partner, endpoint["id"], event, status="failed")

    path = f"{E}/{endpoint['id']}/recover"
    future = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    _, none = await partner.call("POST", path, {"since": future}, expect=202)
    assert none == {"endpoint_id": endpoint["id"], "deliveries": 0}

    script.then = 200
    _, result = await partner.call("POST", path, {"since": since.isoformat()}, expect=202)
    assert result == {"endpoint_id": endpoint["id"], "deliveries": 2}
    for event in (first, second):
        delivery = await delivery_of(partner, endpoint["id"], event, status="succeeded")
        assert delivery["attempt_log"][-1]["trigger"] == "replay"
        assert delivery["attempt_log"][-1]["status_code"] == 200
        assert len(of_event(receiver, "/recover", event)) == 5

    _, again = await partner.call("POST", path, {"since": since.isoformat()}, expect=202)
    assert again["deliveries"] == 0
    status, problem = await partner.call("POST", path, {"since": "2024-01-01T00:00:00"})
    assert status in (400, 422), problem


class Hang:
    """Answers events with ``status``; once ``hang`` is set, holds them until the attempt times
    out. Pings get 200."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.hang = False

    async def __call__(self, request: web.Request, n: int) -> web.StreamResponse:
        body = json.loads(await request.read())
        if body.get("type") != PING and self.hang:
            await asyncio.sleep(30)
        return web.Response(status=200 if body.get("type") == PING else self.status)


async def failed_deliveries(
    partner: Partner, receiver: Receiver, bus: Broker, path: str, script: Any, count: int
) -> tuple[dict[str, Any], list[Event]]:
    endpoint = await partner.endpoint(receiver.on(path, script))
    events = [await publish(bus, booking_event(partner.tenant.clinic_id)) for _ in range(count)]
    for event in events:
        await delivery_of(partner, endpoint["id"], event, status="failed")
    return endpoint, events


@pytest.fixture
def operator_env(
    overrides: dict[str, Any], database_url: str, callbacks: Callbacks
) -> dict[str, str]:
    """The environment of an operator's ``vetgate`` on the shared callbacks server's schema."""
    return process_env(overrides, database_url, VETGATE_DB_SCHEMA=callbacks.settings.db_schema)


def recover_args(endpoint: dict[str, Any], since: datetime) -> tuple[str, ...]:
    return ("recover-deliveries", "--endpoint-id", endpoint["id"], "--since", since.isoformat())


def progress_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("[")]


async def test_the_operator_recovers_an_endpoint_and_follows_every_attempt(
    partner: Partner, receiver: Receiver, bus: Broker, operator_env: dict[str, str]
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    script = Script(then=500)
    endpoint, events = await failed_deliveries(partner, receiver, bus, "/operator", script, 3)
    env = operator_env
    args = recover_args(endpoint, since)

    script.then = 200
    run = await vetgate(*args, env=env)
    assert run.returncode == 0, run.stderr
    assert run.json() == {
        "endpoint_id": endpoint["id"],
        "recovered": 3,
        "succeeded": 3,
        "failed": 0,
        "waiting": 0,
        "endpoint_enabled": True,
    }
    # A pipe gets plain lines, not redraws; the last one is where it ended.
    lines = progress_lines(run.stderr)
    assert "\r" not in run.stderr
    assert lines[-1] == f"[{'#' * 24}] 3/3 attempted: 3 succeeded, 0 failed"
    for event in events:
        delivery = await delivery_of(partner, endpoint["id"], event, status="succeeded")
        assert delivery["attempt_log"][-1]["trigger"] == "replay"
        assert {r.headers["webhook-id"] for r in of_event(receiver, "/operator", event)} == {
            str(event.id)
        }

    assert await ok(*args, env=env) == {"endpoint_id": endpoint["id"], "recovered": 0}

    unknown = await vetgate(
        "recover-deliveries",
        "--endpoint-id",
        str(uuid.uuid4()),
        "--since",
        since.isoformat(),
        env=env,
    )
    assert unknown.returncode == 1
    assert unknown.json()["status"] == 404
    assert "Traceback" not in unknown.stderr
    # A disabled endpoint's deliveries would never be attempted: refused, nothing requeued.
    await partner.call("PATCH", f"{E}/{endpoint['id']}", {"enabled": False}, expect=200)
    disabled = await vetgate(*args, env=env)
    assert disabled.returncode == 1
    assert str(disabled.json()["type"]).endswith("endpoint-disabled")
    for bad in ("yesterday", "2026-11-30T00:00:00"):
        usage = await vetgate(*args[:3], "--since", bad, env=env)
        assert usage.returncode == 2
        assert "--since" in usage.stderr
        assert "Traceback" not in usage.stderr


async def test_the_operator_is_told_when_replays_are_still_waiting(
    partner: Partner, receiver: Receiver, bus: Broker, operator_env: dict[str, str]
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    hang = Hang(500)
    endpoint, events = await failed_deliveries(partner, receiver, bus, "/operator-hang", hang, 2)
    env = operator_env
    args = recover_args(endpoint, since)

    hang.hang = True
    run = await vetgate(*args, "--timeout", "1", env=env)
    assert run.returncode == 1
    assert "2 deliveries were still waiting" in run.stderr
    assert "Traceback" not in run.stderr
    assert run.json()["waiting"] == 2
    assert progress_lines(run.stderr)[-1].startswith(f"[{'.' * 24}] 0/2 attempted")

    # --no-wait only requeues; the hanging attempts end as timeouts, and fail again.
    for event in events:
        delivery = await delivery_of(partner, endpoint["id"], event, status="failed")
        assert delivery["attempt_log"][-1]["trigger"] == "replay"
    queued = await vetgate(*args, "--no-wait", env=env)
    assert queued.returncode == 0, queued.stderr
    assert queued.json() == {"endpoint_id": endpoint["id"], "recovered": 2}
    assert progress_lines(queued.stderr) == []


# --- isolation -------------------------------------------------------------------------------


async def test_a_hanging_endpoint_does_not_hold_up_another_partner(
    partner_for: PartnerFactory, callbacks: Callbacks, receiver: Receiver, bus: Broker
) -> None:
    stuck_partner = await partner_for(callbacks)
    healthy_partner = await partner_for(callbacks)
    gate = Gate()
    stuck = await stuck_partner.endpoint(receiver.on("/hang", gate))
    healthy = await healthy_partner.endpoint(receiver.url("/healthy"))
    try:
        held = await publish(bus, booking_event(stuck_partner.tenant.clinic_id))
        await eventually(lambda: of_event(receiver, "/hang", held), "the hanging request")

        sent = [
            await publish(bus, booking_event(healthy_partner.tenant.clinic_id)) for _ in range(3)
        ]
        for event in sent:
            await delivery_of(healthy_partner, healthy["id"], event, status="succeeded")
        # All of them arrived while the hanging attempt was still open (it times out at 3 s).
        [pending] = await deliveries(stuck_partner, stuck["id"])
        assert pending["attempts"] == 0

        async def timed_out() -> dict[str, Any] | None:
            found = await detail(stuck_partner, pending["id"])
            return found if found["attempt_log"] else None

        first = (await eventually(timed_out, "the timed-out attempt"))["attempt_log"][0]
        assert first["error"] == "timed out"
        assert first["status_code"] is None
        assert first["duration_ms"] >= 2500
    finally:
        gate.open.set()
    await delivery_of(stuck_partner, stuck["id"], held, status="succeeded")


async def test_attempts_in_flight_per_endpoint_are_capped(
    start: CallbacksFactory, partner_for: PartnerFactory, receiver: Receiver, bus: Broker
) -> None:
    service = await start(endpoint_concurrency=2, attempt_timeout_seconds=30.0)
    partner = await partner_for(service)
    gate = Gate()
    endpoint = await partner.endpoint(receiver.on("/capped", gate))
    try:
        sent = [await publish(bus, booking_event(partner.tenant.clinic_id)) for _ in range(5)]
        for event in sent:
            await kept(service, event)
        await eventually(lambda: len(events_at(receiver, "/capped")) == 2, "two attempts open")
        # The other three are due, but wait for room.
        await asyncio.sleep(1.0)
        assert len(events_at(receiver, "/capped")) == 2
    finally:
        gate.open.set()
    for event in sent:
        await delivery_of(partner, endpoint["id"], event, status="succeeded")
    assert len(events_at(receiver, "/capped")) == 5


# --- ordering --------------------------------------------------------------------------------


def sequences(received: list[Received], aggregate: str) -> list[int]:
    return [r.json()["sequence"] for r in received if r.json()["aggregate"] == aggregate]


async def test_an_ordered_endpoint_gets_a_resource_in_sequence_despite_a_failure(
    partner: Partner, receiver: Receiver, bus: Broker
) -> None:
    answered: list[tuple[int, int]] = []
    failed_once = False

    async def first_one_fails(request: web.Request, n: int) -> web.StreamResponse:
        nonlocal failed_once
        body = json.loads(await request.read())
        if body["type"] == PING:
            return web.Response(status=200)
        status = 200
        if body["sequence"] == 1 and not failed_once:
            failed_once = True
            status = 500
        answered.append((body["sequence"], status))
        return web.Response(status=status)

    ordered = await partner.endpoint(receiver.on("/ordered", first_one_fails), ordered=True)
    await partner.endpoint(receiver.url("/unordered"))
    booking = uuid.uuid4()
    aggregate = f"booking:{booking}"
    sent = [
        await publish(
            bus,
            booking_event(
                partner.tenant.clinic_id,
                booking_id=booking,
                sequence=n,
                type="booking.created" if n == 1 else "booking.rescheduled",
            ),
        )
        for n in (1, 2, 3)
    ]

    await delivery_of(partner, ordered["id"], sent[-1], status="succeeded")
    assert answered == [(1, 500), (1, 200), (2, 200), (3, 200)]
    assert sequences(events_at(receiver, "/ordered"), aggregate) == [1, 1, 2, 3]
    await eventually(
        lambda: sorted(sequences(events_at(receiver, "/unordered"), aggregate)) == [1, 2, 3],
        "every event at the unordered endpoint",
    )


async def test_an_ordered_endpoint_waits_for_an_event_that_arrives_late(
    start: CallbacksFactory, partner_for: PartnerFactory, receiver: Receiver, bus: Broker
) -> None:
    # A long gap allowance, so that nothing but the missing event can release the later one.
    service = await start(ordering_gap_seconds=30.0)
    partner = await partner_for(service)
    ordered = await partner.endpoint(receiver.url("/ordered"), ordered=True)
    await partner.endpoint(receiver.url("/unordered"))
    booking = uuid.uuid4()
    aggregate = f"booking:{booking}"
    clinic = partner.tenant.clinic_id

    second = await publish(
        bus,
        booking_event(clinic, booking_id=booking, sequence=2, type="booking.cancelled"),
    )
    # The unordered endpoint is not held back by the gap...
    await eventually(
        lambda: of_event(receiver, "/unordered", second), "sequence 2 at the unordered endpoint"
    )
    # ...while the ordered one waits for sequence 1.
    [waiting] = await deliveries(partner, ordered["id"])
    assert waiting["event_id"] == str(second.id)
    assert waiting["status"] == "pending"
    assert waiting["attempts"] == 0
    assert events_at(receiver, "/ordered") == []

    first = await publish(bus, booking_event(clinic, booking_id=booking, sequence=1))
    await delivery_of(partner, ordered["id"], second, status="succeeded")
    assert sequences(events_at(receiver, "/ordered"), aggregate) == [1, 2]
    assert [r.headers["webhook-id"] for r in events_at(receiver, "/ordered")] == [
        str(first.id),
        str(second.id),
    ]


async def test_an_ordered_endpoint_waits_for_a_gap_in_a_resource_known_for_a_while(
    partner: Partner, callbacks: Callbacks, receiver: Receiver, bus: Broker
) -> None:
    ordered = await partner.endpoint(receiver.url("/ordered"), ordered=True)
    await partner.endpoint(receiver.url("/unordered"))
    booking = uuid.uuid4()
    aggregate = f"booking:{booking}"
    clinic = partner.tenant.clinic_id

    first = await publish(bus, booking_event(clinic, booking_id=booking, sequence=1))
    await delivery_of(partner, ordered["id"], first, status="succeeded")
    # The resource has now been known for longer than the gap allowance; a gap that opens now
    # is still waited for.
    await asyncio.sleep(callbacks.settings.ordering_gap_seconds + 0.5)
    third = await publish(
        bus, booking_event(clinic, booking_id=booking, sequence=3, type="booking.cancelled")
    )
    await eventually(lambda: of_event(receiver, "/unordered", third), "sequence 3 unordered")
    second = await publish(
        bus, booking_event(clinic, booking_id=booking, sequence=2, type="booking.rescheduled")
    )
    await delivery_of(partner, ordered["id"], third, status="succeeded")
    await delivery_of(partner, ordered["id"], second, status="succeeded")
    assert sequences(events_at(receiver, "/ordered"), aggregate) == [1, 2, 3]


async def test_an_ordered_endpoint_gives_up_on_a_missing_event_after_the_gap(
    partner: Partner, callbacks: Callbacks, receiver: Receiver, bus: Broker
) -> None:
    ordered = await partner.endpoint(receiver.url("/ordered"), ordered=True)
    await partner.endpoint(receiver.url("/unordered"))
    # Sequence 1 never comes (emitted before anyone listened, say).
    second = await publish(bus, booking_event(partner.tenant.clinic_id, sequence=2))

    [plain] = await eventually(lambda: of_event(receiver, "/unordered", second), "unordered")
    await delivery_of(partner, ordered["id"], second, status="succeeded")
    [late] = of_event(receiver, "/ordered", second)
    gap = callbacks.settings.ordering_gap_seconds
    assert late.at - plain.at >= gap * 0.75


# --- who gets what -----------------------------------------------------------------------------


async def test_event_type_and_clinic_filters(
    partner: Partner,
    admin: Admin,
    callbacks: Callbacks,
    receiver: Receiver,
    bus: Broker,
) -> None:
    tenant = partner.tenant
    second_clinic = await another_clinic(admin, tenant)
    await grant_clinic(admin, callbacks, tenant, second_clinic)

    cancellations = await partner.endpoint(
        receiver.url("/cancelled"), event_types=["booking.cancelled"]
    )
    first_clinic = await partner.endpoint(receiver.url("/first"), clinic_ids=[tenant.clinic_id])
    everything = await partner.endpoint(receiver.url("/all"))

    created = await publish(bus, booking_event(tenant.clinic_id))
    cancelled = await publish(bus, booking_event(tenant.clinic_id, type="booking.cancelled"))
    elsewhere = await publish(bus, booking_event(second_clinic))

    assert set(await kept(callbacks, created)) == {
        uuid.UUID(first_clinic["id"]),
        uuid.UUID(everything["id"]),
    }
    assert set(await kept(callbacks, cancelled)) == {
        uuid.UUID(cancellations["id"]),
        uuid.UUID(first_clinic["id"]),
        uuid.UUID(everything["id"]),
    }
    assert set(await kept(callbacks, elsewhere)) == {uuid.UUID(everything["id"])}

    await eventually(lambda: len(events_at(receiver, "/all")) == 3, "every event at /all")
    await eventually(lambda: len(events_at(receiver, "/first")) == 2, "two events at /first")
    await eventually(lambda: of_event(receiver, "/cancelled", cancelled), "the cancellation")
    assert [r.json()["type"] for r in events_at(receiver, "/cancelled")] == ["booking.cancelled"]
    assert of_event(receiver, "/first", elsewhere) == []


async def test_a_tenant_without_clients_scope_gets_no_client_events(
    partner_for: PartnerFactory, callbacks: Callbacks, receiver: Receiver, bus: Broker
) -> None:
    partner = await partner_for(callbacks, scopes=["bookings:read", "bookings:write"])
    others = await partner_for(callbacks)
    mine = await partner.endpoint(receiver.url("/bookings-only"))
    theirs = await others.endpoint(receiver.url("/with-clients"))

    client = await publish(bus, client_event(partner.tenant))
    booking = await publish(bus, booking_event(partner.tenant.clinic_id))
    their_client = await publish(bus, client_event(others.tenant))

    assert await kept(callbacks, client) == []
    assert await kept(callbacks, booking) == [uuid.UUID(mine["id"])]
    assert await kept(callbacks, their_client) == [uuid.UUID(theirs["id"])]
    await eventually(lambda: of_event(receiver, "/bookings-only", booking), "the booking")
    await eventually(lambda: of_event(receiver, "/with-clients", their_client), "the client")
    assert [r.json()["type"] for r in events_at(receiver, "/bookings-only")] == ["booking.created"]


async def test_a_revoked_grant_stops_deliveries(
    partner: Partner, admin: Admin, callbacks: Callbacks, receiver: Receiver, bus: Broker
) -> None:
    endpoint = await partner.endpoint(receiver.url("/revoked"))
    before = await publish(bus, booking_event(partner.tenant.clinic_id))
    await eventually(lambda: of_event(receiver, "/revoked", before), "the event before")

    await admin.call("DELETE", f"/v1/admin/grants/{partner.tenant.grant_id}", None, 200)

    async def revoked() -> bool:
        async with callbacks.pool.acquire() as conn:
            return bool(
                await conn.fetchval(
                    "SELECT revoked FROM grants WHERE grant_id = $1",
                    uuid.UUID(partner.tenant.grant_id),
                )
            )

    await eventually(revoked, "the revocation projected")
    after = await publish(bus, booking_event(partner.tenant.clinic_id))
    assert await kept(callbacks, after) == []

    # The application itself is told of the revocation.
    notices = await eventually(
        lambda: receiver.at("/revoked", kind="grant.revoked"), "the grant.revoked webhook"
    )
    assert notices[0].json()["data"]["grant_id"] == partner.tenant.grant_id
    assert of_event(receiver, "/revoked", after) == []
    assert uuid.UUID(endpoint["id"]) in await kept(callbacks, before)


async def test_grant_created_reaches_only_the_application_concerned(
    partner_for: PartnerFactory,
    admin: Admin,
    callbacks: Callbacks,
    receiver: Receiver,
) -> None:
    grantee = await partner_for(callbacks)
    bystander = await partner_for(callbacks)
    grantee_endpoint = await grantee.endpoint(receiver.url("/grantee"))
    await bystander.endpoint(receiver.url("/bystander"))

    # The grantee is granted the bystander's clinic, which the bystander itself may see.
    grant = await admin.call(
        "POST",
        "/v1/admin/grants",
        {
            "application_id": grantee.tenant.application_id,
            "clinic_id": bystander.tenant.clinic_id,
            "scopes": ["bookings:read"],
        },
        201,
    )
    got = await eventually(
        lambda: receiver.at("/grantee", kind="grant.created"), "the grant.created webhook"
    )
    event = Event.model_validate(got[0].json())
    assert event.data["grant_id"] == grant["id"]
    assert event.data["application_id"] == grantee.tenant.application_id
    assert event.clinic_id == uuid.UUID(bystander.tenant.clinic_id)
    assert await kept(callbacks, event) == [uuid.UUID(grantee_endpoint["id"])]
    assert receiver.at("/bystander", kind="grant.created") == []


# --- rate limit --------------------------------------------------------------------------------


async def test_an_endpoint_rate_limit_spreads_deliveries(
    partner: Partner, receiver: Receiver, bus: Broker
) -> None:
    endpoint = await partner.endpoint(receiver.url("/limited"), rate_limit=2)
    sent = [await publish(bus, booking_event(partner.tenant.clinic_id)) for _ in range(6)]
    for event in sent:
        await delivery_of(partner, endpoint["id"], event, status="succeeded")

    got = events_at(receiver, "/limited")
    assert sorted(r.headers["webhook-id"] for r in got) == sorted(str(e.id) for e in sent)
    # Two at once, then two a second: the last four need at least two seconds.
    assert got[-1].at - got[0].at >= 1.5


# --- a worker dying with leases held -----------------------------------------------------------

ServerFactory = Callable[[CallbacksSettings], Awaitable[str]]


@pytest.fixture
async def replacement(start: CallbacksFactory) -> AsyncIterator[ServerFactory]:
    """Another callbacks process on the same schema and queue as a server ``start`` made
    (closed before ``start`` removes that server's queue)."""
    servers: list[TestServer] = []

    async def factory(settings: CallbacksSettings) -> str:
        server = TestServer(create_app(settings), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield factory
    for server in servers:
        await server.close()


async def test_a_dead_worker_loses_nothing(
    start: CallbacksFactory,
    replacement: ServerFactory,
    partner_for: PartnerFactory,
    receiver: Receiver,
    bus: Broker,
) -> None:
    first = await start(delivery_lease_seconds=4.0)
    partner = await partner_for(first)
    gate = Gate()
    endpoint = await partner.endpoint(receiver.on("/leased", gate))
    sent = [await publish(bus, booking_event(partner.tenant.clinic_id)) for _ in range(3)]
    try:
        await eventually(
            lambda: len(events_at(receiver, "/leased")) == 3, "three attempts held open"
        )
        async with first.pool.acquire() as conn:
            leased = await conn.fetchval(
                "SELECT count(*) FROM deliveries WHERE lease_until > now() AND status = 'pending'"
            )
        assert leased == 3

        # The worker dies with its attempts open: nothing of them is recorded.
        await first.server.close()
    finally:
        gate.open.set()
    async with first.pool.acquire() as conn:
        rows = await conn.fetch("SELECT status, attempts FROM deliveries")
    assert [(r["status"], r["attempts"]) for r in rows] == [("pending", 0)] * 3

    url = await replacement(first.settings)
    successor = Partner(partner.http, url, partner.tenant, partner.token)
    for event in sent:
        delivery = await delivery_of(successor, endpoint["id"], event, status="succeeded")
        assert [a["status_code"] for a in delivery["attempt_log"]][-1] == 200
        requests = of_event(receiver, "/leased", event)
        assert len(requests) == 2
        assert requests[0].headers["webhook-id"] == requests[1].headers["webhook-id"]
        Webhook(endpoint["secret"]).verify(requests[1].body, requests[1].headers)


# --- end to end through the bookings service ----------------------------------------------------


@pytest.fixture(scope="module")
async def bookings_url(overrides: dict[str, Any], auth_url: str) -> AsyncIterator[str]:
    server = TestServer(
        create_bookings_app(BookingsSettings(**overrides, auth_url=auth_url)), host="127.0.0.1"
    )
    await server.start_server()
    yield str(server.make_url("")).rstrip("/")
    await server.close()


async def test_a_booking_made_in_the_bookings_service_arrives_signed(
    partner: Partner,
    receiver: Receiver,
    bookings_url: str,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
) -> None:
    endpoint = await partner.endpoint(receiver.url("/bookings"))
    token = await get_token(partner.tenant, clinic_id=partner.tenant.clinic_id)
    desk = await open_desk(ClinicDesk(http, bookings_url, partner.tenant, token["access_token"]))
    booking = await desk.book(desk.at(9))

    got = await eventually(
        lambda: receiver.at("/bookings", kind="booking.created"), "the booking.created webhook"
    )
    assert len(got) == 1
    payload = Webhook(endpoint["secret"]).verify(got[0].body, got[0].headers)
    assert payload["aggregate"] == f"booking:{booking['id']}"
    assert payload["sequence"] == 1
    assert payload["clinic_id"] == partner.tenant.clinic_id
    assert payload["data"]["id"] == booking["id"]
    assert got[0].headers["webhook-id"] == payload["id"]


async def test_two_workers_on_one_schema_never_send_an_attempt_twice(
    start: CallbacksFactory,
    replacement: ServerFactory,
    partner_for: PartnerFactory,
    receiver: Receiver,
    bus: Broker,
) -> None:
    first = await start(endpoint_concurrency=64)
    await replacement(first.settings)
    partner = await partner_for(first)
    paths = [f"/pair/{n}" for n in range(4)]
    for path in paths:
        await partner.endpoint(receiver.url(path), event_types=["booking.created"])
    sent = [await publish(bus, booking_event(partner.tenant.clinic_id)) for _ in range(150)]
    expected = {str(e.id) for e in sent}

    def arrived(path: str) -> list[str]:
        return [r.headers["webhook-id"] for r in events_at(receiver, path)]

    await eventually(
        lambda: all(set(arrived(p)) == expected for p in paths), "every event at every endpoint", 60
    )
    # Both processes claimed from the same tables all along; a lease lets only one send each.
    for path in paths:
        assert len(arrived(path)) == len(expected), path
