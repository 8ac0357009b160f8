"""Opaque cursors: what is encoded comes back; anything else is a 422 on ``query.cursor``."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from shared.errors import ValidationProblem
from shared.pagination import Page, PageQuery, decode_cursor, encode_cursor


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def assert_cursor_problem(cursor: str, arity: int = 2) -> None:
    with pytest.raises(ValidationProblem) as caught:
        decode_cursor(cursor, arity)
    problem = caught.value
    assert problem.status == 422
    assert [e["field"] for e in problem.errors] == ["query.cursor"]
    body = problem.to_problem("/v1/things")
    assert body["errors"] == [{"field": "query.cursor", "message": "Unknown or malformed cursor"}]


def test_round_trip_of_timestamp_and_id() -> None:
    when = datetime(2025, 3, 30, 1, 59, 59, 123456, tzinfo=UTC)
    ident = uuid.uuid4()
    cursor = encode_cursor(when, ident)
    assert decode_cursor(cursor, 2) == [when.isoformat(), str(ident)]
    assert datetime.fromisoformat(decode_cursor(cursor, 2)[0]) == when  # type: ignore[index]


def test_round_trip_keeps_offsets_and_odd_strings() -> None:
    when = datetime(2024, 10, 27, 1, 30, tzinfo=timezone(timedelta(hours=1)))
    key = ["naïve/ünïcode", 'with "quotes" and ,commas', "", "🐾"]
    for value in key:
        cursor = encode_cursor(when, value)
        assert decode_cursor(cursor, 2) == [when.isoformat(), value]


def test_cursor_is_url_safe_and_unpadded() -> None:
    for n in range(1, 40):
        cursor = encode_cursor("x" * n, n)
        assert "=" not in cursor
        assert all(c.isalnum() or c in "-_" for c in cursor), cursor
        assert decode_cursor(cursor, 2) == ["x" * n, str(n)]


def test_no_cursor_is_the_first_page() -> None:
    assert decode_cursor(None, 2) is None


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!!",
        "not a cursor",
        "é",
        "a",
        "abcde",
        b64(b"not json"),
        b64(b'{"a": "b"}'),
        b64(b'"just a string"'),
        b64(b"[1, 2]"),
        b64(b'["one"]'),
        b64(b'["one", "two", "three"]'),
        b64(b'["one", null]'),
        b64(b'["one", ["two"]]'),
        b64(b"\xff\xfe\xfd"),
        b64(b"[" * 5000),
        b64(b"[" * 5000 + b"]" * 5000),
    ],
)
def test_garbage_cursor_is_a_422_on_query_cursor(cursor: str) -> None:
    assert_cursor_problem(cursor)


def test_tampered_cursor_is_a_422() -> None:
    cursor = encode_cursor(datetime(2025, 1, 1, tzinfo=UTC), uuid.uuid4())
    assert_cursor_problem(cursor[:-3])
    assert_cursor_problem(cursor + "A")
    assert_cursor_problem("A" + cursor)
    assert_cursor_problem(cursor, arity=3)


def test_page_query_bounds() -> None:
    assert PageQuery().limit == 50
    assert PageQuery.model_validate({"limit": "200", "cursor": "abc"}).cursor == "abc"
    for limit in (0, 201, -1):
        with pytest.raises(ValidationError):
            PageQuery.model_validate({"limit": limit})


def test_page_serialises_items_and_cursor() -> None:
    page = Page[int](items=[1, 2], next_cursor=encode_cursor(2))
    assert json.loads(page.model_dump_json()) == {"items": [1, 2], "next_cursor": encode_cursor(2)}
    assert Page[int](items=[]).next_cursor is None
