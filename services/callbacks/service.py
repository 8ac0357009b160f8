"""The rules of webhook endpoints, deliveries and the event feed. No aiohttp.web in here."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from aiohttp.resolver import DefaultResolver

from services.callbacks import store
from services.callbacks.dispatcher import Dispatcher, Keys, attempt_record, next_state
from services.callbacks.schemas import (
    AttemptRead,
    DeliveryDetail,
    DeliveryListQuery,
    DeliveryPage,
    DeliveryRead,
    EndpointCreate,
    EndpointCreated,
    EndpointHealth,
    EndpointPage,
    EndpointRead,
    EndpointUpdate,
    FeedPage,
    FeedQuery,
    HealthState,
    RecoverResult,
    SecretRotated,
    TestResult,
)
from services.callbacks.sender import Sender
from services.callbacks.settings import CallbacksSettings
from services.callbacks.signing import SecretBox, new_secret
from services.callbacks.ssrf import AddressRefused, resolve_checked, url_problem
from shared.conditional import check_if_match, idempotency_key_reused, request_hash
from shared.db import Connection, Record
from shared.errors import Conflict, FieldError, NotFound, ValidationProblem
from shared.events import PARTNER_EVENT_TYPES, Event
from shared.pagination import PageQuery, decode_cursor, encode_cursor, time_cursor
from shared.tokens import Principal

TEST_EVENT = "webhook.test"


@dataclass(frozen=True)
class Context:
    pool: asyncpg.Pool
    settings: CallbacksSettings
    box: SecretBox
    keys: Keys
    sender: Sender
    dispatcher: Dispatcher


# --- endpoints --------------------------------------------------------------------------------


def _endpoint(row: Record) -> EndpointRead:
    return EndpointRead.model_validate(dict(row))


async def _check_url(ctx: Context, url: str, *, environment: str) -> None:
    allowed = ctx.settings.webhook_allowed_hosts
    problem = url_problem(url, require_https=environment == "production", allowed_hosts=allowed)
    if problem is None:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            await resolve_checked(host, port, allowed_hosts=allowed, resolver=DefaultResolver())
        except AddressRefused as exc:
            problem = f"is not allowed: {exc}"
    if problem is not None:
        raise ValidationProblem(
            [FieldError("body.url", f"The URL {problem}")],
            detail="The endpoint URL cannot receive webhooks",
        )


async def _check_clinics(
    conn: Connection, application_id: uuid.UUID, clinic_ids: list[uuid.UUID] | None
) -> None:
    if not clinic_ids:
        return
    missing = await store.ungranted_clinics(conn, application_id, clinic_ids)
    if missing:
        raise ValidationProblem(
            [
                FieldError("body.clinic_ids", f"The application holds no grant for clinic {c}")
                for c in missing
            ]
        )


async def create_endpoint(
    ctx: Context, principal: Principal, data: EndpointCreate, *, key: str | None
) -> tuple[EndpointCreated, int, bool]:
    """A new endpoint and its signing secret (shown once), its version, and True when newly
    created.

    The same Idempotency-Key with the same body answers with the endpoint it created.
    """
    await _check_url(ctx, data.url, environment=principal.environment)
    digest = request_hash(data)
    secret = new_secret()
    app_id = principal.application_id
    async with ctx.pool.acquire() as conn, conn.transaction():
        # One create at a time per application, so that the Idempotency-Key lookup and the
        # endpoint count below see every create committed before (concurrent requests with one
        # key would otherwise hit the unique constraint, and the limit could be overrun).
        await store.lock_application_creates(conn, app_id)
        if key is not None:
            earlier = await store.endpoint_by_idempotency_key(conn, app_id, key)
            if earlier is not None:
                if bytes(earlier["request_hash"]) != digest:
                    raise idempotency_key_reused()
                row = await store.get_endpoint(conn, earlier["id"], app_id)
                assert row is not None
                sealed = await store.live_secrets(conn, earlier["id"])
                created = EndpointCreated(**dict(row), secret=ctx.box.open(sealed[0]))
                return created, row["version"], False
        if await store.count_endpoints(conn, app_id) >= ctx.settings.max_endpoints_per_application:
            raise Conflict(
                f"An application may have at most {ctx.settings.max_endpoints_per_application} "
                "endpoints",
                slug="too-many-endpoints",
                title="Too many endpoints",
            )
        await _check_clinics(conn, app_id, data.clinic_ids)
        endpoint_id = uuid.uuid4()
        row = await store.insert_endpoint(
            conn,
            endpoint_id,
            application_id=app_id,
            idempotency_key=key,
            request_hash=digest if key is not None else None,
            **data.model_dump(),
        )
        await store.insert_secret(conn, endpoint_id, ctx.box.seal(secret))
    return EndpointCreated(**dict(row), secret=secret), row["version"], True


async def _owned(conn: Connection, endpoint_id: uuid.UUID, app_id: uuid.UUID) -> Record:
    row = await store.get_endpoint(conn, endpoint_id, app_id)
    if row is None:
        raise NotFound("No such endpoint")
    return row


async def get_endpoint(
    ctx: Context, principal: Principal, endpoint_id: uuid.UUID
) -> tuple[EndpointRead, int]:
    """One of the application's endpoints, with its version for If-Match."""
    async with ctx.pool.acquire() as conn:
        row = await _owned(conn, endpoint_id, principal.application_id)
    return _endpoint(row), row["version"]


async def list_endpoints(ctx: Context, principal: Principal, query: PageQuery) -> EndpointPage:
    """The application's endpoints, oldest first."""
    after = time_cursor(query.cursor)
    async with ctx.pool.acquire() as conn:
        rows = await store.list_endpoints(
            conn,
            principal.application_id,
            after=after,
            updated_since=query.updated_since,
            limit=query.limit + 1,
        )
    items = [_endpoint(r) for r in rows[: query.limit]]
    more = len(rows) > query.limit
    return EndpointPage(
        items=items,
        next_cursor=encode_cursor(rows[query.limit - 1]["created_at"], items[-1].id)
        if more
        else None,
    )


async def update_endpoint(
    ctx: Context,
    principal: Principal,
    endpoint_id: uuid.UUID,
    data: EndpointUpdate,
    *,
    if_match: str | None,
) -> tuple[EndpointRead, int]:
    """Change an endpoint; ``enabled: true`` re-enables one that was disabled."""
    changes: dict[str, Any] = data.model_dump(exclude_unset=True)
    for name in ("url", "description", "ordered", "enabled"):
        if name in changes and changes[name] is None:
            raise ValidationProblem([FieldError(f"body.{name}", "May not be null")])
    if "url" in changes:
        await _check_url(ctx, changes["url"], environment=principal.environment)
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await store.get_endpoint(conn, endpoint_id, principal.application_id, for_update=True)
        if row is None:
            raise NotFound("No such endpoint")
        check_if_match(if_match, row["version"], what="endpoint")
        await _check_clinics(conn, principal.application_id, changes.get("clinic_ids"))
        row = await store.update_endpoint(conn, endpoint_id, changes)
    if changes.get("enabled"):
        ctx.dispatcher.wake()
    return _endpoint(row), row["version"]


async def delete_endpoint(ctx: Context, principal: Principal, endpoint_id: uuid.UUID) -> None:
    """Delete an endpoint with its deliveries; nothing more is sent to it."""
    async with ctx.pool.acquire() as conn:
        if not await store.delete_endpoint(conn, endpoint_id, principal.application_id):
            raise NotFound("No such endpoint")


async def rotate_secret(
    ctx: Context, principal: Principal, endpoint_id: uuid.UUID
) -> SecretRotated:
    """A new signing secret; the ones it replaces keep signing for the grace period."""
    secret = new_secret()
    grace = ctx.settings.secret_rotation_grace_seconds
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await store.get_endpoint(conn, endpoint_id, principal.application_id, for_update=True)
        if row is None:
            raise NotFound("No such endpoint")
        until = await store.retire_secrets(conn, endpoint_id, grace)
        await store.insert_secret(conn, endpoint_id, ctx.box.seal(secret))
    return SecretRotated(secret=secret, previous_valid_until=until)


def health_state(row: Record, threshold: int) -> HealthState:
    if not row["enabled"]:
        return "disabled"
    if row["last_ping_at"] is None:
        return "unknown"
    if row["alerted"] or row["ping_failures"] >= threshold:
        return "alerting"
    if row["ping_failures"] > 0:
        return "failing"
    return "healthy"


async def endpoint_health(
    ctx: Context, principal: Principal, endpoint_id: uuid.UUID
) -> EndpointHealth:
    """What monitoring knows of the endpoint."""
    async with ctx.pool.acquire() as conn:
        row = await _owned(conn, endpoint_id, principal.application_id)
    return EndpointHealth(
        endpoint_id=row["id"],
        state=health_state(row, ctx.settings.ping_failures_before_alert),
        enabled=row["enabled"],
        last_ping_at=row["last_ping_at"],
        last_ping_status=row["last_ping_status"],
        last_ping_error=row["last_ping_error"],
        consecutive_failures=row["ping_failures"],
        alerted=row["alerted"],
        next_ping_at=row["next_ping_at"] if row["enabled"] else None,
        last_success_at=row["last_success_at"],
        failing_since=row["failing_since"],
    )


async def send_test(ctx: Context, principal: Principal, endpoint_id: uuid.UUID) -> TestResult:
    """Send a ``webhook.test`` event to the endpoint now; the attempt is recorded and returned."""
    token = uuid.uuid4()
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await _owned(conn, endpoint_id, principal.application_id)
        event = Event(
            type=TEST_EVENT,
            data={"endpoint_id": str(endpoint_id), "message": "A test event from Vetgate"},
        )
        body = event.model_dump_json()
        seq = await store.insert_direct_event(
            conn,
            event_id=event.id,
            event_type=TEST_EVENT,
            application_id=principal.application_id,
            body=body,
        )
        delivery_id = await store.insert_leased_delivery(
            conn,
            endpoint_id=endpoint_id,
            event_seq=seq,
            event_id=event.id,
            event_type=TEST_EVENT,
            token=token,
            lease_seconds=ctx.settings.delivery_lease_seconds,
        )
        sealed = await store.live_secrets(conn, endpoint_id)
    outcome = await ctx.sender.send(row["url"], str(event.id), body.encode(), ctx.keys(sealed))
    # A test is one attempt: it is never retried, and its result does not count towards the
    # endpoint's failure clock.
    state, _ = next_state(ctx.dispatcher.policy, attempts_before=0, replay=True, outcome=outcome)
    record = attempt_record(
        outcome,
        delivery_id=delivery_id,
        endpoint_id=endpoint_id,
        token=token,
        trigger="test",
        state=state,
        delay=0.0,
    )
    async with ctx.pool.acquire() as conn, conn.transaction():
        await store.record_attempts(conn, [record], note_endpoints=False)
        attempts = await store.attempts_of(conn, delivery_id)
    return TestResult(
        delivery_id=delivery_id,
        event_id=event.id,
        succeeded=outcome.succeeded,
        attempt=AttemptRead.model_validate(dict(attempts[-1])),
    )


# --- deliveries -------------------------------------------------------------------------------


def _delivery(row: Record) -> DeliveryRead:
    values = dict(row)
    if values["status"] != "pending":
        values["next_attempt_at"] = None
    return DeliveryRead.model_validate(values)


async def list_deliveries(
    ctx: Context, principal: Principal, endpoint_id: uuid.UUID, query: DeliveryListQuery
) -> DeliveryPage:
    """An endpoint's deliveries, oldest first, optionally of one status."""
    after = time_cursor(query.cursor)
    async with ctx.pool.acquire() as conn:
        await _owned(conn, endpoint_id, principal.application_id)
        rows = await store.list_deliveries(
            conn, endpoint_id, status=query.status, after=after, limit=query.limit + 1
        )
    items = [_delivery(r) for r in rows[: query.limit]]
    more = len(rows) > query.limit
    return DeliveryPage(
        items=items,
        next_cursor=encode_cursor(items[-1].created_at, items[-1].id) if more else None,
    )


async def get_delivery(
    ctx: Context, principal: Principal, delivery_id: uuid.UUID
) -> DeliveryDetail:
    """A delivery with every attempt made."""
    async with ctx.pool.acquire() as conn:
        row = await store.get_delivery(conn, delivery_id, principal.application_id)
        if row is None:
            raise NotFound("No such delivery")
        attempts = await store.attempts_of(conn, delivery_id)
    return DeliveryDetail(
        **_delivery(row).model_dump(),
        attempt_log=[AttemptRead.model_validate(dict(a)) for a in attempts],
    )


async def replay_delivery(
    ctx: Context, principal: Principal, delivery_id: uuid.UUID
) -> DeliveryRead:
    """Send a finished delivery again (one attempt, the same webhook-id)."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await store.get_delivery(conn, delivery_id, principal.application_id)
        if row is None:
            raise NotFound("No such delivery")
        replayed = await store.replay_delivery(conn, delivery_id)
    if replayed is None:
        raise Conflict(
            "The delivery is still pending; it will be attempted on its schedule",
            slug="delivery-pending",
            title="Delivery still pending",
        )
    ctx.dispatcher.wake()
    return _delivery(replayed)


async def recover_failed(
    ctx: Context, principal: Principal, endpoint_id: uuid.UUID, since: datetime
) -> RecoverResult:
    """Send every failed delivery of the endpoint since ``since`` again."""
    if since.tzinfo is None:
        raise ValidationProblem([FieldError("body.since", "Give a time with an offset")])
    async with ctx.pool.acquire() as conn, conn.transaction():
        await _owned(conn, endpoint_id, principal.application_id)
        recovered = await store.recover_failed(conn, endpoint_id, since)
    ctx.dispatcher.wake()
    return RecoverResult(endpoint_id=endpoint_id, deliveries=len(recovered))


# --- the operator's replays ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayOutcomes:
    total: int
    waiting: int
    succeeded: int
    failed: int
    enabled: bool

    @property
    def attempted(self) -> int:
        """Replayed deliveries whose attempt has been made (or that went with their endpoint)."""
        return self.total - self.waiting


def endpoint_disabled() -> Conflict:
    return Conflict(
        "The endpoint is disabled, so its deliveries would never be attempted; re-enable it "
        "first (PATCH the endpoint with enabled: true)",
        slug="endpoint-disabled",
        title="Endpoint disabled",
    )


async def operator_recover(
    pool: asyncpg.Pool, endpoint_id: uuid.UUID, since: datetime
) -> list[uuid.UUID]:
    """Whichever application owns the endpoint: its failed deliveries since ``since`` are due
    again now; a running callbacks service picks them up on its next claim."""
    async with pool.acquire() as conn, conn.transaction():
        enabled = await store.endpoint_enabled(conn, endpoint_id)
        if enabled is None:
            raise NotFound("No such endpoint")
        if not enabled:
            raise endpoint_disabled()
        return await store.recover_failed(conn, endpoint_id, since)


async def replay_outcomes(
    pool: asyncpg.Pool, endpoint_id: uuid.UUID, delivery_ids: list[uuid.UUID]
) -> ReplayOutcomes:
    async with pool.acquire() as conn:
        row = await store.replay_outcomes(conn, endpoint_id, delivery_ids)
    # A delivery deleted with its endpoint meanwhile is no longer waiting for anything.
    return ReplayOutcomes(total=len(delivery_ids), **dict(row))


# --- the PULL feed ----------------------------------------------------------------------------


def _feed_types(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    types = [t.strip() for t in raw.split(",") if t.strip()]
    unknown = [t for t in types if t not in PARTNER_EVENT_TYPES]
    if unknown or not types:
        raise ValidationProblem(
            [FieldError("query.types", f"Unknown event type(s): {', '.join(unknown) or raw}")]
        )
    return types


_BIGINT = 2**63


def _feed_cursor(raw: str | None) -> tuple[int, int] | None:
    """The (txid, seq) of a feed cursor; a 422 on ``query.after`` (the parameter it came in)
    when it is not one this service handed out."""
    try:
        key = decode_cursor(raw, 2, field="query.after")
        if key is None:
            return None
        txid, seq = int(key[0]), int(key[1])
        if not (0 <= txid < _BIGINT and 0 <= seq < _BIGINT):
            raise ValueError("out of range")
    except (ValidationProblem, ValueError):
        raise ValidationProblem([FieldError("query.after", "Unknown cursor")]) from None
    return txid, seq


async def feed(ctx: Context, principal: Principal, query: FeedQuery) -> FeedPage:
    """The application's events after the cursor, oldest first, for the last 30 days."""
    # Partner event types only: test events sent to one endpoint are not for reconciling.
    types = _feed_types(query.types) or sorted(PARTNER_EVENT_TYPES)
    after = _feed_cursor(query.after)
    async with ctx.pool.acquire() as conn:
        rows = await store.feed(
            conn,
            principal.application_id,
            after=after,
            types=types,
            retention_days=ctx.settings.feed_retention_days,
            limit=query.limit + 1,
        )
    page = rows[: query.limit]
    if page:
        cursor: str | None = encode_cursor(page[-1]["txid"], page[-1]["seq"])
    else:
        cursor = query.after
    return FeedPage(
        items=[json.loads(r["body"]) for r in page],
        next_cursor=cursor,
        has_more=len(rows) > query.limit,
    )
