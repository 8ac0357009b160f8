"""The bookings service on a real port, and a partner acting for a fresh clinic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from services.bookings.app import create_app
from services.bookings.settings import BookingsSettings
from tests.conftest import Admin, Tenant, TokenFactory, bearer_call

SCOPES = ["bookings:read", "bookings:write", "clients:read"]


@pytest.fixture(scope="session")
def bookings_settings(overrides: dict[str, Any], auth_url: str) -> BookingsSettings:
    return BookingsSettings(**overrides, auth_url=auth_url)


@pytest.fixture(scope="session")
async def bookings_server(bookings_settings: BookingsSettings) -> AsyncIterator[TestServer]:
    server = TestServer(create_app(bookings_settings), host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture(scope="session")
def bookings_url(bookings_server: TestServer) -> str:
    return str(bookings_server.make_url("")).rstrip("/")


@dataclass
class Partner:
    """Calls the bookings API for one clinic with a clinic token."""

    http: aiohttp.ClientSession
    base: str
    tenant: Tenant
    token: str

    @property
    def clinic(self) -> str:
        return f"{self.base}/v1/clinics/{self.tenant.clinic_id}"

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        expect: int | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any, CIMultiDict[str]]:
        return await bearer_call(
            self.http,
            method,
            self.clinic + path,
            self.token,
            body,
            expect=expect,
            headers=headers,
            params=params,
        )


@pytest.fixture
async def partner(
    admin: Admin, get_token: TokenFactory, http: aiohttp.ClientSession, bookings_url: str
) -> Partner:
    tenant = await admin.tenant(scopes=SCOPES)
    token = await get_token(tenant, clinic_id=tenant.clinic_id)
    return Partner(http, bookings_url, tenant, token["access_token"])
