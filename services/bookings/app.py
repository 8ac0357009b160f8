from __future__ import annotations

from aiohttp import web

from services.bookings.routes import build_api
from services.bookings.settings import BookingsSettings
from services.resource_app import resource_app


def create_app(settings: BookingsSettings) -> web.Application:
    return resource_app(settings, build_api())
