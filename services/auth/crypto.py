"""Credentials: client secrets, staff passwords and signing keys. No I/O here."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SECRET_PREFIX = "vgs_"
_password_hasher = PasswordHasher()
# Verifying against this when a user does not exist keeps the timing of both answers alike.
_DUMMY_PASSWORD_HASH = _password_hasher.hash(secrets.token_urlsafe(16))


def new_client_id(environment: str) -> str:
    prefix = "vgsbx_" if environment == "sandbox" else "vgprd_"
    return prefix + secrets.token_hex(12)


def new_client_secret() -> str:
    """256 random bits; shown once, stored only as its hash."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def secret_matches(secret: str, *hashes: bytes | None) -> bool:
    """Constant-time comparison against each candidate hash (current, previous)."""
    candidate = hash_secret(secret)
    matched = False
    for stored in hashes:
        if stored is not None and hmac.compare_digest(candidate, stored):
            matched = True
    return matched


def hash_password(password: str) -> str:
    return _password_hasher.hash(password)


def verify_password(password: str, password_hash: str | None) -> bool:
    """argon2id verification; a missing user costs the same as a wrong password."""
    try:
        return _password_hasher.verify(password_hash or _DUMMY_PASSWORD_HASH, password) and (
            password_hash is not None
        )
    except (VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class GeneratedKey:
    kid: str
    algorithm: str
    private_pem: bytes
    public_jwk: dict[str, Any]


def generate_signing_key(passphrase: str) -> GeneratedKey:
    """A new Ed25519 key: PKCS#8 encrypted with the passphrase, and its public JWK."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()),
    )
    public_jwk: dict[str, Any] = json.loads(
        jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key())
    )
    kid = jwk_thumbprint(public_jwk)
    public_jwk.update(kid=kid, use="sig", alg="EdDSA")
    return GeneratedKey(kid=kid, algorithm="EdDSA", private_pem=pem, public_jwk=public_jwk)


def load_private_key(pem: bytes, passphrase: str) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=passphrase.encode())
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("unexpected signing key type")
    return key


def b64url_json(value: dict[str, Any]) -> bytes:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def compact_jws(header_segment: bytes, claims: dict[str, Any], key: Ed25519PrivateKey) -> str:
    """RFC 7515 compact serialization signed with EdDSA (RFC 8037).

    Written out rather than through PyJWT's encoder, which re-validates the header and the
    claims on every call: issuance signs thousands of tokens a second with a fixed header.
    Verification everywhere (tests, resource services) goes through PyJWT.
    """
    signing_input = header_segment + b"." + b64url_json(claims)
    signature = base64.urlsafe_b64encode(key.sign(signing_input)).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint of an OKP key, used as its kid."""
    members = {k: jwk[k] for k in ("crv", "kty", "x")}
    digest = hashlib.sha256(json.dumps(members, separators=(",", ":"), sort_keys=True).encode())
    return jwt.utils.base64url_encode(digest.digest()).decode()
