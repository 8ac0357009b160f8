from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from services.auth.service import AuthContext
    from services.auth.settings import AuthSettings

AUTH_SETTINGS: web.AppKey[AuthSettings] = web.AppKey("auth_settings")
AUTH_CONTEXT: web.AppKey[AuthContext] = web.AppKey("auth_context")
