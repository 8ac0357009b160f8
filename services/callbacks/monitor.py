"""Endpoint monitoring: a signed ``ping`` to every enabled endpoint on an interval.

Any answer below 500 counts as alive; a 5xx, a timeout or no connection is a failure. The ping
that makes ``ping_failures_before_alert`` failures in a row queues one alert mail, and the first
answer after that one recovery mail: the state lives in the endpoint's row, so several copies of
the service never mail twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg

from services.callbacks import store
from services.callbacks.dispatcher import Keys
from services.callbacks.mail import endpoint_failing, endpoint_recovered, queue_mail
from services.callbacks.sender import Sender
from services.callbacks.settings import CallbacksSettings
from shared.db import Record
from shared.events import Event

log = logging.getLogger("vetgate.callbacks.monitor")

PING = "ping"
_BATCH = 100
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class Monitor:
    def __init__(
        self,
        pool: asyncpg.Pool,
        sender: Sender,
        keys: Keys,
        settings: CallbacksSettings,
        *,
        on_mail: Callable[[], None] = lambda: None,
    ) -> None:
        self._pool = pool
        self._sender = sender
        self._keys = keys
        self._settings = settings
        self._on_mail = on_mail

    async def run(self) -> None:
        pause = min(self._settings.ping_interval_seconds, 1.0)
        while True:
            try:
                if await self.ping_due() == _BATCH:
                    continue
            except _DB_ERRORS as exc:
                log.warning("monitoring paused: %s", type(exc).__name__)
            await asyncio.sleep(pause)

    async def ping_due(self) -> int:
        """Ping the endpoints that are due; return how many."""
        async with self._pool.acquire() as conn:
            rows = await store.claim_pings(
                conn, limit=_BATCH, interval_seconds=self._settings.ping_interval_seconds
            )
        await asyncio.gather(*(self._ping(row) for row in rows))
        return len(rows)

    async def _ping(self, row: Record) -> None:
        event = Event(type=PING, data={"endpoint_id": str(row["id"])})
        outcome = await self._sender.send(
            row["url"],
            str(event.id),
            event.model_dump_json().encode(),
            self._keys(row["secrets"]),
        )
        mailed = False
        async with self._pool.acquire() as conn, conn.transaction():
            state = await store.record_ping(
                conn,
                row["id"],
                alive=outcome.answered,
                status_code=outcome.status_code,
                error=outcome.error,
                threshold=self._settings.ping_failures_before_alert,
            )
            if state is not None and state["alert"]:
                mailed = await queue_mail(
                    conn,
                    state["contact_email"],
                    endpoint_failing(state["url"], state["ping_failures"]),
                    endpoint_id=row["id"],
                )
            elif state is not None and state["recovered"]:
                mailed = await queue_mail(
                    conn,
                    state["contact_email"],
                    endpoint_recovered(state["url"]),
                    endpoint_id=row["id"],
                )
        if mailed:
            self._on_mail()
