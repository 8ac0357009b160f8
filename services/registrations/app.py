from __future__ import annotations

from aiohttp import web

from services.registrations.routes import build_api
from services.registrations.settings import RegistrationsSettings
from services.resource_app import resource_app


def create_app(settings: RegistrationsSettings) -> web.Application:
    return resource_app(settings, build_api())
