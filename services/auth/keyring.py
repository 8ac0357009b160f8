"""The signing keys as this process sees them: cached briefly, decrypted once per key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.auth import crypto, store
from shared.errors import ServiceUnavailable
from shared.tokens import ACCESS_TOKEN_TYP, is_access_token_type


@dataclass(frozen=True)
class KeyView:
    kid: str
    algorithm: str
    public_jwk: dict[str, Any]
    active: bool
    private_pem: bytes


class KeyRing:
    def __init__(
        self,
        pool: asyncpg.Pool,
        passphrase: str,
        *,
        cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._passphrase = passphrase
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._keys: list[KeyView] = []
        self._loaded_at = float("-inf")
        self._private: dict[str, Ed25519PrivateKey] = {}
        self._public: dict[str, jwt.PyJWK] = {}
        self._headers: dict[str, bytes] = {}
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._loaded_at = float("-inf")

    async def keys(self) -> list[KeyView]:
        """Live keys, newest first; refreshed from the database every few seconds."""
        if self._clock() - self._loaded_at >= self._cache_seconds:
            async with self._lock:
                if self._clock() - self._loaded_at >= self._cache_seconds:
                    async with self._pool.acquire() as conn:
                        rows = await store.live_signing_keys(conn)
                    self._keys = [
                        KeyView(
                            r["kid"],
                            r["algorithm"],
                            r["public_jwk"],
                            r["active"],
                            r["private_key_pem"],
                        )
                        for r in rows
                    ]
                    self._loaded_at = self._clock()
        return self._keys

    async def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk for k in await self.keys()]}

    async def sign(self, claims: dict[str, Any]) -> str:
        """Sign with the newest active key."""
        key = next((k for k in await self.keys() if k.active), None)
        if key is None:
            raise ServiceUnavailable("No signing key is active yet", slug="no-signing-key")
        private = self._private.get(key.kid)
        if private is None:
            # Decrypting the PEM runs a key-derivation function: do it once per key.
            private = await asyncio.to_thread(
                crypto.load_private_key, key.private_pem, self._passphrase
            )
            self._private[key.kid] = private
        return crypto.compact_jws(self._header_segment(key), claims, private)

    def _header_segment(self, key: KeyView) -> bytes:
        segment = self._headers.get(key.kid)
        if segment is None:
            header = {"alg": key.algorithm, "kid": key.kid, "typ": ACCESS_TOKEN_TYP}
            segment = self._headers[key.kid] = crypto.b64url_json(header)
        return segment

    async def decode(self, token: str, *, audience: str, issuer: str) -> dict[str, Any] | None:
        """Claims of a token this server signed and that has not expired; None otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            return None
        kid = header.get("kid")
        view = next((k for k in await self.keys() if k.kid == kid), None)
        if view is None or not is_access_token_type(header.get("typ")):
            return None
        public = self._public.get(view.kid)
        if public is None:
            public = self._public[view.kid] = jwt.PyJWK(view.public_jwk)
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key=public, algorithms=[view.algorithm], audience=audience, issuer=issuer
            )
        except jwt.InvalidTokenError:
            return None
        return claims
