from __future__ import annotations

from aiohttp import web

from services.callbacks.routes import build_api
from services.callbacks.settings import CallbacksSettings
from services.resource_app import resource_app


def create_app(settings: CallbacksSettings) -> web.Application:
    return resource_app(settings, build_api())
