from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.registrations.consumers import directory_events_ctx
from services.registrations.directory import create_directory
from services.registrations.keys import DIRECTORY, MATCH_LIMIT, REGISTRATIONS_SETTINGS
from services.registrations.routes import build_api
from services.registrations.service import MatchLimit
from services.registrations.settings import RegistrationsSettings
from services.resource_app import resource_app
from shared.keys import DB_POOL, HTTP_CLIENT
from shared.ratelimit import TokenBuckets


def create_app(settings: RegistrationsSettings) -> web.Application:
    app = resource_app(settings, build_api())
    app[REGISTRATIONS_SETTINGS] = settings
    app[MATCH_LIMIT] = MatchLimit(
        TokenBuckets(), rate=settings.match_rate, burst=settings.match_burst
    )

    async def directory_ctx(app: web.Application) -> AsyncIterator[None]:
        app[DIRECTORY] = create_directory(
            app[DB_POOL],
            app[HTTP_CLIENT],
            settings,
            cache_seconds=settings.directory_cache_seconds,
        )
        yield

    app.cleanup_ctx.extend([directory_ctx, directory_events_ctx])
    return app
