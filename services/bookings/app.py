from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.bookings.availability_cache import AvailabilityCache
from services.bookings.consumers import projections_ctx
from services.bookings.directory import create_directory
from services.bookings.keys import AVAILABILITY_CACHE, DIRECTORY
from services.bookings.routes import build_api
from services.bookings.settings import BookingsSettings
from services.resource_app import resource_app
from shared.keys import DB_POOL, HTTP_CLIENT


def create_app(settings: BookingsSettings) -> web.Application:
    app = resource_app(settings, build_api())
    app[AVAILABILITY_CACHE] = AvailabilityCache(settings.availability_cache_chars)

    async def directory_ctx(app: web.Application) -> AsyncIterator[None]:
        app[DIRECTORY] = create_directory(app[DB_POOL], app[HTTP_CLIENT], settings)
        yield

    app.cleanup_ctx.extend([directory_ctx, projections_ctx])
    return app
