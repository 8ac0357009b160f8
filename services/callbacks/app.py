from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from services.callbacks import store
from services.callbacks.consumers import intake_ctx
from services.callbacks.dispatcher import Dispatcher, Keys
from services.callbacks.keys import CALLBACKS_SETTINGS, CONTEXT, DISPATCHER
from services.callbacks.mail import Mailer
from services.callbacks.monitor import Monitor
from services.callbacks.routes import build_api
from services.callbacks.sender import Outcome, Sender, delivery_session
from services.callbacks.service import Context
from services.callbacks.settings import CallbacksSettings
from services.callbacks.signing import SecretBox
from services.resource_app import resource_app
from shared.db import Connection, close_pool, create_pool
from shared.housekeeping import EXTRA_PURGES
from shared.keys import DB_POOL, METRICS

log = logging.getLogger("vetgate.callbacks")


def create_app(settings: CallbacksSettings) -> web.Application:
    app = resource_app(settings, build_api())
    app[CALLBACKS_SETTINGS] = settings

    async def purge_events(conn: Connection) -> int:
        return await store.purge_events(conn, settings.feed_retention_days)

    async def purge_mail(conn: Connection) -> int:
        return await store.purge_mail(conn, settings.attempt_retention_days)

    app[EXTRA_PURGES] = (purge_events, purge_mail)
    app.cleanup_ctx.extend([workers_ctx, intake_ctx])
    return app


async def workers_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the delivery session, and the delivery, monitoring and mail loops."""
    settings = app[CALLBACKS_SETTINGS]
    pool = app[DB_POOL]
    attempts = app[METRICS].counter(
        "vetgate_webhook_attempts_total", "Webhook delivery attempts by result", ["result"]
    )

    def count(outcome: Outcome) -> None:
        if outcome.succeeded:
            result = "success"
        elif outcome.status_code is None:
            result = "error"
        else:
            result = "http_" + str(outcome.status_code // 100) + "xx"
        attempts.labels(result).inc()

    # The delivery loop's claims and records have connections of their own, so that a burst
    # of intake transactions holding the shared pool never queues them. Their statements find
    # deliveries by key or through an index; a plan cached while the table was nearly empty
    # (a new deployment) would otherwise read the whole table on every claim as it grows,
    # until the next ANALYZE.
    delivery_pool = await create_pool(
        settings.database_url,
        schema=settings.db_schema,
        min_size=1,
        max_size=2,  # the claims, and the writer beside them
        settings={"enable_seqscan": "off"},
    )
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(close_pool, delivery_pool)
        session = await stack.enter_async_context(delivery_session(settings))
        sender = Sender(
            session,
            allowed_hosts=settings.webhook_allowed_hosts,
            excerpt_bytes=settings.response_excerpt_bytes,
        )
        box = SecretBox(settings.webhook_secrets_key.get_secret_value())
        keys = Keys(box)
        mailer = Mailer(pool, settings)
        dispatcher = Dispatcher(
            delivery_pool, sender, keys, settings, on_mail=mailer.wake, on_attempt=count
        )
        monitor = Monitor(pool, sender, keys, settings, on_mail=mailer.wake)
        app[DISPATCHER] = dispatcher
        app[CONTEXT] = Context(pool, settings, box, keys, sender, dispatcher)
        tasks = [
            asyncio.create_task(dispatcher.run(), name="deliveries"),
            asyncio.create_task(monitor.run(), name="monitor"),
            asyncio.create_task(mailer.run(), name="mail"),
        ]
        yield
        for task in tasks:
            task.cancel()
        _, stuck = await asyncio.wait(tasks, timeout=10)
        if stuck:
            log.warning("%d background loops did not stop within 10 s", len(stuck))
