from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from services.registrations.directory import ClinicDirectory
    from services.registrations.service import MatchLimit
    from services.registrations.settings import RegistrationsSettings

DIRECTORY: web.AppKey[ClinicDirectory] = web.AppKey("clinic_directory")
MATCH_LIMIT: web.AppKey[MatchLimit] = web.AppKey("match_limit")
REGISTRATIONS_SETTINGS: web.AppKey[RegistrationsSettings] = web.AppKey("registrations_settings")
