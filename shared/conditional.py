"""Conditional and repeatable requests: ``ETag``/``If-Match`` and ``Idempotency-Key`` bodies."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel

from shared.errors import FieldError, ProblemError


def etag(version: int) -> str:
    return f'"{version}"'


def check_if_match(if_match: str | None, version: int, *, what: str = "resource") -> None:
    """``If-Match`` must name the current version when given; ``*`` matches any.

    A mismatch is a 412 whose ``ETag`` header gives the current version.
    """
    if if_match is None:
        return
    candidates = {v.strip().removeprefix("W/") for v in if_match.split(",")}
    if "*" not in candidates and etag(version) not in candidates:
        raise ProblemError(
            f"The {what} changed since you read it; read it again and retry",
            slug=f"stale-{what}",
            title="Precondition failed",
            status=412,
            headers={"ETag": etag(version)},
        )


def request_hash(data: BaseModel) -> bytes:
    """What makes two create requests "the same body": their validated content."""
    canonical = json.dumps(data.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).digest()


def idempotency_key_reused() -> ProblemError:
    return ProblemError(
        "This Idempotency-Key was used with a different request body",
        slug="idempotency-key-reused",
        title="Idempotency key reused",
        status=422,
        extra={"errors": [FieldError("header.Idempotency-Key", "Used with another body")]},
    )
