"""Reading the alert mail the callbacks service sends, from the tests' SMTP server."""

from __future__ import annotations

import re
import uuid
from email.message import Message
from typing import Any

from tests.callbacks.conftest import Callbacks, Partner
from tests.conftest import Admin
from tests.polling import eventually


async def contact_of(admin: Admin, partner: Partner) -> str:
    app = await admin.call("GET", f"/v1/admin/applications/{partner.tenant.application_id}")
    return str(app["contact_email"])


def subject(message: Message) -> str:
    """The Subject header unfolded (a long one arrives folded over lines)."""
    return re.sub(r"\r?\n", "", str(message["Subject"]))


def mails(smtp: Any, address: str, words: str) -> list[Message]:
    """Mail to ``address`` whose subject contains ``words``."""
    return [m for m in smtp.inbox.to(address) if words in subject(m)]


def text_of(message: Message) -> str:
    payload = message.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload.decode()


async def all_mail_sent(service: Callbacks) -> None:
    async def sent() -> bool:
        async with service.pool.acquire() as conn:
            return not await conn.fetchval("SELECT count(*) FROM mails WHERE sent_at IS NULL")

    await eventually(sent, "every queued mail sent")


async def mail_rows(service: Callbacks, endpoint_id: str, kind: str) -> int:
    async with service.pool.acquire() as conn:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM mails WHERE endpoint_id = $1 AND kind = $2",
            uuid.UUID(endpoint_id),
            kind,
        )
    return count
