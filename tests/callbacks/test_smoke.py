from __future__ import annotations

from standardwebhooks.webhooks import Webhook

from shared.broker import Broker
from tests.callbacks.conftest import (
    Partner,
    Receiver,
    booking_event,
    publish,
)
from tests.polling import eventually


async def test_a_booking_event_reaches_the_endpoint_signed(
    partner: Partner, receiver: Receiver, bus: Broker
) -> None:
    endpoint = await partner.endpoint(receiver.url("/hook"))
    event = await publish(bus, booking_event(partner.tenant.clinic_id))

    got = await eventually(lambda: receiver.at("/hook", kind="booking.created"), "the webhook")
    request = got[0]
    assert request.headers["webhook-id"] == str(event.id)
    payload = Webhook(endpoint["secret"]).verify(request.body, request.headers)
    assert payload["id"] == str(event.id)
