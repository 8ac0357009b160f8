"""Cursor pagination: an opaque cursor holding the sort key of the last item returned."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field

from shared.errors import FieldError, ValidationProblem
from shared.validation import Instant, storable

ItemT = TypeVar("ItemT")


class PageQuery(BaseModel):
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = None
    updated_since: Instant | None = None


class Page(BaseModel, Generic[ItemT]):
    items: list[ItemT]
    next_cursor: str | None = None


def encode_cursor(*key: Any) -> str:
    raw = json.dumps([k.isoformat() if isinstance(k, datetime) else str(k) for k in key])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(
    cursor: str | None, arity: int, *, field: str = "query.cursor"
) -> list[str] | None:
    """The sort key packed in ``cursor``; a 422 on ``field`` (the parameter it came in) if it
    was tampered with."""
    if cursor is None:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode()))
        if (
            not isinstance(key, list)
            or len(key) != arity
            or not all(isinstance(k, str) and "\x00" not in k for k in key)
        ):
            raise ValueError("bad cursor")
        return key
    except (ValueError, RecursionError):  # RecursionError: deeply nested JSON from a client
        raise ValidationProblem([FieldError(field, "Unknown or malformed cursor")]) from None


def time_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """The (timestamp, id) sort key a list cursor holds; a 422 on ``query.cursor`` if it was
    tampered with."""
    key = decode_cursor(cursor, 2)
    if key is None:
        return None
    try:
        return storable(datetime.fromisoformat(key[0])), uuid.UUID(key[1])
    except ValueError:
        raise ValidationProblem(
            [FieldError("query.cursor", "Unknown or malformed cursor")]
        ) from None
