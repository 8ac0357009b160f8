"""The app every resource service starts from: pool, broker, relay, verifier, housekeeping."""

from __future__ import annotations

from aiohttp import web

from shared.api import Api
from shared.broker import broker_ctx
from shared.db import pool_ctx
from shared.housekeeping import housekeeping_ctx
from shared.outbox import relay_ctx
from shared.settings import ServiceSettings
from shared.tokens import client_session_ctx, verifier_ctx
from shared.web import base_app


def resource_app(settings: ServiceSettings, api: Api) -> web.Application:
    """A service that verifies partner tokens against the auth service and emits events."""
    settings.check_production()
    app = base_app(settings)
    app.cleanup_ctx.extend(
        [pool_ctx, broker_ctx, client_session_ctx, relay_ctx, verifier_ctx, housekeeping_ctx]
    )
    api.install(app)
    return app
