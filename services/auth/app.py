from __future__ import annotations

from collections.abc import AsyncIterator

from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web

from services.auth import service, store
from services.auth.cache import TtlCache
from services.auth.keyring import KeyRing
from services.auth.keys import AUTH_CONTEXT, AUTH_SETTINGS
from services.auth.routes import build_api
from services.auth.settings import AuthSettings
from shared.broker import broker_ctx
from shared.db import pool_ctx
from shared.events import Event
from shared.housekeeping import EXTRA_PURGES, Purge, housekeeping_ctx
from shared.keys import BROKER, DB_POOL
from shared.outbox import relay_ctx
from shared.ratelimit import TokenBuckets
from shared.tokens import JwksCache, build_verifier, installed_verifier
from shared.web import base_app


async def _auth_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[AUTH_SETTINGS]
    pool = app[DB_POOL]
    await service.ensure_signing_key(pool, settings)
    keyring = KeyRing(
        pool,
        settings.signing_key_passphrase.get_secret_value(),
        cache_seconds=settings.key_cache_seconds,
    )
    cache = TtlCache(settings.credential_cache_seconds)
    app[AUTH_CONTEXT] = service.AuthContext(
        settings=settings,
        keyring=keyring,
        failures=TokenBuckets(),
        app_limits=TokenBuckets(),
        cache=cache,
    )

    async def on_directory_change(message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=False):
            cache.clear()

    await app[BROKER].subscribe_broadcast(["grant.*", "application.*"], on_directory_change)
    # The auth service checks tokens on its own resource routes straight from its key table.
    verifier = build_verifier(
        settings, JwksCache(keyring.jwks, ttl=settings.key_cache_seconds, min_refetch=0.2)
    )

    async def snapshot() -> list[Event]:
        return await service.revocations_in_force(pool, settings)

    async with installed_verifier(app, verifier, snapshot):
        yield


def create_app(settings: AuthSettings) -> web.Application:
    settings.check_production()
    app = base_app(settings)
    app[AUTH_SETTINGS] = settings
    purges: tuple[Purge, ...] = (store.purge_expired_revocations,)
    app[EXTRA_PURGES] = purges
    app.cleanup_ctx.extend([pool_ctx, broker_ctx, relay_ctx, _auth_ctx, housekeeping_ctx])
    build_api().install(app)
    return app
