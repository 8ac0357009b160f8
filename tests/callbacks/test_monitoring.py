"""Endpoint monitoring over real HTTP and real SMTP: signed pings, one alert mail when an
endpoint stops answering, one recovery mail when it answers again (any answer below 500), a
timeout as a failure, and no pings to a disabled endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.callbacks.conftest import (
    CallbacksFactory,
    Partner,
    PartnerFactory,
    Received,
    Receiver,
)
from tests.callbacks.mailbox import all_mail_sent, contact_of, mail_rows, mails, subject, text_of
from tests.conftest import Admin
from tests.polling import eventually

E = "/v1/webhooks/endpoints"
PING = "ping"
FAST = {"ping_interval_seconds": 0.3, "ping_failures_before_alert": 3}
ALERT = "is not answering"
RECOVERY = "answers again"


class Pings:
    """Answers every request with ``status`` (which the test may change), after holding it
    open for up to ``hold`` seconds unless released."""

    def __init__(self, status: int = 200, *, hold: float = 0.0) -> None:
        self.status = status
        self.hold = hold
        self.release = asyncio.Event()

    async def __call__(self, request: web.Request, n: int) -> web.StreamResponse:
        if self.hold and not self.release.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), self.hold)
        return web.Response(status=self.status)


def pings_at(receiver: Receiver, path: str) -> list[Received]:
    return receiver.at(path, kind=PING)


async def more_pings(receiver: Receiver, path: str, count: int) -> None:
    """Wait until ``count`` more pings than now have reached ``path``."""
    target = len(pings_at(receiver, path)) + count
    await eventually(
        lambda: len(pings_at(receiver, path)) >= target, f"{count} more pings at {path}"
    )


async def health(partner: Partner, endpoint_id: str) -> dict[str, Any]:
    _, body = await partner.call("GET", f"{E}/{endpoint_id}/health", expect=200)
    return dict(body)


# --- pings -----------------------------------------------------------------------------------


async def test_pings_are_signed_ping_events(partner: Partner, receiver: Receiver) -> None:
    # A new endpoint is due a ping at once, whatever the interval.
    endpoint = await partner.endpoint(receiver.url("/pinged"))
    [ping] = await eventually(lambda: pings_at(receiver, "/pinged"), "the first ping")

    payload = Webhook(endpoint["secret"]).verify(ping.body, ping.headers)
    assert payload["type"] == PING
    assert payload["data"] == {"endpoint_id": endpoint["id"]}
    assert ping.headers["webhook-id"] == payload["id"]
    assert json.loads(ping.body) == payload

    async def recorded() -> dict[str, Any] | None:
        found = await health(partner, endpoint["id"])
        return found if found["last_ping_at"] is not None else None

    state = await eventually(recorded, "the ping recorded")
    assert state["state"] == "healthy"
    assert state["last_ping_status"] == 200
    assert state["consecutive_failures"] == 0
    assert state["alerted"] is False
    # A ping is no delivery.
    _, page = await partner.call("GET", f"{E}/{endpoint['id']}/deliveries", expect=200)
    assert page["items"] == []
    # The shared server pings hourly: one ping so far.
    assert len(pings_at(receiver, "/pinged")) == 1


async def test_failures_below_the_threshold_are_failing_without_mail(
    start: CallbacksFactory,
    partner_for: PartnerFactory,
    receiver: Receiver,
    admin: Admin,
    smtp: Any,
) -> None:
    service = await start(ping_interval_seconds=0.3, ping_failures_before_alert=50)
    partner = await partner_for(service)
    contact = await contact_of(admin, partner)
    endpoint = await partner.endpoint(receiver.on("/wobbly", Pings(500)))

    async def failing() -> dict[str, Any] | None:
        found = await health(partner, endpoint["id"])
        return found if found["consecutive_failures"] >= 2 else None

    state = await eventually(failing, "two failed pings")
    assert state["state"] == "failing"
    assert state["alerted"] is False
    assert state["last_ping_status"] == 500
    await all_mail_sent(service)
    assert smtp.inbox.to(contact) == []
    assert await mail_rows(service, endpoint["id"], "alert") == 0


@pytest.mark.parametrize("answer", [200, 404])
async def test_one_alert_after_failed_pings_and_one_recovery(
    answer: int,
    start: CallbacksFactory,
    partner_for: PartnerFactory,
    receiver: Receiver,
    admin: Admin,
    smtp: Any,
) -> None:
    service = await start(**FAST)
    partner = await partner_for(service)
    contact = await contact_of(admin, partner)
    pings = Pings(503)
    endpoint = await partner.endpoint(receiver.on("/monitored", pings))

    [alert] = await eventually(lambda: mails(smtp, contact, ALERT), "the alert mail")
    assert len(pings_at(receiver, "/monitored")) >= 3
    assert subject(alert) == f"Vetgate: your webhook endpoint {endpoint['url']} is not answering"
    assert "failed 3 health checks in a row" in text_of(alert)
    assert alert["From"] == service.settings.mail_from
    state = await health(partner, endpoint["id"])
    assert state["state"] == "alerting"
    assert state["alerted"] is True
    assert state["consecutive_failures"] >= 3
    assert state["last_ping_status"] == 503

    # It keeps failing well past the threshold: still the one alert.
    async def long_failing() -> bool:
        failures: int = (await health(partner, endpoint["id"]))["consecutive_failures"]
        return failures >= 7

    await eventually(long_failing, "seven failed pings")
    await all_mail_sent(service)
    assert len(mails(smtp, contact, ALERT)) == 1
    assert await mail_rows(service, endpoint["id"], "alert") == 1
    assert mails(smtp, contact, RECOVERY) == []

    # Any answer below 500 means it is alive again.
    pings.status = answer
    [recovery] = await eventually(lambda: mails(smtp, contact, RECOVERY), "the recovery mail")
    assert "answered its health check again" in text_of(recovery)
    state = await health(partner, endpoint["id"])
    assert state["state"] == "healthy"
    assert state["alerted"] is False
    assert state["consecutive_failures"] == 0
    assert state["last_ping_status"] == answer

    await more_pings(receiver, "/monitored", 3)
    await all_mail_sent(service)
    assert len(mails(smtp, contact, RECOVERY)) == 1
    assert len(mails(smtp, contact, ALERT)) == 1
    assert await mail_rows(service, endpoint["id"], "recovery") == 1
    assert (await health(partner, endpoint["id"]))["state"] == "healthy"


async def test_a_ping_timing_out_is_a_failure(
    start: CallbacksFactory,
    partner_for: PartnerFactory,
    receiver: Receiver,
    admin: Admin,
    smtp: Any,
) -> None:
    service = await start(**FAST, attempt_timeout_seconds=0.5)
    partner = await partner_for(service)
    contact = await contact_of(admin, partner)
    # Answers 200, but only after far longer than the attempt timeout.
    pings = Pings(200, hold=10.0)
    endpoint = await partner.endpoint(receiver.on("/slow", pings))
    try:
        await eventually(lambda: mails(smtp, contact, ALERT), "the alert mail")
        state = await health(partner, endpoint["id"])
        assert state["state"] == "alerting"
        assert state["consecutive_failures"] >= 3
        assert state["last_ping_status"] is None
        assert state["last_ping_error"] == "timed out"
    finally:
        pings.release.set()
    # Answering in time again, it recovers.
    await eventually(lambda: mails(smtp, contact, RECOVERY), "the recovery mail")
    assert (await health(partner, endpoint["id"]))["state"] == "healthy"


async def test_a_disabled_endpoint_is_not_pinged(
    start: CallbacksFactory,
    partner_for: PartnerFactory,
    receiver: Receiver,
) -> None:
    partner = await partner_for(await start(**FAST))
    await partner.endpoint(receiver.url("/control"))
    off = await partner.endpoint(receiver.url("/off"))
    await eventually(lambda: pings_at(receiver, "/off"), "a ping before disabling")

    _, read = await partner.call("PATCH", f"{E}/{off['id']}", {"enabled": False}, expect=200)
    assert read["enabled"] is False
    # A ping already on its way when the endpoint was disabled may still land: count from a
    # full round later.
    await more_pings(receiver, "/control", 2)
    before = len(pings_at(receiver, "/off"))
    await more_pings(receiver, "/control", 4)
    assert len(pings_at(receiver, "/off")) == before
    state = await health(partner, off["id"])
    assert state["state"] == "disabled"
    assert state["enabled"] is False
    assert state["next_ping_at"] is None

    # Enabled again, it is pinged again.
    await partner.call("PATCH", f"{E}/{off['id']}", {"enabled": True}, expect=200)
    await more_pings(receiver, "/off", 1)

    async def enabled() -> dict[str, Any] | None:
        found = await health(partner, off["id"])
        return found if found["state"] == "healthy" else None

    state = await eventually(enabled, "the endpoint healthy again")
    assert state["next_ping_at"] is not None
