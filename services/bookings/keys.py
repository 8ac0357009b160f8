from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from services.bookings.availability_cache import AvailabilityCache
    from services.bookings.directory import ClinicDirectory

DIRECTORY: web.AppKey[ClinicDirectory] = web.AppKey("clinic_directory")
AVAILABILITY_CACHE: web.AppKey[AvailabilityCache] = web.AppKey("availability_cache")
