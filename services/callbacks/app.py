from __future__ import annotations

from aiohttp import web

from services.callbacks.routes import build_api
from services.callbacks.settings import CallbacksSettings
from shared.broker import broker_ctx
from shared.db import pool_ctx
from shared.housekeeping import housekeeping_ctx
from shared.outbox import relay_ctx
from shared.tokens import client_session_ctx, verifier_ctx
from shared.web import base_app


def create_app(settings: CallbacksSettings) -> web.Application:
    settings.check_production()
    app = base_app(settings)
    app.cleanup_ctx.extend(
        [pool_ctx, broker_ctx, client_session_ctx, relay_ctx, verifier_ctx, housekeeping_ctx]
    )
    build_api().install(app)
    return app
