"""Interoperability: tokens obtained and verified by well-known third-party libraries.

Authlib's OAuth 2.0 client asks for the token and PyJWT's JWKS client verifies it, so neither
side of the exchange is our own code.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import warnings
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import httpx
import jwt
import pytest

from services.auth.settings import AuthSettings
from tests.conftest import Tenant

with warnings.catch_warnings():
    # Authlib deprecates plain httpx in favour of its successor package on import; the project
    # pins httpx, so that one notice (and only it) is silenced. Authlib's own module forces its
    # warnings to "always" when imported, so it is imported before the filter goes in front.
    from authlib.deprecate import AuthlibDeprecationWarning

    warnings.filterwarnings(
        "ignore",
        message="The httpx module is deprecated; please use httpx2 instead.",
        category=AuthlibDeprecationWarning,
    )
    from authlib.integrations.httpx_client import AsyncOAuth2Client

AUDIENCE = "vetgate-api"


async def metadata(http: aiohttp.ClientSession, auth_url: str) -> dict[str, Any]:
    async with http.get(auth_url + "/.well-known/oauth-authorization-server") as r:
        assert r.status == 200
        assert r.content_type == "application/json"
        document: dict[str, Any] = await r.json()
    return document


async def verify_with_pyjwt(token: str, auth_url: str, issuer: str) -> dict[str, Any]:
    """Verify as any standards-following resource server would: JWKS by kid, EdDSA only."""
    jwks = jwt.PyJWKClient(auth_url + "/.well-known/jwks.json", cache_keys=False)
    key = await asyncio.to_thread(jwks.get_signing_key_from_jwt, token)
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=["EdDSA"], audience=AUDIENCE, issuer=issuer
    )
    return claims


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
async def test_authlib_client_credentials_token_verifies_with_pyjwt(
    method: str,
    http: aiohttp.ClientSession,
    auth_url: str,
    auth_settings: AuthSettings,
    tenant: Tenant,
) -> None:
    # Discover the token endpoint the RFC 8414 way; the issuer names the public host, so the
    # path is taken from the metadata and the host is the test server.
    token_endpoint = auth_url + urlsplit((await metadata(http, auth_url))["token_endpoint"]).path
    sent: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    async with AsyncOAuth2Client(
        client_id=tenant.client_id,
        client_secret=tenant.client_secret,
        token_endpoint_auth_method=method,
        event_hooks={"request": [record]},
    ) as client:
        answer = await client.fetch_token(
            token_endpoint, grant_type="client_credentials", clinic_id=tenant.clinic_id
        )

    # The library really used the method asked for.
    (request,) = sent
    form = parse_qs(request.content.decode())
    if method == "client_secret_basic":
        assert request.headers["Authorization"].startswith("Basic ")
        assert "client_secret" not in form
    else:
        assert "Authorization" not in request.headers
        assert form["client_secret"] == [tenant.client_secret]
    assert form["clinic_id"] == [tenant.clinic_id]

    assert answer["token_type"].lower() == "bearer"
    assert answer["expires_in"] == auth_settings.access_token_ttl
    assert set(answer["scope"].split()) == set(tenant.scopes)
    token = answer["access_token"]
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"

    claims = await verify_with_pyjwt(token, auth_url, auth_settings.issuer)
    now = time.time()
    assert claims["iss"] == auth_settings.issuer
    assert claims["aud"] == AUDIENCE
    assert claims["sub"] == tenant.client_id
    assert claims["client_id"] == tenant.client_id
    assert claims["app_id"] == tenant.application_id
    assert claims["clinic_id"] == tenant.clinic_id
    # A clinic grant alone: the token names no group (revoking a group grant cannot touch it).
    assert "group_id" not in claims
    assert set(claims["scope"].split()) == set(tenant.scopes)
    assert claims["iat"] <= now + 5
    assert claims["exp"] - claims["iat"] == auth_settings.access_token_ttl
    assert uuid.UUID(hex=claims["jti"])


async def test_authlib_token_without_clinic_is_an_application_token(
    http: aiohttp.ClientSession, auth_url: str, auth_settings: AuthSettings, tenant: Tenant
) -> None:
    async with AsyncOAuth2Client(
        client_id=tenant.client_id,
        client_secret=tenant.client_secret,
        token_endpoint_auth_method="client_secret_basic",
    ) as client:
        answer = await client.fetch_token(
            auth_url + "/oauth/token", grant_type="client_credentials"
        )

    claims = await verify_with_pyjwt(answer["access_token"], auth_url, auth_settings.issuer)
    assert claims["client_id"] == tenant.client_id
    assert "clinic_id" not in claims
    assert not set(claims["scope"].split()) & set(tenant.scopes)


async def test_pyjwt_refuses_a_token_for_another_audience(
    http: aiohttp.ClientSession, auth_url: str, auth_settings: AuthSettings, tenant: Tenant
) -> None:
    async with AsyncOAuth2Client(
        client_id=tenant.client_id,
        client_secret=tenant.client_secret,
        token_endpoint_auth_method="client_secret_post",
    ) as client:
        answer = await client.fetch_token(
            auth_url + "/oauth/token", grant_type="client_credentials", clinic_id=tenant.clinic_id
        )
    jwks = jwt.PyJWKClient(auth_url + "/.well-known/jwks.json", cache_keys=False)
    key = await asyncio.to_thread(jwks.get_signing_key_from_jwt, answer["access_token"])
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(
            answer["access_token"],
            key,
            algorithms=["EdDSA"],
            audience="another-api",
            issuer=auth_settings.issuer,
        )


async def test_server_metadata_follows_rfc_8414(
    http: aiohttp.ClientSession, auth_url: str, auth_settings: AuthSettings
) -> None:
    document = await metadata(http, auth_url)
    issuer = auth_settings.issuer.rstrip("/")

    assert document["issuer"] == issuer
    assert document["token_endpoint"] == issuer + "/oauth/token"
    assert document["jwks_uri"] == issuer + "/.well-known/jwks.json"
    assert document["revocation_endpoint"] == issuer + "/oauth/revoke"
    assert document["introspection_endpoint"] == issuer + "/oauth/introspect"
    assert "client_credentials" in document["grant_types_supported"]
    assert "authorization_code" not in document["grant_types_supported"]
    assert {"client_secret_basic", "client_secret_post"} <= set(
        document["token_endpoint_auth_methods_supported"]
    )
    # REQUIRED by RFC 8414 even when, as here, no authorization endpoint exists.
    assert "response_types_supported" in document
    assert {"bookings:read", "bookings:write"} <= set(document["scopes_supported"])

    # Every advertised endpoint exists on this server (under the test server's host).
    for member in ("token_endpoint", "revocation_endpoint", "introspection_endpoint"):
        path = urlsplit(document[member]).path
        async with http.post(auth_url + path, data={}) as r:
            assert r.status in (400, 401), (member, r.status)
    async with http.get(auth_url + urlsplit(document["jwks_uri"]).path) as r:
        assert r.status == 200
        assert (await r.json())["keys"]
