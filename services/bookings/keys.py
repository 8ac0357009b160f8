from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from services.bookings.directory import ClinicDirectory

DIRECTORY: web.AppKey[ClinicDirectory] = web.AppKey("clinic_directory")
