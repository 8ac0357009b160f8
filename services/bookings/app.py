from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from services.bookings.consumers import projections_ctx
from services.bookings.directory import ClinicDirectory
from services.bookings.keys import DIRECTORY
from services.bookings.routes import build_api
from services.bookings.settings import BookingsSettings
from services.resource_app import resource_app
from shared.keys import DB_POOL, HTTP_CLIENT


def create_app(settings: BookingsSettings) -> web.Application:
    app = resource_app(settings, build_api())

    async def directory_ctx(app: web.Application) -> AsyncIterator[None]:
        app[DIRECTORY] = ClinicDirectory(
            app[DB_POOL],
            app[HTTP_CLIENT],
            auth_url=settings.auth_url,
            internal_token=settings.internal_token.get_secret_value(),
        )
        yield

    app.cleanup_ctx.extend([directory_ctx, projections_ctx])
    return app
