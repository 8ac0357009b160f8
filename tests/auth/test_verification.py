"""Access tokens as a separate resource server sees them, over real HTTP.

The resource server (see ``tests/conftest.py``) verifies every token locally against the auth
server's JWKS and learns of revocations from the broker. Hand-made tokens are signed with the
auth server's real key, read from its key table, so that each refusal is for the one defect the
test introduces.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.auth.crypto import load_private_key
from services.auth.settings import AuthSettings
from shared.errors import PROBLEM_CONTENT_TYPE
from shared.keys import SETTINGS
from shared.settings import ServiceSettings
from tests.conftest import Admin, Tenant, TokenFactory, basic_auth

#: How long to keep polling for an asynchronous effect before giving up.
POLL_LIMIT = 5.0
#: The promise is "within about a second"; the assertion allows for a loaded machine.
REVOCATION_PROMISE = 2.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hand_made(
    header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes] | None = None
) -> str:
    """A compact JWS built without a library, for algorithms no library will sign with."""
    head = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    signature = sign(head.encode()) if sign is not None else b""
    return head + "." + b64url(signature)


async def probe(
    http: aiohttp.ClientSession, url: str, token: str | None
) -> tuple[int, dict[str, Any], Mapping[str, str]]:
    headers = bearer(token) if token is not None else {}
    async with http.get(url, headers=headers) as r:
        body = await r.json(content_type=None) if await r.read() else {}
        return r.status, body, r.headers


def clinic_probe(resource_url: str, clinic_id: str) -> str:
    return f"{resource_url}/v1/clinics/{clinic_id}/probe"


async def refused_within(
    http: aiohttp.ClientSession, url: str, token: str, started: float
) -> float:
    """Poll until the resource server refuses ``token``; seconds from ``started`` until then."""
    deadline = started + POLL_LIMIT
    while True:
        status, body, _ = await probe(http, url, token)
        if status == 401:
            assert "revoked" in body["detail"], body
            return time.monotonic() - started
        assert status == 200, (status, body)
        assert time.monotonic() < deadline, "the token was never refused"
        await asyncio.sleep(0.05)


async def after_whole_second(moment: float) -> None:
    """Wait until a token's ``iat`` (whole seconds) is certain to be later than ``moment``."""
    wait = math.floor(moment) + 1 - time.time()
    if wait > 0:
        await asyncio.sleep(wait + 0.01)


class Signer:
    """Re-signs the claims of a real token with the auth server's real private key."""

    def __init__(self, kid: str, private: Ed25519PrivateKey, claims: dict[str, Any]) -> None:
        self.kid = kid
        self.private = private
        self.claims = claims

    def sign(self, *, header: dict[str, Any] | None = None, **changes: Any) -> str:
        claims = {**self.claims, **changes}
        headers = {"kid": self.kid, "typ": "at+jwt", **(header or {})}
        return jwt.encode(claims, self.private, algorithm="EdDSA", headers=headers)


@pytest.fixture
async def clinic_token(tenant: Tenant, get_token: TokenFactory) -> str:
    answer = await get_token(tenant, clinic_id=tenant.clinic_id)
    return str(answer["access_token"])


@pytest.fixture
async def signer(clinic_token: str, auth_pool: asyncpg.Pool, auth_settings: AuthSettings) -> Signer:
    kid = jwt.get_unverified_header(clinic_token)["kid"]
    async with auth_pool.acquire() as conn:
        pem = await conn.fetchval("SELECT private_key_pem FROM signing_keys WHERE kid = $1", kid)
    assert pem is not None
    private = await asyncio.to_thread(
        load_private_key, pem, auth_settings.signing_key_passphrase.get_secret_value()
    )
    claims = jwt.decode(clinic_token, options={"verify_signature": False})
    return Signer(kid, private, claims)


# --- accepted ---------------------------------------------------------------------------------


async def test_valid_clinic_token_is_accepted(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, clinic_token: str
) -> None:
    status, body, _ = await probe(http, clinic_probe(resource_url, tenant.clinic_id), clinic_token)
    assert status == 200, body
    assert body["clinic_id"] == tenant.clinic_id
    assert body["client_id"] == tenant.client_id


async def test_token_re_signed_unchanged_with_the_real_key_is_accepted(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, signer: Signer
) -> None:
    # The control for the hand-made refusals below: the re-signing itself is sound.
    status, body, _ = await probe(http, clinic_probe(resource_url, tenant.clinic_id), signer.sign())
    assert status == 200, body


# --- 401: no token, or not one of ours --------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Token abc"],
    ids=["absent", "empty", "scheme-only", "blank-token", "basic", "other-scheme"],
)
async def test_missing_bearer_token_is_401_problem_with_challenge(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    async with http.get(clinic_probe(resource_url, tenant.clinic_id), headers=headers) as r:
        assert r.status == 401
        assert r.content_type == PROBLEM_CONTENT_TYPE
        challenge = r.headers["WWW-Authenticate"]
        body = await r.json(content_type=None)
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_request"' in challenge
    assert body["status"] == 401
    assert body["type"].endswith("/unauthorized")


async def test_expired_token_is_refused(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, signer: Signer
) -> None:
    now = int(time.time())
    token = signer.sign(iat=now - 1000, nbf=now - 1000, exp=now - 120)
    status, body, headers = await probe(http, clinic_probe(resource_url, tenant.clinic_id), token)
    assert status == 401
    assert "expired" in body["detail"]
    assert 'error="invalid_token"' in headers["WWW-Authenticate"]


async def test_token_signed_by_another_key_under_our_kid_is_refused(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, signer: Signer
) -> None:
    forger = Signer(signer.kid, Ed25519PrivateKey.generate(), signer.claims)
    status, body, _ = await probe(http, clinic_probe(resource_url, tenant.clinic_id), forger.sign())
    assert status == 401, body


async def test_token_naming_an_unknown_kid_is_refused(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, signer: Signer
) -> None:
    forger = Signer("not-a-published-kid", Ed25519PrivateKey.generate(), signer.claims)
    status, body, _ = await probe(http, clinic_probe(resource_url, tenant.clinic_id), forger.sign())
    assert status == 401, body
    assert "unknown key" in body["detail"]


async def test_wrong_audience_is_refused(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, signer: Signer
) -> None:
    token = signer.sign(aud="some-other-api")
    status, body, _ = await probe(http, clinic_probe(resource_url, tenant.clinic_id), token)
    assert status == 401
    assert "not meant for this API" in body["detail"]


async def test_wrong_issuer_is_refused(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, signer: Signer
) -> None:
    token = signer.sign(iss="https://issuer.example")
    status, body, _ = await probe(http, clinic_probe(resource_url, tenant.clinic_id), token)
    assert status == 401
    assert "issuer" in body["detail"]


async def test_alg_none_is_refused(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, signer: Signer
) -> None:
    token = hand_made({"alg": "none", "typ": "at+jwt", "kid": signer.kid}, signer.claims)
    status, body, _ = await probe(http, clinic_probe(resource_url, tenant.clinic_id), token)
    assert status == 401, body


async def test_hs256_with_the_public_key_as_secret_is_refused(
    http: aiohttp.ClientSession,
    resource_url: str,
    auth_url: str,
    tenant: Tenant,
    signer: Signer,
) -> None:
    async with http.get(auth_url + "/.well-known/jwks.json") as r:
        jwks = await r.json()
    public = next(k for k in jwks["keys"] if k["kid"] == signer.kid)
    # Every form a confused verifier might feed to HMAC: the JWK, and the raw key bytes.
    secrets = [
        json.dumps(public).encode(),
        base64.urlsafe_b64decode(public["x"] + "=" * (-len(public["x"]) % 4)),
    ]
    header = {"alg": "HS256", "typ": "at+jwt", "kid": signer.kid}
    for secret in secrets:

        def mac(data: bytes, secret: bytes = secret) -> bytes:
            return hmac.new(secret, data, hashlib.sha256).digest()

        token = hand_made(header, signer.claims, mac)
        status, body, _ = await probe(http, clinic_probe(resource_url, tenant.clinic_id), token)
        assert status == 401, body


async def test_header_alg_that_does_not_match_the_key_is_refused(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, signer: Signer
) -> None:
    # ES256 is an accepted algorithm, but not the one our Ed25519 key is for.
    genuine = signer.sign()
    head, payload, signature = genuine.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    header["alg"] = "ES256"
    token = b64url(json.dumps(header).encode()) + "." + payload + "." + signature
    status, body, _ = await probe(http, clinic_probe(resource_url, tenant.clinic_id), token)
    assert status == 401, body


async def test_token_typed_plain_jwt_is_refused(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, signer: Signer
) -> None:
    # Validly signed, but an ID token or other JWT must never pass as an access token.
    token = signer.sign(header={"typ": "JWT"})
    status, body, _ = await probe(http, clinic_probe(resource_url, tenant.clinic_id), token)
    assert status == 401
    assert "not a Vetgate access token" in body["detail"]


@pytest.mark.parametrize(
    "garbage",
    ["garbage", "a.b.c", "eyJhbGciOiJFZERTQSJ9.e30", "....", "ÿ" * 10],
    ids=["word", "three-parts", "two-parts", "dots", "non-ascii"],
)
async def test_garbage_is_refused(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, garbage: str
) -> None:
    url = clinic_probe(resource_url, tenant.clinic_id)
    async with http.get(url, headers={"Authorization": f"Bearer {garbage}"}) as r:
        assert r.status == 401
        assert r.content_type == PROBLEM_CONTENT_TYPE
        assert "WWW-Authenticate" in r.headers


async def test_token_missing_a_required_claim_is_refused(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, signer: Signer
) -> None:
    claims = {k: v for k, v in signer.claims.items() if k != "jti"}
    token = jwt.encode(
        claims, signer.private, algorithm="EdDSA", headers={"kid": signer.kid, "typ": "at+jwt"}
    )
    status, body, _ = await probe(http, clinic_probe(resource_url, tenant.clinic_id), token)
    assert status == 401, body


# --- 403: a valid token, but not for this -----------------------------------------------------


async def test_token_for_one_clinic_is_forbidden_on_another(
    http: aiohttp.ClientSession, resource_url: str, admin: Admin, clinic_token: str
) -> None:
    other = await admin.tenant()
    status, body, _ = await probe(http, clinic_probe(resource_url, other.clinic_id), clinic_token)
    assert status == 403
    assert body["type"].endswith("clinic-not-granted")


async def test_application_token_is_forbidden_on_clinic_routes(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, get_token: TokenFactory
) -> None:
    answer = await get_token(tenant)
    url = clinic_probe(resource_url, tenant.clinic_id)
    status, body, _ = await probe(http, url, answer["access_token"])
    assert status == 403
    assert body["type"].endswith("clinic-not-granted")
    # The same token is fine where no clinic is involved.
    status, body, _ = await probe(http, resource_url + "/v1/probe", answer["access_token"])
    assert status == 200, body
    assert body["client_id"] == tenant.client_id


async def test_token_without_the_scope_is_forbidden(
    http: aiohttp.ClientSession, resource_url: str, tenant: Tenant, get_token: TokenFactory
) -> None:
    answer = await get_token(tenant, clinic_id=tenant.clinic_id, scope="bookings:write")
    assert answer["scope"] == "bookings:write"
    url = clinic_probe(resource_url, tenant.clinic_id)
    status, body, headers = await probe(http, url, answer["access_token"])
    assert status == 403
    assert body["type"].endswith("insufficient-scope")
    assert 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    assert "bookings:read" in headers["WWW-Authenticate"]


# --- revocation -------------------------------------------------------------------------------


async def test_revoked_grant_is_refused_promptly(
    http: aiohttp.ClientSession,
    resource_url: str,
    admin: Admin,
    tenant: Tenant,
    clinic_token: str,
) -> None:
    url = clinic_probe(resource_url, tenant.clinic_id)
    assert (await probe(http, url, clinic_token))[0] == 200

    started = time.monotonic()
    await admin.call("DELETE", f"/v1/admin/grants/{tenant.grant_id}", expect=200)
    assert await refused_within(http, url, clinic_token, started) < REVOCATION_PROMISE


async def test_token_revoked_by_its_client_is_refused_promptly(
    http: aiohttp.ClientSession,
    resource_url: str,
    auth_url: str,
    tenant: Tenant,
    clinic_token: str,
    get_token: TokenFactory,
) -> None:
    url = clinic_probe(resource_url, tenant.clinic_id)
    sibling = (await get_token(tenant, clinic_id=tenant.clinic_id))["access_token"]
    assert (await probe(http, url, clinic_token))[0] == 200

    started = time.monotonic()
    async with http.post(
        auth_url + "/oauth/revoke",
        data={"token": clinic_token, "token_type_hint": "access_token"},
        headers=basic_auth(tenant.client_id, tenant.client_secret),
    ) as r:
        assert r.status == 200, await r.text()
    assert await refused_within(http, url, clinic_token, started) < REVOCATION_PROMISE

    # Only that token: another one for the same grant still works.
    status, body, _ = await probe(http, url, sibling)
    assert status == 200, body


async def test_suspended_application_is_refused_promptly(
    http: aiohttp.ClientSession,
    resource_url: str,
    admin: Admin,
    tenant: Tenant,
    clinic_token: str,
    get_token: TokenFactory,
) -> None:
    app_token = (await get_token(tenant))["access_token"]
    url = clinic_probe(resource_url, tenant.clinic_id)
    assert (await probe(http, url, clinic_token))[0] == 200

    started = time.monotonic()
    await admin.call("POST", f"/v1/admin/applications/{tenant.application_id}/suspend", None, 200)
    assert await refused_within(http, url, clinic_token, started) < REVOCATION_PROMISE
    # Every token of the application, not only clinic tokens.
    status, body, _ = await probe(http, resource_url + "/v1/probe", app_token)
    assert status == 401, body
    assert "revoked" in body["detail"]


async def test_token_issued_under_a_new_grant_after_revocation_is_accepted(
    http: aiohttp.ClientSession,
    resource_server: TestServer,
    resource_url: str,
    admin: Admin,
    tenant: Tenant,
    clinic_token: str,
    get_token: TokenFactory,
) -> None:
    url = clinic_probe(resource_url, tenant.clinic_id)
    revoked = await admin.call("DELETE", f"/v1/admin/grants/{tenant.grant_id}", expect=200)
    await refused_within(http, url, clinic_token, time.monotonic())

    grant = await admin.call(
        "POST",
        "/v1/admin/grants",
        {
            "application_id": tenant.application_id,
            "clinic_id": tenant.clinic_id,
            "scopes": ["bookings:read"],
        },
        201,
    )
    assert grant["id"] != tenant.grant_id
    # Revocation cuts off by issue time (plus the resource server's safety margin, if it has
    # one); ``iat`` has whole seconds, so step past that second.
    margin = float(getattr(resource_server.app[SETTINGS], "revocation_margin_seconds", 0.0))
    await after_whole_second(datetime.fromisoformat(revoked["revoked_at"]).timestamp() + margin)
    fresh = (await get_token(tenant, clinic_id=tenant.clinic_id))["access_token"]

    status, body, _ = await probe(http, url, fresh)
    assert status == 200, body
    assert body["clinic_id"] == tenant.clinic_id
    # The old token stays refused.
    assert (await probe(http, url, clinic_token))[0] == 401


# --- rate limit -------------------------------------------------------------------------------


async def test_tier_zero_application_beyond_its_burst_gets_429(
    http: aiohttp.ClientSession, resource_url: str, admin: Admin, get_token: TokenFactory
) -> None:
    small = await admin.tenant(tier=0)
    token = (await get_token(small, clinic_id=small.clinic_id))["access_token"]
    url = clinic_probe(resource_url, small.clinic_id)
    burst: int = ServiceSettings.model_fields["tier_bursts"].default[0]

    # One burst's worth is allowed at once; asking for more is refused until the bucket refills.
    # Rounds repeat only in case a slow machine lets the bucket refill between requests.
    limited: list[tuple[dict[str, Any], Mapping[str, str]]] = []
    for _ in range(5):
        answers = await asyncio.gather(*(probe(http, url, token) for _ in range(burst * 2)))
        statuses = [status for status, _, _ in answers]
        assert set(statuses) <= {200, 429}, statuses
        limited = [(body, headers) for status, body, headers in answers if status == 429]
        if limited:
            break
    assert limited, "no request was rate limited"
    for body, headers in limited:
        assert int(headers["Retry-After"]) >= 1
        assert body["type"].endswith("rate-limited")
        assert body["retry_after"] == int(headers["Retry-After"])

    # The bucket is per application: another application is not affected.
    other = await admin.tenant(tier=0)
    other_token = (await get_token(other, clinic_id=other.clinic_id))["access_token"]
    status, body, _ = await probe(http, clinic_probe(resource_url, other.clinic_id), other_token)
    assert status == 200, body
