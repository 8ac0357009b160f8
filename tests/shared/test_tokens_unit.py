"""Unit tests of the verifier's in-memory parts: the JWKS cache and the revocation list.

Both take an injected clock; the JWKS cache also takes the coroutine that fetches the document,
so these tests need neither the network nor the broker.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.errors import Unauthorized
from shared.events import (
    APPLICATION_SUSPENDED,
    GRANT_CREATED,
    GRANT_REVOKED,
    TOKEN_REVOKED,
    ApplicationChanged,
    Event,
    GrantChanged,
    TokenRevoked,
)
from shared.tokens import JwksCache, Principal, RevocationList, TokenVerifier


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def public_jwk(kid: str, **extra: Any) -> dict[str, Any]:
    """The public half of a fresh Ed25519 key, as the auth service publishes it."""
    private = Ed25519PrivateKey.generate()
    jwk: dict[str, Any] = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key()))
    jwk.update(kid=kid, use="sig", alg="EdDSA")
    jwk.update(extra)
    return jwk


class FakeJwks:
    """A fetch coroutine whose document (or failure) the test controls; counts its calls."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.keys = list(keys)
        self.calls = 0
        self.error: Exception | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return {"keys": list(self.keys)}


def make_cache(
    fetch: FakeJwks, clock: FakeClock, *, ttl: float = 300.0, min_refetch: float = 1.0
) -> JwksCache:
    return JwksCache(fetch, ttl=ttl, min_refetch=min_refetch, clock=clock)


# --- JwksCache --------------------------------------------------------------------------------


async def test_first_lookup_fetches_and_later_ones_use_the_cache() -> None:
    clock = FakeClock()
    fetch = FakeJwks(public_jwk("k1"))
    cache = make_cache(fetch, clock)

    key = await cache.key("k1")
    assert key is not None
    assert key.key_id == "k1"
    clock.advance(299.0)
    assert await cache.key("k1") is key
    assert fetch.calls == 1


async def test_unknown_kid_triggers_a_refetch_that_finds_a_rotated_in_key() -> None:
    clock = FakeClock()
    fetch = FakeJwks(public_jwk("k1"))
    cache = make_cache(fetch, clock)
    assert await cache.key("k1") is not None

    fetch.keys.append(public_jwk("k2"))
    clock.advance(1.0)
    key = await cache.key("k2")
    assert key is not None
    assert key.key_id == "k2"
    assert fetch.calls == 2
    # The old key is still published, so it is still known.
    assert await cache.key("k1") is not None
    assert fetch.calls == 2


async def test_unknown_kid_refetch_is_throttled_by_min_refetch() -> None:
    clock = FakeClock()
    fetch = FakeJwks(public_jwk("k1"))
    cache = make_cache(fetch, clock, min_refetch=1.0)
    assert await cache.key("k1") is not None

    # Tokens naming made-up keys must not turn into one JWKS request each.
    clock.advance(0.5)
    for n in range(5):
        assert await cache.key(f"forged-{n}") is None
    assert fetch.calls == 1

    clock.advance(0.5)
    assert await cache.key("forged-again") is None
    assert fetch.calls == 2
    assert await cache.key("forged-once-more") is None
    assert fetch.calls == 2


async def test_concurrent_lookups_of_an_unknown_kid_share_one_fetch() -> None:
    clock = FakeClock()
    fetch = FakeJwks(public_jwk("k1"))
    cache = make_cache(fetch, clock, min_refetch=1.0)
    assert await cache.key("k1") is not None

    fetch.keys.append(public_jwk("k2"))
    fetch.gate = asyncio.Event()
    clock.advance(2.0)
    lookups = [asyncio.create_task(cache.key("k2")) for _ in range(5)]
    await asyncio.sleep(0)
    fetch.gate.set()
    found = await asyncio.gather(*lookups)
    assert all(k is not None and k.key_id == "k2" for k in found)
    assert fetch.calls == 2


async def test_ttl_expiry_refetches_and_drops_keys_no_longer_published() -> None:
    clock = FakeClock()
    fetch = FakeJwks(public_jwk("k1"))
    cache = make_cache(fetch, clock, ttl=10.0, min_refetch=1.0)
    assert await cache.key("k1") is not None

    fetch.keys = [public_jwk("k2")]
    clock.advance(9.9)
    assert await cache.key("k1") is not None
    assert fetch.calls == 1

    clock.advance(0.1)
    assert await cache.key("k1") is None
    assert fetch.calls == 2
    assert await cache.key("k2") is not None
    assert fetch.calls == 2


@pytest.mark.parametrize(
    "error",
    [
        aiohttp.ClientConnectionError("auth service down"),
        TimeoutError(),
        ValueError("not JSON"),
    ],
)
async def test_failed_fetch_keeps_the_old_keys(error: Exception) -> None:
    clock = FakeClock()
    fetch = FakeJwks(public_jwk("k1"))
    cache = make_cache(fetch, clock, ttl=10.0, min_refetch=1.0)
    first = await cache.key("k1")
    assert first is not None

    fetch.error = error
    clock.advance(10.0)
    assert await cache.key("k1") is first
    assert fetch.calls == 2


async def test_failed_fetch_is_retried_only_after_min_refetch() -> None:
    clock = FakeClock()
    fetch = FakeJwks(public_jwk("k1"))
    cache = make_cache(fetch, clock, ttl=300.0, min_refetch=1.0)
    assert await cache.key("k1") is not None

    fetch.error = aiohttp.ClientConnectionError("auth service down")
    clock.advance(300.0)
    assert await cache.key("k1") is not None
    assert fetch.calls == 2

    # While the auth service is down, neither known nor unknown kids hammer it.
    clock.advance(0.5)
    assert await cache.key("k1") is not None
    assert await cache.key("unknown") is None
    assert fetch.calls == 2

    fetch.error = None
    fetch.keys.append(public_jwk("k2"))
    clock.advance(0.5)
    assert await cache.key("k2") is not None
    assert fetch.calls == 3


async def test_first_fetch_failing_leaves_no_keys_and_is_retried() -> None:
    clock = FakeClock()
    fetch = FakeJwks(public_jwk("k1"))
    fetch.error = aiohttp.ClientConnectionError("auth service down")
    cache = make_cache(fetch, clock, min_refetch=1.0)

    assert await cache.key("k1") is None
    assert fetch.calls == 1
    fetch.error = None
    clock.advance(1.0)
    assert await cache.key("k1") is not None
    assert fetch.calls == 2


async def test_entries_not_for_signing_or_unusable_are_skipped() -> None:
    clock = FakeClock()
    no_kid = public_jwk("x")
    del no_kid["kid"]
    fetch = FakeJwks(
        public_jwk("good"),
        public_jwk("enc", use="enc"),
        no_kid,
        {"kid": "broken", "kty": "OKP", "crv": "Ed25519"},
        {"kid": "alien", "kty": "nonsense"},
    )
    cache = make_cache(fetch, clock)

    assert await cache.key("good") is not None
    for kid in ("enc", "broken", "alien"):
        assert await cache.key(kid) is None


# --- RevocationList ---------------------------------------------------------------------------

NOW = 1_700_000_000.0


def principal(
    *,
    client_id: str = "vgsbx_app",
    jti: str | None = None,
    issued_at: float = NOW,
    clinic_id: uuid.UUID | None = None,
    group_id: uuid.UUID | None = None,
) -> Principal:
    return Principal(
        client_id=client_id,
        application_id=uuid.uuid4(),
        scopes=frozenset({"bookings:read"}),
        clinic_id=clinic_id,
        group_id=group_id,
        user_id=None,
        tier=1,
        environment="sandbox",
        jti=jti or uuid.uuid4().hex,
        issued_at=issued_at,
        expires_at=issued_at + 900,
    )


def test_token_is_revoked_by_jti_only() -> None:
    revocations = RevocationList(clock=FakeClock(NOW))
    revoked = principal(jti="a" * 32)
    revocations.revoke_token(revoked.jti, NOW + 900)

    assert revocations.is_revoked(revoked)
    assert not revocations.is_revoked(principal(jti="b" * 32))


def test_grant_revocation_refuses_tokens_issued_until_then_only() -> None:
    clinic, group = uuid.uuid4(), uuid.uuid4()
    revocations = RevocationList(clock=FakeClock(NOW))
    revocations.revoke_grant("vgsbx_app", clinic, NOW)

    assert revocations.is_revoked(principal(clinic_id=clinic, group_id=group, issued_at=NOW - 60))
    assert revocations.is_revoked(principal(clinic_id=clinic, group_id=group, issued_at=NOW))
    # A token issued after the revocation (under a new grant) is not affected.
    assert not revocations.is_revoked(
        principal(clinic_id=clinic, group_id=group, issued_at=NOW + 1)
    )
    # Nor are other clinics of the application, or other applications for the clinic.
    assert not revocations.is_revoked(principal(clinic_id=uuid.uuid4(), issued_at=NOW - 60))
    assert not revocations.is_revoked(
        principal(client_id="vgsbx_other", clinic_id=clinic, issued_at=NOW - 60)
    )


def test_group_grant_revocation_covers_every_clinic_of_the_group() -> None:
    group = uuid.uuid4()
    revocations = RevocationList(clock=FakeClock(NOW))
    revocations.revoke_grant("vgsbx_app", group, NOW)

    assert revocations.is_revoked(
        principal(clinic_id=uuid.uuid4(), group_id=group, issued_at=NOW - 1)
    )
    assert not revocations.is_revoked(
        principal(clinic_id=uuid.uuid4(), group_id=uuid.uuid4(), issued_at=NOW - 1)
    )


def test_a_late_older_grant_revocation_does_not_move_the_cut_off_back() -> None:
    clinic = uuid.uuid4()
    revocations = RevocationList(clock=FakeClock(NOW))
    revocations.revoke_grant("vgsbx_app", clinic, NOW)
    revocations.revoke_grant("vgsbx_app", clinic, NOW - 100)

    assert revocations.is_revoked(principal(clinic_id=clinic, issued_at=NOW - 50))


def test_application_suspension_refuses_tokens_issued_until_then() -> None:
    revocations = RevocationList(clock=FakeClock(NOW))
    revocations.suspend_application("vgsbx_app", NOW)

    assert revocations.is_revoked(principal(issued_at=NOW - 10))
    assert revocations.is_revoked(principal(clinic_id=uuid.uuid4(), issued_at=NOW))
    assert not revocations.is_revoked(principal(issued_at=NOW + 1))
    assert not revocations.is_revoked(principal(client_id="vgsbx_other", issued_at=NOW - 10))

    revocations.suspend_application("vgsbx_app", NOW - 100)
    assert revocations.is_revoked(principal(issued_at=NOW - 10))


def test_expired_jtis_are_pruned() -> None:
    clock = FakeClock(NOW)
    revocations = RevocationList(clock=clock)
    old = principal(jti="old")
    revocations.revoke_token("old", NOW + 60)
    assert revocations.is_revoked(old)

    clock.advance(61)
    revocations.revoke_token("new", NOW + 900)
    # Once its token has expired, a jti is no longer remembered (expiry refuses it anyway).
    assert not revocations.is_revoked(old)
    assert revocations.is_revoked(principal(jti="new"))


def _event(event_type: str, data: Any) -> Event:
    return Event(type=event_type, data=data.model_dump(mode="json"))


def test_apply_folds_each_revocation_event_in() -> None:
    clinic, group = uuid.uuid4(), uuid.uuid4()
    at = datetime.fromtimestamp(NOW, UTC)
    revocations = RevocationList(clock=FakeClock(NOW))

    revocations.apply(
        _event(
            TOKEN_REVOKED,
            TokenRevoked(
                jti="j1",
                client_id="vgsbx_a",
                expires_at=datetime.fromtimestamp(NOW + 900, UTC),
            ),
        )
    )
    revocations.apply(
        _event(
            GRANT_REVOKED,
            GrantChanged(
                grant_id=uuid.uuid4(),
                application_id=uuid.uuid4(),
                client_id="vgsbx_b",
                clinic_id=clinic,
                group_id=None,
                scopes=["bookings:read"],
                changed_at=at,
            ),
        )
    )
    revocations.apply(
        _event(
            APPLICATION_SUSPENDED,
            ApplicationChanged(
                application_id=uuid.uuid4(),
                client_id="vgsbx_c",
                status="suspended",
                environment="sandbox",
                tier=1,
                contact_email="c@example.com",
                changed_at=at,
            ),
        )
    )

    assert revocations.is_revoked(principal(client_id="vgsbx_a", jti="j1"))
    assert revocations.is_revoked(
        principal(client_id="vgsbx_b", clinic_id=clinic, group_id=group, issued_at=NOW - 1)
    )
    assert not revocations.is_revoked(
        principal(client_id="vgsbx_b", clinic_id=clinic, group_id=group, issued_at=NOW + 1)
    )
    assert revocations.is_revoked(principal(client_id="vgsbx_c", issued_at=NOW - 1))
    assert not revocations.is_revoked(principal(client_id="vgsbx_c", issued_at=NOW + 1))


def test_apply_ignores_events_that_revoke_nothing() -> None:
    clinic = uuid.uuid4()
    revocations = RevocationList(clock=FakeClock(NOW))
    revocations.apply(
        _event(
            GRANT_CREATED,
            GrantChanged(
                grant_id=uuid.uuid4(),
                application_id=uuid.uuid4(),
                client_id="vgsbx_b",
                clinic_id=clinic,
                group_id=None,
                scopes=["bookings:read"],
                changed_at=datetime.fromtimestamp(NOW, UTC),
            ),
        )
    )

    assert not revocations.is_revoked(
        principal(client_id="vgsbx_b", clinic_id=clinic, issued_at=NOW - 1)
    )


async def test_verified_tokens_are_not_checked_again_but_still_expire() -> None:
    """A token's signature is checked once; its expiry is checked on every call."""
    fetches = 0
    key = Ed25519PrivateKey.generate()
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", use="sig", alg="EdDSA")

    async def fetch() -> dict[str, Any]:
        nonlocal fetches
        fetches += 1
        return {"keys": [jwk]}

    now = [1_000_000.0]
    verifier = TokenVerifier(
        JwksCache(fetch, ttl=0.0, min_refetch=0.0),
        issuer="iss",
        audience="aud",
        clock=lambda: now[0],
    )
    verifier.revocations.loaded = True
    claims = {
        "iss": "iss",
        "aud": "aud",
        "sub": "c",
        "client_id": "c",
        "jti": "j",
        "app_id": str(uuid.uuid4()),
        "iat": int(time.time()),
        "exp": int(time.time()) + 60,
    }
    token = jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "k1", "typ": "at+jwt"})
    assert (await verifier.verify(token)).client_id == "c"
    assert (await verifier.verify(token)).client_id == "c"
    assert fetches == 1  # the second call never looked at the key again
    now[0] = claims["exp"] + verifier.leeway + 1
    with pytest.raises(Unauthorized, match="expired"):
        await verifier.verify(token)
