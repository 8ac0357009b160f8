"""Standard Webhooks signatures, and the signing secrets kept encrypted at rest.

A signature is ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`` keyed with the secret's
decoded bytes; during a rotation every live secret signs and the header lists each, separated
by spaces, so a receiver on either secret verifies.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
_NONCE_BYTES = 12


def new_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form: ``whsec_`` + base64 of 32 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key a ``whsec_`` secret stands for."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature_header(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,…`` per live secret."""
    return " ".join(signature(key, msg_id, timestamp, body) for key in keys)


def webhook_headers(
    keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(keys, msg_id, timestamp, body),
        "user-agent": "Vetgate-Webhooks/1.0",
    }


class SecretBox:
    """AES-256-GCM with a key derived from the service's setting; each secret has its own nonce."""

    def __init__(self, passphrase: str) -> None:
        self._aead = AESGCM(hashlib.sha256(passphrase.encode()).digest())

    def seal(self, secret: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, secret.encode(), b"vetgate-webhook-secret")

    def open(self, sealed: bytes) -> str:
        nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, b"vetgate-webhook-secret").decode()
