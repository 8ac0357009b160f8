from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from services.callbacks.dispatcher import Dispatcher
    from services.callbacks.service import Context
    from services.callbacks.settings import CallbacksSettings

CALLBACKS_SETTINGS: web.AppKey[CallbacksSettings] = web.AppKey("callbacks_settings")
CONTEXT: web.AppKey[Context] = web.AppKey("callbacks_context")
DISPATCHER: web.AppKey[Dispatcher] = web.AppKey("dispatcher")
