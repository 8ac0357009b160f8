"""Typed application state keys shared by every service."""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
import asyncpg
from aiohttp import web

if TYPE_CHECKING:
    from shared.broker import Broker
    from shared.metrics import Metrics
    from shared.settings import ServiceSettings
    from shared.tokens import TokenVerifier

SETTINGS: web.AppKey[ServiceSettings] = web.AppKey("settings")
DB_POOL: web.AppKey[asyncpg.Pool] = web.AppKey("db_pool")
BROKER: web.AppKey[Broker] = web.AppKey("broker")
HTTP_CLIENT: web.AppKey[aiohttp.ClientSession] = web.AppKey("http_client")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
VERIFIER: web.AppKey[TokenVerifier] = web.AppKey("token_verifier")
