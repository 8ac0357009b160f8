"""Access-token verification for resource services.

A resource service verifies every bearer token locally: signature against the auth service's JWKS
(cached; an unknown ``kid`` triggers one rate-limited refetch, which is how a rotated-in key is
picked up), then ``typ``, ``iss``, ``aud``, ``exp``, and finally the revocation list, which a
broadcast subscription on the bus keeps current within about a second of ``token.revoked``,
``grant.revoked`` or ``application.suspended``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp
import asyncpg
import jwt
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web

from shared.consumers import parse_message
from shared.errors import Forbidden, RateLimited, ServiceUnavailable, Unauthorized
from shared.events import (
    APPLICATION_SUSPENDED,
    GRANT_REVOKED,
    REVOCATION_EVENTS,
    TOKEN_REVOKED,
    ApplicationChanged,
    Event,
    GrantChanged,
    TokenRevoked,
    event_data,
)
from shared.keys import BROKER, HTTP_CLIENT, SETTINGS, VERIFIER
from shared.ratelimit import TokenBuckets
from shared.settings import ServiceSettings

log = logging.getLogger("vetgate.tokens")

ALGORITHMS = ["EdDSA", "ES256"]
ACCESS_TOKEN_TYP = "at+jwt"


def is_access_token_type(typ: object) -> bool:
    """RFC 9068 §4: ``at+jwt``, or the full media type ``application/at+jwt``."""
    return isinstance(typ, str) and typ.lower() in (ACCESS_TOKEN_TYP, "application/at+jwt")


@dataclass(frozen=True)
class Principal:
    """Who is calling: an application, optionally acting for one clinic and one staff user."""

    client_id: str
    application_id: uuid.UUID
    scopes: frozenset[str]
    clinic_id: uuid.UUID | None
    group_id: uuid.UUID | None
    user_id: uuid.UUID | None
    tier: int
    environment: str
    jti: str
    issued_at: float
    expires_at: float

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> Principal:
        def opt_uuid(key: str) -> uuid.UUID | None:
            value = claims.get(key)
            return uuid.UUID(value) if value else None

        return cls(
            client_id=str(claims["client_id"]),
            application_id=uuid.UUID(claims["app_id"]),
            scopes=frozenset(str(claims.get("scope", "")).split()),
            clinic_id=opt_uuid("clinic_id"),
            group_id=opt_uuid("group_id"),
            user_id=opt_uuid("user_id"),
            tier=int(claims.get("tier", 0)),
            environment=str(claims.get("env", "production")),
            jti=str(claims["jti"]),
            issued_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
        )


class JwksCache:
    """Public keys by ``kid``; refetched when stale or when a token names an unknown key."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[dict[str, Any]]],
        *,
        ttl: float = 300.0,
        min_refetch: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._min_refetch = min_refetch
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        # When a fetch was last tried, successful or not: the refetch throttle counts from here.
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        now = self._clock()
        if kid in self._keys and now - self._fetched_at < self._ttl:
            return self._keys[kid]
        async with self._lock:
            # Another waiter may have refreshed while we queued for the lock.
            if kid not in self._keys or self._clock() - self._fetched_at >= self._ttl:
                if self._clock() - self._attempted_at >= self._min_refetch:
                    await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        self._attempted_at = self._clock()
        try:
            document = await self._fetch()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # Keep serving the keys we have; a later call tries again.
            log.warning("JWKS fetch failed: %s", type(exc).__name__)
            self._fetched_at = self._clock() - self._ttl + self._min_refetch
            return
        keys: dict[str, jwt.PyJWK] = {}
        for entry in document.get("keys", []):
            if entry.get("use", "sig") != "sig" or "kid" not in entry:
                continue
            with contextlib.suppress(jwt.PyJWKError, jwt.InvalidKeyError):
                keys[entry["kid"]] = jwt.PyJWK(entry)
        self._keys = keys
        self._fetched_at = self._clock()


class RevocationList:
    """Tokens, grants and applications that were revoked after tokens for them were issued."""

    def __init__(self, clock: Callable[[], float] = time.time, *, margin: float = 0.0) -> None:
        self._clock = clock
        # Tokens issued this long after a revocation still fall under it (see settings).
        self._margin = margin
        self._jtis: dict[str, float] = {}
        self._grants: dict[tuple[str, uuid.UUID], float] = {}
        self._applications: dict[str, float] = {}
        # False until revocations issued before this process started have been loaded.
        self.loaded = False

    def revoke_token(self, jti: str, expires_at: float) -> None:
        self._jtis[jti] = expires_at
        self._prune()

    def revoke_grant(self, client_id: str, scope_id: uuid.UUID, at: float) -> None:
        key = (client_id, scope_id)
        self._grants[key] = max(at, self._grants.get(key, 0.0))

    def suspend_application(self, client_id: str, at: float) -> None:
        self._applications[client_id] = max(at, self._applications.get(client_id, 0.0))

    def is_revoked(self, p: Principal) -> bool:
        if p.jti in self._jtis:
            return True
        suspended = self._applications.get(p.client_id)
        if suspended is not None and p.issued_at <= suspended + self._margin:
            return True
        for scope_id in (p.clinic_id, p.group_id):
            if scope_id is None:
                continue
            revoked = self._grants.get((p.client_id, scope_id))
            if revoked is not None and p.issued_at <= revoked + self._margin:
                return True
        return False

    def apply(self, event: Event) -> None:
        """Fold one revocation event into the list."""
        if event.type == TOKEN_REVOKED:
            token = event_data(event, TokenRevoked)
            self.revoke_token(token.jti, token.expires_at.timestamp())
        elif event.type == GRANT_REVOKED:
            grant = event_data(event, GrantChanged)
            for scope_id in (grant.clinic_id, grant.group_id):
                if scope_id is not None:
                    self.revoke_grant(grant.client_id, scope_id, _ts(grant.changed_at))
        elif event.type == APPLICATION_SUSPENDED:
            app = event_data(event, ApplicationChanged)
            self.suspend_application(app.client_id, _ts(app.changed_at))

    def _prune(self) -> None:
        now = self._clock()
        for jti in [j for j, exp in self._jtis.items() if exp < now]:
            del self._jtis[jti]


def _ts(moment: datetime) -> float:
    return moment.timestamp()


class TokenVerifier:
    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str,
        audience: str,
        revocations: RevocationList | None = None,
        leeway: float = 5.0,
        clock: Callable[[], float] = time.time,
        max_cached: int = 20_000,
    ) -> None:
        self.jwks = jwks
        self.issuer = issuer
        self.audience = audience
        self.revocations = revocations or RevocationList()
        self.leeway = leeway
        self._clock = clock
        # A partner sends the same token for up to 15 minutes: its signature and claims are
        # checked once; expiry and revocation are checked on every call.
        self._verified: dict[str, Principal] = {}
        self._max_cached = max_cached

    async def verify(self, token: str) -> Principal:
        """The principal of a valid, unrevoked access token; ``Unauthorized`` otherwise."""
        principal = self._verified.get(token)
        if principal is None:
            principal = await self._decode(token)
            if len(self._verified) >= self._max_cached:
                self._verified.clear()
            self._verified[token] = principal
        elif principal.expires_at + self.leeway < self._clock():
            del self._verified[token]
            raise Unauthorized("The access token has expired")
        if not self.revocations.loaded:
            raise ServiceUnavailable(
                "Token revocations are still loading; try again shortly",
                slug="revocations-loading",
                headers={"Retry-After": "1"},
            )
        if self.revocations.is_revoked(principal):
            raise Unauthorized("The access token has been revoked")
        return principal

    async def _decode(self, token: str) -> Principal:
        """Signature, type and registered claims of a token not seen before."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise Unauthorized("The access token is malformed") from None
        if not is_access_token_type(header.get("typ")) or header.get("alg") not in ALGORITHMS:
            raise Unauthorized("The access token is not a Vetgate access token")
        kid = header.get("kid")
        key = await self.jwks.key(kid) if isinstance(kid, str) else None
        if key is None:
            raise Unauthorized("The access token is signed with an unknown key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=ALGORITHMS,
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "jti", "client_id", "sub"]},
            )
            principal = Principal.from_claims(claims)
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The access token has expired") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("The access token is not meant for this API") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("The access token comes from an unknown issuer") from None
        except (jwt.InvalidTokenError, KeyError, ValueError):
            raise Unauthorized("The access token is invalid") from None
        return principal


# --- aiohttp integration --------------------------------------------------------------------

PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal")
_BUCKETS: web.AppKey[TokenBuckets] = web.AppKey("rate_buckets")

RouteHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_token(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "Send an access token as 'Authorization: Bearer <token>'", error="invalid_request"
        )
    return token.strip()


async def authenticate(request: web.Request, *scopes: str, clinic: bool = True) -> Principal:
    """Verify the token, the clinic in the path, the scopes and the tier's rate limit."""
    principal = await request.app[VERIFIER].verify(bearer_token(request))
    if clinic:
        clinic_id = request.match_info.get("clinic_id")
        if principal.clinic_id is None or str(principal.clinic_id) != clinic_id:
            raise Forbidden(
                "This token does not act for this clinic",
                slug="clinic-not-granted",
                title="Clinic not granted",
            )
    missing = [s for s in scopes if s not in principal.scopes]
    if missing:
        raise Forbidden(
            f"The token lacks the scope(s): {' '.join(missing)}",
            slug="insufficient-scope",
            title="Insufficient scope",
            headers={
                "WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{" ".join(scopes)}"'
            },
        )
    settings = request.app[SETTINGS]
    tier = min(max(principal.tier, 0), len(settings.tier_rates) - 1)
    wait = request.app[_BUCKETS].take(
        principal.client_id, rate=settings.tier_rates[tier], burst=settings.tier_bursts[tier]
    )
    if wait > 0:
        raise RateLimited("Rate limit of this application's tier exceeded", retry_after=wait)
    request[PRINCIPAL] = principal
    return principal


def requires(*scopes: str, clinic: bool = True) -> Callable[[RouteHandler], RouteHandler]:
    """Decorate a handler: a valid token with these scopes (for the path's clinic) is required."""

    def decorate(handler: RouteHandler) -> RouteHandler:
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            await authenticate(request, *scopes, clinic=clinic)
            return await handler(request)

        return wrapped

    return decorate


async def client_session_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the process's one outgoing HTTP session, with explicit timeouts."""
    timeout = aiohttp.ClientTimeout(total=10, connect=3)
    app[HTTP_CLIENT] = aiohttp.ClientSession(timeout=timeout)
    yield
    await app[HTTP_CLIENT].close()


def jwks_fetcher(
    session: aiohttp.ClientSession, settings: ServiceSettings
) -> Callable[[], Awaitable[dict[str, Any]]]:
    url = settings.auth_url.rstrip("/") + "/.well-known/jwks.json"

    async def fetch() -> dict[str, Any]:
        async with session.get(url) as response:
            response.raise_for_status()
            document: dict[str, Any] = await response.json()
            return document

    return fetch


RevocationSnapshot = Callable[[], Awaitable[list[Event]]]


@contextlib.asynccontextmanager
async def installed_verifier(
    app: web.Application, verifier: TokenVerifier, snapshot: RevocationSnapshot
) -> AsyncIterator[None]:
    """Make ``verifier`` the app's, with rate buckets and revocations kept current.

    Revocation events arrive on a per-process broadcast queue; after every (re)connection the
    snapshot of revocations still in force is loaded again, which covers what was broadcast
    while this process was not listening. Until the first snapshot is in, tokens get a 503.
    """
    app[VERIFIER] = verifier
    app[_BUCKETS] = TokenBuckets()

    async def on_revocation(message: AbstractIncomingMessage) -> None:
        async with message.process(requeue=False):
            event = parse_message(message)
            if event is not None:
                verifier.revocations.apply(event)

    broker = app[BROKER]
    await broker.subscribe_broadcast(REVOCATION_EVENTS, on_revocation)
    broker.on_connected(lambda: _load_snapshot(verifier, snapshot))
    yield


async def _load_snapshot(verifier: TokenVerifier, snapshot: RevocationSnapshot) -> None:
    delay = 0.2
    while True:
        try:
            events = await snapshot()
        except (
            aiohttp.ClientError,
            TimeoutError,
            OSError,
            ValueError,
            KeyError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as exc:
            log.warning("revocation snapshot unavailable (%s); retrying", type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            continue
        for event in events:
            verifier.revocations.apply(event)
        verifier.revocations.loaded = True
        return


def revocation_fetcher(
    session: aiohttp.ClientSession, settings: ServiceSettings
) -> RevocationSnapshot:
    """The auth service's list of revocations still in force, over internal HTTP."""
    url = settings.auth_url.rstrip("/") + "/internal/v1/revocations"
    headers = {"Authorization": f"Bearer {settings.internal_token.get_secret_value()}"}

    async def fetch() -> list[Event]:
        async with session.get(url, headers=headers) as response:
            response.raise_for_status()
            document = await response.json()
        return [Event.model_validate(item) for item in document["events"]]

    return fetch


def build_verifier(settings: ServiceSettings, jwks: JwksCache) -> TokenVerifier:
    return TokenVerifier(
        jwks,
        issuer=settings.issuer,
        audience=settings.token_audience,
        revocations=RevocationList(margin=settings.revocation_margin_seconds),
    )


async def verifier_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx for resource services: JWKS fetched from the auth service over HTTP.

    Needs ``client_session_ctx`` and ``broker_ctx`` before it.
    """
    settings = app[SETTINGS]
    jwks = JwksCache(
        jwks_fetcher(app[HTTP_CLIENT], settings),
        ttl=settings.jwks_cache_seconds,
        min_refetch=settings.jwks_min_refetch_seconds,
    )
    verifier = build_verifier(settings, jwks)
    async with installed_verifier(app, verifier, revocation_fetcher(app[HTTP_CLIENT], settings)):
        yield
