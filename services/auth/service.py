"""The rules of the auth service. Each public function owns its transaction; no HTTP here."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from services.auth import crypto, store
from services.auth.cache import TtlCache, grant_key, record
from services.auth.keyring import KeyRing
from services.auth.schemas import (
    AccessQuery,
    ApplicationCreate,
    ApplicationCredentials,
    ApplicationRead,
    ApplicationUpdate,
    ClinicCreate,
    ClinicPage,
    ClinicRead,
    GrantCreate,
    GrantPage,
    GrantRead,
    GroupCreate,
    GroupRead,
    PartnerCreate,
    PartnerRead,
    SigningKeyRead,
    StaffUserCreate,
    StaffUserRead,
    TokenResponse,
)
from services.auth.settings import AuthSettings
from shared import events, scopes
from shared.db import Connection, Record, Row, constraint_problem
from shared.errors import Conflict, FieldError, NotFound, OAuthError, RateLimited, ValidationProblem
from shared.events import ApplicationChanged, ClinicChanged, Event, GrantChanged, TokenRevoked
from shared.outbox import Draft, emit, emit_many
from shared.pagination import PageQuery, decode_cursor, encode_cursor
from shared.randomness import unique_hex
from shared.ratelimit import TokenBuckets
from shared.tokens import Principal


@dataclass
class AuthContext:
    """What the token rules need besides the database."""

    settings: AuthSettings
    keyring: KeyRing
    failures: TokenBuckets
    app_limits: TokenBuckets
    cache: TtlCache
    # argon2id takes 64 MiB and a core for tens of milliseconds per check: a burst of password
    # grants queues here instead of taking every thread, and the pod's memory, at once.
    password_checks: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))


# --- directory --------------------------------------------------------------------------------


async def create_group(pool: asyncpg.Pool, data: GroupCreate) -> GroupRead:
    """Create a group of clinics."""
    async with pool.acquire() as conn:
        row = await store.insert_group(conn, uuid.uuid4(), data.name)
    return GroupRead.model_validate(dict(row))


async def create_clinic(pool: asyncpg.Pool, data: ClinicCreate) -> ClinicRead:
    """Create a clinic in an existing group."""
    async with pool.acquire() as conn, conn.transaction():
        if not await store.group_exists(conn, data.group_id):
            raise ValidationProblem([FieldError("body.group_id", "No such group")])
        row = await store.insert_clinic(conn, uuid.uuid4(), **data.model_dump())
        await emit(
            conn,
            events.CLINIC_CREATED,
            _clinic_event(row),
            aggregate=f"clinic:{row['id']}",
            clinic_id=row["id"],
        )
    return ClinicRead.model_validate(dict(row))


def _clinic_event(row: asyncpg.Record) -> ClinicChanged:
    return ClinicChanged(
        clinic_id=row["id"],
        group_id=row["group_id"],
        name=row["name"],
        time_zone=row["time_zone"],
        country=row["country"],
        sandbox=row["sandbox"],
        changed_at=row["updated_at"],
    )


async def announce_tenant(
    conn: Connection, *, clinic_id: uuid.UUID, application_id: uuid.UUID, grant_id: uuid.UUID
) -> None:
    """Tell every service of a clinic, application and grant written without the API (the
    sandbox seed), as creating them through it would have."""
    clinic = await store.get_clinic(conn, clinic_id)
    app = await store.get_application(conn, application_id)
    grant = await store.get_grant(conn, grant_id)
    assert clinic is not None
    assert app is not None
    assert grant is not None
    granted = grant["revoked_at"] is None
    await emit_many(
        conn,
        [
            Draft(events.CLINIC_UPDATED, _clinic_event(clinic), f"clinic:{clinic_id}", clinic_id),
            Draft(events.APPLICATION_UPDATED, _app_event(app), f"application:{application_id}"),
            Draft(
                events.GRANT_CREATED if granted else events.GRANT_REVOKED,
                _grant_event(grant, app["client_id"], grant["revoked_at"] or grant["created_at"]),
                f"grant:{grant_id}",
                grant["clinic_id"],
            ),
        ],
    )


async def get_clinic(pool: asyncpg.Pool, clinic_id: uuid.UUID) -> ClinicRead:
    """One clinic of the directory, for other services (internal)."""
    async with pool.acquire() as conn:
        row = await store.get_clinic(conn, clinic_id)
    if row is None:
        raise NotFound("No such clinic")
    return ClinicRead.model_validate(dict(row))


async def get_clinic_for(
    pool: asyncpg.Pool, principal: Principal, clinic_id: uuid.UUID
) -> ClinicRead:
    """One clinic, if the calling application holds a grant for it."""
    async with pool.acquire() as conn:
        grant = await store.clinic_grant(conn, principal.application_id, clinic_id)
        same_environment = grant is not None and grant["sandbox"] == (
            principal.environment == "sandbox"
        )
        if grant is None or not grant["scopes"] or not same_environment:
            raise NotFound("No such clinic among the clinics granted to this application")
        row = await store.get_clinic(conn, clinic_id)
    assert row is not None
    return ClinicRead.model_validate(dict(row))


def _cursor_id(cursor: str | None) -> uuid.UUID | None:
    """The id a page cursor holds; a 422 on the cursor if it holds something else."""
    key = decode_cursor(cursor, 1)
    if key is None:
        return None
    try:
        return uuid.UUID(key[0])
    except ValueError:
        raise ValidationProblem(
            [FieldError("query.cursor", "Unknown or malformed cursor")]
        ) from None


async def list_clinics_for(
    pool: asyncpg.Pool, principal: Principal, query: PageQuery
) -> ClinicPage:
    """The clinics the calling application holds grants for, by id, cursor-paginated."""
    async with pool.acquire() as conn:
        rows = await store.list_granted_clinics(
            conn,
            principal.application_id,
            after=_cursor_id(query.cursor),
            updated_since=query.updated_since,
            limit=query.limit + 1,
        )
    items = [ClinicRead.model_validate(dict(r)) for r in rows[: query.limit]]
    cursor = encode_cursor(items[-1].id) if len(rows) > query.limit else None
    return ClinicPage(items=items, next_cursor=cursor)


async def create_partner(pool: asyncpg.Pool, data: PartnerCreate) -> PartnerRead:
    """Register a partner company."""
    async with pool.acquire() as conn:
        row = await store.insert_partner(conn, uuid.uuid4(), data.name, data.contact_email)
    return PartnerRead.model_validate(dict(row))


# --- applications -----------------------------------------------------------------------------


def _app_event(row: asyncpg.Record) -> ApplicationChanged:
    return ApplicationChanged(
        application_id=row["id"],
        client_id=row["client_id"],
        status=row["status"],
        environment=row["environment"],
        tier=row["tier"],
        contact_email=row["contact_email"],
        changed_at=row["updated_at"],
    )


async def create_application(
    pool: asyncpg.Pool, partner_id: uuid.UUID, data: ApplicationCreate
) -> ApplicationCredentials:
    """Create a pending application; the secret is in the answer and nowhere else."""
    secret = crypto.new_client_secret()
    async with pool.acquire() as conn, conn.transaction():
        if not await store.partner_exists(conn, partner_id):
            raise NotFound("No such partner")
        row = await store.insert_application(
            conn,
            uuid.uuid4(),
            secret_hash=crypto.hash_secret(secret),
            partner_id=partner_id,
            client_id=crypto.new_client_id(data.environment),
            **data.model_dump(),
        )
        await emit(
            conn,
            events.APPLICATION_CREATED,
            _app_event(row),
            aggregate=f"application:{row['id']}",
        )
    return ApplicationCredentials(**dict(row), client_secret=secret)


async def get_application(pool: asyncpg.Pool, app_id: uuid.UUID) -> ApplicationRead:
    """One application by id."""
    async with pool.acquire() as conn:
        row = await store.get_application(conn, app_id)
    if row is None:
        raise NotFound("No such application")
    return ApplicationRead.model_validate(dict(row))


async def update_application(
    pool: asyncpg.Pool, app_id: uuid.UUID, data: ApplicationUpdate
) -> ApplicationRead:
    """Change name, contact, tier or DPA flag."""
    changes = data.model_dump(exclude_unset=True, exclude_none=True)
    async with pool.acquire() as conn, conn.transaction():
        row = await store.update_application(conn, app_id, changes)
        if row is None:
            raise NotFound("No such application")
        await emit(
            conn, events.APPLICATION_UPDATED, _app_event(row), aggregate=f"application:{app_id}"
        )
    return ApplicationRead.model_validate(dict(row))


async def set_application_status(
    pool: asyncpg.Pool, app_id: uuid.UUID, status: str
) -> ApplicationRead:
    """Approve or suspend; a clinic-owned production build needs a signed DPA to be approved."""
    async with pool.acquire() as conn, conn.transaction():
        current = await store.get_application(conn, app_id, for_update=True)
        if current is None:
            raise NotFound("No such application")
        if (
            status == "approved"
            and current["environment"] == "production"
            and current["clinic_owned"]
            and not current["dpa_signed"]
        ):
            raise Conflict(
                "A clinic-owned production application needs a signed DPA before approval",
                slug="dpa-required",
                title="Data-processing agreement required",
            )
        row = await store.update_application(conn, app_id, {"status": status})
        assert row is not None
        event_type = (
            events.APPLICATION_APPROVED if status == "approved" else events.APPLICATION_SUSPENDED
        )
        await emit(conn, event_type, _app_event(row), aggregate=f"application:{app_id}")
    return ApplicationRead.model_validate(dict(row))


async def rotate_application_secret(
    pool: asyncpg.Pool, app_id: uuid.UUID, *, grace_seconds: int
) -> ApplicationCredentials:
    """A new secret; the old one keeps working for the grace period."""
    secret = crypto.new_client_secret()
    async with pool.acquire() as conn, conn.transaction():
        row = await store.rotate_secret(conn, app_id, crypto.hash_secret(secret), grace_seconds)
        if row is None:
            raise NotFound("No such application")
        # Tells every auth process to drop its cached copy of the old credentials.
        await emit(
            conn, events.APPLICATION_UPDATED, _app_event(row), aggregate=f"application:{app_id}"
        )
    return ApplicationCredentials(**dict(row), client_secret=secret)


# --- grants -----------------------------------------------------------------------------------


def _grant_event(row: asyncpg.Record, client_id: str, at: datetime) -> GrantChanged:
    return GrantChanged(
        grant_id=row["id"],
        application_id=row["application_id"],
        client_id=client_id,
        clinic_id=row["clinic_id"],
        group_id=row["group_id"],
        scopes=list(row["scopes"]),
        changed_at=at,
    )


_GRANT_CONSTRAINTS = {
    "grants_active_clinic": lambda _: Conflict(
        "The application already holds an active grant for this clinic", slug="grant-exists"
    ),
    "grants_active_group": lambda _: Conflict(
        "The application already holds an active grant for this group", slug="grant-exists"
    ),
    "grants_clinic_id_fkey": lambda _: ValidationProblem(
        [FieldError("body.clinic_id", "No such clinic")]
    ),
    "grants_group_id_fkey": lambda _: ValidationProblem(
        [FieldError("body.group_id", "No such group")]
    ),
}


async def create_grant(pool: asyncpg.Pool, data: GrantCreate) -> GrantRead:
    """Authorize an application for a clinic or a group; publishes ``grant.created``."""
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                app = await store.get_application(conn, data.application_id)
                if app is None:
                    raise ValidationProblem(
                        [FieldError("body.application_id", "No such application")]
                    )
                if data.clinic_id is not None:
                    clinic = await store.get_clinic(conn, data.clinic_id)
                    if clinic is not None and clinic["sandbox"] != (
                        app["environment"] == "sandbox"
                    ):
                        raise Conflict(
                            "Sandbox applications may only be granted sandbox clinics, and "
                            "production applications only real ones",
                            slug="environment-mismatch",
                        )
                row = await store.insert_grant(
                    conn,
                    uuid.uuid4(),
                    data.application_id,
                    data.clinic_id,
                    data.group_id,
                    sorted(set(data.scopes)),
                )
                await emit(
                    conn,
                    events.GRANT_CREATED,
                    _grant_event(row, app["client_id"], row["created_at"]),
                    aggregate=f"grant:{row['id']}",
                    clinic_id=row["clinic_id"],
                )
        except asyncpg.IntegrityConstraintViolationError as exc:
            problem = constraint_problem(exc, _GRANT_CONSTRAINTS)
            if problem is None:
                raise
            raise problem from None
    return GrantRead.model_validate(dict(row))


async def revoke_grant(pool: asyncpg.Pool, grant_id: uuid.UUID) -> GrantRead:
    """Revoke a grant; publishes ``grant.revoked`` so resource services refuse its tokens."""
    async with pool.acquire() as conn, conn.transaction():
        row = await store.revoke_grant(conn, grant_id)
        if row is None:
            if await store.get_grant(conn, grant_id) is None:
                raise NotFound("No such grant")
            raise Conflict("The grant is already revoked", slug="grant-revoked")
        app = await store.get_application(conn, row["application_id"])
        assert app is not None
        await emit(
            conn,
            events.GRANT_REVOKED,
            _grant_event(row, app["client_id"], row["revoked_at"]),
            aggregate=f"grant:{row['id']}",
            clinic_id=row["clinic_id"],
        )
    return GrantRead.model_validate(dict(row))


async def list_grants(pool: asyncpg.Pool, app_id: uuid.UUID, query: PageQuery) -> GrantPage:
    """An application's grants, active and revoked."""
    async with pool.acquire() as conn:
        rows = await store.list_grants(
            conn, app_id, after=_cursor_id(query.cursor), limit=query.limit + 1
        )
    items = [GrantRead.model_validate(dict(r)) for r in rows[: query.limit]]
    return GrantPage(
        items=items, next_cursor=encode_cursor(items[-1].id) if len(rows) > query.limit else None
    )


async def revocations_in_force(pool: asyncpg.Pool, settings: AuthSettings) -> list[Event]:
    """Every revocation that can still refuse a live token, as the events that announced it."""
    window = settings.access_token_ttl + settings.revocation_margin_seconds + 60
    async with pool.acquire() as conn:
        found = await store.revocations_in_force(conn, window)
    snapshot = [
        Event(
            type=events.TOKEN_REVOKED,
            data=TokenRevoked(
                jti=r["jti"], client_id=r["client_id"], expires_at=r["expires_at"]
            ).model_dump(mode="json"),
        )
        for r in found["tokens"]
    ]
    snapshot += [
        Event(
            type=events.GRANT_REVOKED,
            clinic_id=r["clinic_id"],
            data=_grant_event(r, r["client_id"], r["revoked_at"]).model_dump(mode="json"),
        )
        for r in found["grants"]
    ]
    snapshot += [
        Event(type=events.APPLICATION_SUSPENDED, data=_app_event(r).model_dump(mode="json"))
        for r in found["applications"]
    ]
    return snapshot


async def access_snapshot(pool: asyncpg.Pool, query: AccessQuery) -> tuple[list[Event], str | None]:
    """Clinics, applications and grants, as the events that would have announced them, a page
    at a time (one kind per page, in ``store.ACCESS_KINDS`` order), with the next page's cursor.

    A service that keeps a projection of who may see what starts from this, then follows the
    events; applying an event twice, or an older one after a newer, changes nothing, so pages
    read at different moments add up to a valid start.
    """
    kinds = store.ACCESS_KINDS
    kind, after = 0, None
    key = decode_cursor(query.after, 2, field="query.after")
    if key is not None:
        try:
            kind, after = int(key[0]), uuid.UUID(key[1]) if key[1] else None
            if not 0 <= kind < len(kinds):
                raise ValueError("no such kind")
        except ValueError:
            raise ValidationProblem(
                [FieldError("query.after", "Not a cursor of this list")]
            ) from None
    async with pool.acquire() as conn:
        if query.limit is None and query.after is None:
            whole: list[Event] = []
            for name in kinds:
                rows = await store.access_page(conn, name, after=None, limit=None)
                whole += _access_events(name, rows)
            return whole, None
        rows = await store.access_page(conn, kinds[kind], after=after, limit=query.limit)
    page = _access_events(kinds[kind], rows)
    if query.limit is not None and len(rows) == query.limit:
        return page, encode_cursor(kind, rows[-1]["id"])
    if kind + 1 < len(kinds):
        return page, encode_cursor(kind + 1, "")
    return page, None


def _access_events(kind: str, rows: list[Record]) -> list[Event]:
    if kind == "clinics":
        return [
            Event(
                type=events.CLINIC_UPDATED,
                clinic_id=r["id"],
                data=_clinic_event(r).model_dump(mode="json"),
            )
            for r in rows
        ]
    if kind == "applications":
        return [
            Event(type=events.APPLICATION_UPDATED, data=_app_event(r).model_dump(mode="json"))
            for r in rows
        ]
    return [
        Event(
            type=events.GRANT_CREATED if r["revoked_at"] is None else events.GRANT_REVOKED,
            clinic_id=r["clinic_id"],
            data=_grant_event(r, r["client_id"], r["revoked_at"] or r["created_at"]).model_dump(
                mode="json"
            ),
        )
        for r in rows
    ]


# --- signing keys -----------------------------------------------------------------------------


async def rotate_signing_key(
    pool: asyncpg.Pool, settings: AuthSettings, *, publish_delay: float | None = None
) -> SigningKeyRead:
    """Publish a new key now, sign with it after the delay, retire the old after its tokens."""
    delay = settings.key_publish_delay_seconds if publish_delay is None else publish_delay
    key = await asyncio.to_thread(
        crypto.generate_signing_key, settings.signing_key_passphrase.get_secret_value()
    )
    async with pool.acquire() as conn, conn.transaction():
        await store.lock_signing_keys(conn)
        row = await store.insert_signing_key(
            conn, key.kid, key.algorithm, key.private_pem, key.public_jwk, delay
        )
        # Old keys sign until the new one activates, and their tokens live one TTL longer.
        await store.retire_keys_except(conn, key.kid, settings.access_token_ttl + 60)
    return SigningKeyRead.model_validate(dict(row))


async def ensure_signing_key(pool: asyncpg.Pool, settings: AuthSettings) -> bool:
    """Create a first, immediately active key if none is live; True if one was created."""
    async with pool.acquire() as conn, conn.transaction():
        await store.lock_signing_keys(conn)
        if await store.live_signing_keys(conn):
            return False
    await rotate_signing_key(pool, settings, publish_delay=0)
    return True


# --- staff users ------------------------------------------------------------------------------


async def create_staff_user(
    pool: asyncpg.Pool, clinic_id: uuid.UUID, data: StaffUserCreate
) -> StaffUserRead:
    """A clinic staff member who can sign in through an approved application."""
    password_hash = await asyncio.to_thread(crypto.hash_password, data.password)
    async with pool.acquire() as conn:
        if await store.get_clinic(conn, clinic_id) is None:
            raise NotFound("No such clinic")
        try:
            row = await store.insert_staff_user(
                conn,
                uuid.uuid4(),
                clinic_id,
                username=data.username,
                display_name=data.display_name,
                role=data.role,
                password_hash=password_hash,
            )
        except asyncpg.UniqueViolationError:
            raise Conflict("That username is taken", slug="username-taken") from None
    return StaffUserRead.model_validate(dict(row))


# --- tokens -----------------------------------------------------------------------------------


def _invalid_client(detail: str = "Client authentication failed") -> OAuthError:
    return OAuthError(
        "invalid_client",
        detail,
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="vetgate", charset="UTF-8"'},
    )


async def authenticate_client(
    conn: Connection, ctx: AuthContext, client_id: str, secret: str
) -> Row:
    """The application whose id and secret these are; slowed down after repeated failures."""
    row = await store.client_credentials(conn, client_id)
    return _verify_secret(ctx, client_id, secret, row)


def _verify_secret(ctx: AuthContext, client_id: str, secret: str, row: Row | None) -> Row:
    """The application if the secret is right; failures of a real client are slowed down.

    The right secret always passes: a 256-bit secret cannot be guessed, so refusing it while
    throttled would only let anyone who knows a (public) client id lock its partner out. Unknown
    ids get no bucket, so random ids cannot fill memory or push real buckets out.
    """
    if row is not None and crypto.secret_matches(
        secret, row["secret_hash"], row["previous_secret_hash"]
    ):
        return row
    if row is not None:
        _check_not_throttled(ctx, client_id)
        limits = ctx.settings
        ctx.failures.take(client_id, rate=limits.auth_failure_rate, burst=limits.auth_failure_burst)
    else:
        crypto.secret_matches(secret, None)  # same work as a wrong secret
    raise _invalid_client()


def _check_not_throttled(ctx: AuthContext, client_id: str) -> None:
    limits = ctx.settings
    if (
        ctx.failures.peek(client_id, rate=limits.auth_failure_rate, burst=limits.auth_failure_burst)
        < 1
    ):
        raise RateLimited(
            "Too many failed authentications for this client; slow down",
            retry_after=1 / limits.auth_failure_rate,
        )


def _check_tier_limit(ctx: AuthContext, app: Row) -> None:
    tier = int(app["tier"])
    wait = ctx.app_limits.take(
        app["client_id"], rate=ctx.settings.tier_rates[tier], burst=ctx.settings.tier_bursts[tier]
    )
    if wait > 0:
        raise RateLimited("Token requests exceed this application's tier", retry_after=wait)


def _check_may_get_tokens(app: Row) -> None:
    if app["status"] != "approved":
        raise OAuthError("unauthorized_client", f"The application is {app['status']}, not approved")
    if app["environment"] == "production" and app["clinic_owned"] and not app["dpa_signed"]:
        raise OAuthError(
            "unauthorized_client", "Production access needs a signed data-processing agreement"
        )


def _parse_clinic_id(raw: str | None) -> uuid.UUID | None:
    if raw is None or raw == "":
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise OAuthError("invalid_request", "clinic_id is not a valid id") from None


def _requested_scopes(raw: str | None) -> set[str] | None:
    if raw is None:
        return None
    requested = set(raw.split())
    unknown = requested - scopes.ALL_SCOPES
    if unknown:
        raise OAuthError("invalid_scope", f"Unknown scope(s): {' '.join(sorted(unknown))}")
    return requested


def _granted_scopes(
    app: Row,
    grant: Row | None,
    clinic_id: uuid.UUID | None,
    requested: set[str] | None,
) -> tuple[set[str], uuid.UUID | None]:
    """Scopes to put in the token (and the group granted), or an RFC 6749 refusal.

    ``grant`` is the application's standing on ``clinic_id`` (``store.clinic_grant``). The group
    goes into the token only when a group grant stands behind it, so that revoking a group grant
    never refuses tokens that rest on a clinic grant alone.
    """
    if clinic_id is None:
        available = set(scopes.APPLICATION_SCOPES)
        group_id = None
    else:
        if grant is None or not grant["scopes"]:
            raise OAuthError("invalid_grant", "The application holds no grant for this clinic")
        # A group grant may cover clinics of the other environment: never act for those.
        if grant["sandbox"] != (app["environment"] == "sandbox"):
            raise OAuthError(
                "invalid_grant",
                "Sandbox applications act only for sandbox clinics, and "
                "production applications only for real ones",
            )
        available = set(grant["scopes"]) | scopes.APPLICATION_SCOPES
        group_id = grant["group_id"] if grant["via_group"] else None
    if requested is None:
        chosen = set(grant["scopes"]) if grant is not None else available
    else:
        beyond = requested - available
        if beyond:
            raise OAuthError(
                "invalid_scope", f"Scope(s) beyond the grant: {' '.join(sorted(beyond))}"
            )
        chosen = requested
    return chosen, group_id


async def _mint(
    ctx: AuthContext,
    app: Row,
    chosen: set[str],
    clinic_id: uuid.UUID | None,
    group_id: uuid.UUID | None,
    *,
    user_id: uuid.UUID | None = None,
) -> TokenResponse:
    now = int(time.time())
    ttl = ctx.settings.access_token_ttl
    scope = " ".join(sorted(chosen))
    claims: dict[str, Any] = {
        "iss": ctx.settings.issuer,
        "sub": str(user_id) if user_id else app["client_id"],
        "aud": ctx.settings.token_audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        # Unique, not secret: a token is revoked by presenting it whole, never by its jti.
        "jti": unique_hex(128),
        "client_id": app["client_id"],
        "app_id": str(app["id"]),
        "scope": scope,
        "tier": int(app["tier"]),
        "env": app["environment"],
    }
    if clinic_id is not None:
        claims["clinic_id"] = str(clinic_id)
    if group_id is not None:
        claims["group_id"] = str(group_id)
    if user_id is not None:
        claims["user_id"] = str(user_id)
    token = await ctx.keyring.sign(claims)
    return TokenResponse(access_token=token, expires_in=ttl, scope=scope, clinic_id=clinic_id)


async def issue_client_token(
    pool: asyncpg.Pool,
    ctx: AuthContext,
    *,
    client_id: str,
    client_secret: str,
    scope: str | None,
    clinic_id: str | None,
) -> TokenResponse:
    """RFC 6749 §4.4: an access token for the application, optionally acting for one clinic."""
    requested = _requested_scopes(scope)
    clinic = _parse_clinic_id(clinic_id)

    # The hot path: both reads come from the event-invalidated cache (see cache.py).
    async def load_app() -> dict[str, Any] | None:
        async with pool.acquire() as conn:
            return record(await store.client_credentials(conn, client_id))

    app = _verify_secret(ctx, client_id, client_secret, await ctx.cache.get(client_id, load_app))
    _check_may_get_tokens(app)
    _check_tier_limit(ctx, app)
    grant = None
    if clinic is not None:
        app_id, clinic_key = app["id"], clinic

        async def load_grant() -> dict[str, Any] | None:
            async with pool.acquire() as conn:
                return record(await store.clinic_grant(conn, app_id, clinic_key))

        grant = await ctx.cache.get(grant_key(app_id, clinic_key), load_grant)
    chosen, group_id = _granted_scopes(app, grant, clinic, requested)
    return await _mint(ctx, app, chosen, clinic, group_id)


async def issue_user_token(
    pool: asyncpg.Pool,
    ctx: AuthContext,
    *,
    client_id: str,
    client_secret: str,
    username: str,
    password: str,
    scope: str | None,
) -> TokenResponse:
    """RFC 6749 §4.3: a token carrying both the application and a clinic staff member."""
    requested = _requested_scopes(scope)
    # Password guessing is slowed per username, whichever application it comes through.
    user_key = "user:" + username.casefold()
    _check_not_throttled(ctx, user_key)
    async with pool.acquire() as conn:
        app = await authenticate_client(conn, ctx, client_id, client_secret)
        _check_may_get_tokens(app)
        _check_tier_limit(ctx, app)
        user = await store.staff_user_by_username(conn, username)
    async with ctx.password_checks:
        ok = await asyncio.to_thread(
            crypto.verify_password, password, user["password_hash"] if user else None
        )
    if user is None or not ok or not user["active"]:
        limits = ctx.settings
        ctx.failures.take(user_key, rate=limits.auth_failure_rate, burst=limits.auth_failure_burst)
        raise OAuthError("invalid_grant", "Unknown user or wrong password")
    async with pool.acquire() as conn:
        grant = await store.clinic_grant(conn, app["id"], user["clinic_id"])
    chosen, group_id = _granted_scopes(app, grant, user["clinic_id"], requested)
    return await _mint(ctx, app, chosen, user["clinic_id"], group_id, user_id=user["id"])


async def introspect(
    pool: asyncpg.Pool, ctx: AuthContext, *, client_id: str, client_secret: str, token: str
) -> dict[str, Any]:
    """RFC 7662: the token's claims if it is active and was issued to the caller."""
    # Decoded before a connection is taken: a key refresh needs one of its own.
    decoded = await ctx.keyring.decode(
        token, audience=ctx.settings.token_audience, issuer=ctx.settings.issuer
    )
    async with pool.acquire() as conn:
        app = await authenticate_client(conn, ctx, client_id, client_secret)
        claims = decoded if decoded and decoded.get("client_id") == app["client_id"] else None
        if claims is None or app["status"] != "approved":
            return {"active": False}
        if await store.token_is_revoked(conn, claims["jti"]):
            return {"active": False}
        if "clinic_id" in claims:
            grant = await store.clinic_grant(conn, app["id"], uuid.UUID(claims["clinic_id"]))
            granted = set(grant["scopes"]) if grant is not None else set()
            if not granted:
                return {"active": False}
    return {"active": True, "token_type": "Bearer", **claims}


async def revoke_token(
    pool: asyncpg.Pool, ctx: AuthContext, *, client_id: str, client_secret: str, token: str
) -> None:
    """RFC 7009: revoke one of the caller's access tokens; unknown tokens are ignored."""
    # Decoded before a connection is taken: a key refresh needs one of its own.
    claims = await ctx.keyring.decode(
        token, audience=ctx.settings.token_audience, issuer=ctx.settings.issuer
    )
    async with pool.acquire() as conn, conn.transaction():
        app = await authenticate_client(conn, ctx, client_id, client_secret)
        if claims is None:
            return
        if claims.get("client_id") != app["client_id"]:
            raise OAuthError("unauthorized_client", "The token was not issued to this client")
        expires_at = datetime.fromtimestamp(claims["exp"], UTC)
        if await store.insert_revoked_token(conn, claims["jti"], app["client_id"], expires_at):
            await emit(
                conn,
                events.TOKEN_REVOKED,
                TokenRevoked(jti=claims["jti"], client_id=app["client_id"], expires_at=expires_at),
                aggregate=f"token:{claims['jti']}",
                clinic_id=uuid.UUID(claims["clinic_id"]) if "clinic_id" in claims else None,
            )
