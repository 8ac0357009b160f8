"""Mail to an application's contact: what it says, and the loop that sends it over SMTP.

Mail is written to the ``mails`` table in the transaction that decided to send it, then sent
from there, so a crash between deciding and sending neither loses nor doubles an alert.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib
import asyncpg

from services.callbacks import store
from services.callbacks.settings import CallbacksSettings
from services.callbacks.ssrf import redact_url
from shared.db import Connection
from shared.waiting import wait_until_set

log = logging.getLogger("vetgate.callbacks.mail")

_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(frozen=True)
class Mail:
    kind: str
    subject: str
    body: str


def endpoint_failing(url: str, failures: int) -> Mail:
    shown = redact_url(url)
    return Mail(
        "alert",
        f"Vetgate: your webhook endpoint {shown} is not answering",
        f"Your webhook endpoint {shown} failed {failures} health checks in a row "
        "(a 5xx answer, a timeout or no connection).\n\n"
        "Deliveries to it are retried on their schedule and nothing is lost meanwhile; once it "
        "answers again you will get one more message. Failed deliveries can be resent from the "
        "API, and every event stays in the event feed for 30 days.\n",
    )


def endpoint_recovered(url: str) -> Mail:
    shown = redact_url(url)
    return Mail(
        "recovery",
        f"Vetgate: your webhook endpoint {shown} answers again",
        f"Your webhook endpoint {shown} answered its health check again.\n",
    )


def endpoint_disabled(url: str, reason: str) -> Mail:
    shown = redact_url(url)
    return Mail(
        "disabled",
        f"Vetgate: your webhook endpoint {shown} was disabled",
        f"Your webhook endpoint {shown} was disabled: {reason}.\n\n"
        "No events are sent to it until it is enabled again through the API "
        '(PATCH the endpoint with {"enabled": true}). Events meanwhile stay in the event feed '
        "for 30 days.\n",
    )


async def queue_mail(
    conn: Connection, recipient: str | None, mail: Mail, *, endpoint_id: uuid.UUID | None = None
) -> bool:
    """Write the mail in the caller's transaction; False when there is nobody to tell."""
    if not recipient:
        log.warning("no contact address for a %s mail", mail.kind)
        return False
    await store.insert_mail(
        conn,
        recipient=recipient,
        subject=mail.subject,
        body=mail.body,
        kind=mail.kind,
        endpoint_id=endpoint_id,
    )
    return True


class Mailer:
    def __init__(self, pool: asyncpg.Pool, settings: CallbacksSettings) -> None:
        self._pool = pool
        self._settings = settings
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                while await self.send_due():
                    pass
            except _DB_ERRORS as exc:
                log.warning("mail loop paused: %s", type(exc).__name__)
            await wait_until_set(self._wake, 2.0)

    async def send_due(self) -> int:
        """Send one batch of due mail; return how many were taken."""
        async with self._pool.acquire() as conn:
            rows = await store.claim_mails(conn, limit=20, lease_seconds=120)
        for row in rows:
            try:
                await self._send(row["recipient"], row["subject"], row["body"])
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                retry = min(60.0 * 2 ** (row["attempts"] - 1), 3600.0)
                log.warning("mail %s not sent (%s); retrying in %.0fs", row["id"], exc, retry)
                async with self._pool.acquire() as conn:
                    await store.mail_failed(conn, row["id"], str(exc)[:500], retry)
                continue
            async with self._pool.acquire() as conn:
                await store.mail_sent(conn, row["id"])
        return len(rows)

    async def _send(self, recipient: str, subject: str, body: str) -> None:
        s = self._settings
        message = EmailMessage()
        message["From"] = s.mail_from
        message["To"] = recipient
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain="vetgate")
        message.set_content(body)
        await aiosmtplib.send(
            message,
            hostname=s.smtp_host,
            port=s.smtp_port,
            start_tls=s.smtp_starttls,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            timeout=s.smtp_timeout_seconds,
        )
