"""HTTP only: parse, authenticate, call the service, render."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote

from aiohttp import web

from services.auth import service
from services.auth.keys import AUTH_CONTEXT, AUTH_SETTINGS
from services.auth.schemas import (
    AccessQuery,
    ApplicationCreate,
    ApplicationUpdate,
    ClinicCreate,
    GrantCreate,
    GroupCreate,
    PartnerCreate,
    StaffUserCreate,
    TokenForm,
)
from shared.errors import Forbidden, OAuthError
from shared.keys import DB_POOL
from shared.pagination import PageQuery
from shared.scopes import ALL_SCOPES, CLINICS_READ
from shared.tokens import PRINCIPAL, requires
from shared.web import json_model, parse_body, parse_query, path_id, read_form, require_bearer

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _directory_changed(request: web.Request) -> None:
    """This process forgets cached credentials now; other copies do on the event."""
    request.app[AUTH_CONTEXT].cache.clear()


def require_admin(request: web.Request) -> None:
    """The operator's bootstrap credential."""
    require_bearer(request, request.app[AUTH_SETTINGS].admin_token, "Operator")


# --- OAuth ------------------------------------------------------------------------------------


def client_credentials(request: web.Request, form: dict[str, str]) -> tuple[str, str]:
    """RFC 6749 §2.3.1: HTTP Basic (form-encoded parts) or the body, never both."""
    header = request.headers.get("Authorization")
    in_body = "client_id" in form or "client_secret" in form
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise OAuthError(
                "invalid_client",
                "Unsupported client authentication",
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="vetgate"'},
            )
        if "client_secret" in form:
            raise OAuthError("invalid_request", "Use one client authentication method, not two")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
            client_id, sep, secret = decoded.partition(":")
            # Strict, as for the form: percent-encoded bytes that are not UTF-8 are malformed.
            client_id = unquote(client_id.replace("+", " "), errors="strict")
            secret = unquote(secret.replace("+", " "), errors="strict")
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError(
                "invalid_client",
                "Malformed Basic credentials",
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="vetgate"'},
            ) from None
        if not sep or "\x00" in client_id or "\x00" in secret:
            raise OAuthError(
                "invalid_client",
                "Malformed Basic credentials",
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="vetgate"'},
            )
        return client_id, secret
    if in_body and form.get("client_id") and form.get("client_secret"):
        return form["client_id"], form["client_secret"]
    raise OAuthError(
        "invalid_client",
        "Client authentication is required",
        status=401,
        headers={"WWW-Authenticate": 'Basic realm="vetgate"'},
    )


async def _oauth_form(request: web.Request) -> dict[str, str]:
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError(
            "invalid_request", "Send the parameters as application/x-www-form-urlencoded"
        )
    form = dict(
        await read_form(
            request,
            repeated=_repeated_parameter,
            malformed=lambda: OAuthError("invalid_request", "The form must be UTF-8"),
        )
    )
    # No identifier, secret or token holds U+0000 (nor can a database text value).
    if any("\x00" in key or "\x00" in value for key, value in form.items()):
        raise OAuthError("invalid_request", "Parameters must not contain the NUL character")
    return form


def _repeated_parameter(name: str) -> OAuthError:
    return OAuthError("invalid_request", f"Parameter {name!r} given more than once")


async def token(request: web.Request) -> web.Response:
    form = await _oauth_form(request)
    # Checked before the model, whose missing-field error would not be an RFC 6749 answer.
    if not form.get("grant_type"):
        raise OAuthError("invalid_request", "grant_type is required")
    parsed = TokenForm.model_validate(
        {k: v for k, v in form.items() if k in TokenForm.model_fields}
    )
    if parsed.grant_type not in ("client_credentials", "password"):
        raise OAuthError("unsupported_grant_type", f"Unsupported grant_type {parsed.grant_type!r}")
    client_id, secret = client_credentials(request, form)
    ctx = request.app[AUTH_CONTEXT]
    pool = request.app[DB_POOL]
    if parsed.grant_type == "client_credentials":
        answer = await service.issue_client_token(
            pool,
            ctx,
            client_id=client_id,
            client_secret=secret,
            scope=parsed.scope,
            clinic_id=parsed.clinic_id,
        )
    else:
        if not parsed.username or not parsed.password:
            raise OAuthError("invalid_request", "username and password are required")
        answer = await service.issue_user_token(
            pool,
            ctx,
            client_id=client_id,
            client_secret=secret,
            username=parsed.username,
            password=parsed.password,
            scope=parsed.scope,
        )
    return json_model(answer, headers=NO_STORE)


async def introspect(request: web.Request) -> web.Response:
    form = await _oauth_form(request)
    client_id, secret = client_credentials(request, form)
    if not form.get("token"):
        raise OAuthError("invalid_request", "token is required")
    answer = await service.introspect(
        request.app[DB_POOL],
        request.app[AUTH_CONTEXT],
        client_id=client_id,
        client_secret=secret,
        token=form["token"],
    )
    return web.json_response(answer, headers=NO_STORE)


async def revoke(request: web.Request) -> web.Response:
    form = await _oauth_form(request)
    client_id, secret = client_credentials(request, form)
    if not form.get("token"):
        raise OAuthError("invalid_request", "token is required")
    hint = form.get("token_type_hint")
    if hint not in (None, "access_token"):
        raise OAuthError("unsupported_token_type", "Only access tokens are issued and revocable")
    await service.revoke_token(
        request.app[DB_POOL],
        request.app[AUTH_CONTEXT],
        client_id=client_id,
        client_secret=secret,
        token=form["token"],
    )
    return web.Response(status=200, headers=NO_STORE)


async def jwks(request: web.Request) -> web.Response:
    document = await request.app[AUTH_CONTEXT].keyring.jwks()
    return web.json_response(document, headers={"Cache-Control": "public, max-age=60"})


async def server_metadata(request: web.Request) -> web.Response:
    issuer = request.app[AUTH_SETTINGS].issuer.rstrip("/")
    return web.json_response(
        {
            "issuer": issuer,
            "token_endpoint": f"{issuer}/oauth/token",
            "jwks_uri": f"{issuer}/.well-known/jwks.json",
            "introspection_endpoint": f"{issuer}/oauth/introspect",
            "revocation_endpoint": f"{issuer}/oauth/revoke",
            "grant_types_supported": ["client_credentials", "password"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "introspection_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "revocation_endpoint_auth_methods_supported": [
                "client_secret_basic",
                "client_secret_post",
            ],
            "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
            "scopes_supported": sorted(ALL_SCOPES),
            "response_types_supported": [],
            "service_documentation": f"{issuer}/docs",
        }
    )


async def internal_revocations(request: web.Request) -> web.Response:
    """Revocations still in force, for a resource service that has just started."""
    require_bearer(request, request.app[AUTH_SETTINGS].internal_token, "Internal")
    snapshot = await service.revocations_in_force(request.app[DB_POOL], request.app[AUTH_SETTINGS])
    return web.json_response(
        {"events": [event.model_dump(mode="json") for event in snapshot]},
        headers=NO_STORE,
    )


async def internal_access(request: web.Request) -> web.Response:
    """Clinics, applications and grants as events, for services that route events to partners."""
    require_bearer(request, request.app[AUTH_SETTINGS].internal_token, "Internal")
    query = parse_query(request, AccessQuery)
    snapshot, next_cursor = await service.access_snapshot(request.app[DB_POOL], query)
    return web.json_response(
        {
            "events": [event.model_dump(mode="json") for event in snapshot],
            "next_cursor": next_cursor,
        },
        headers=NO_STORE,
    )


async def internal_clinic(request: web.Request) -> web.Response:
    """A directory entry, for services that keep a projection of clinics."""
    require_bearer(request, request.app[AUTH_SETTINGS].internal_token, "Internal")
    clinic = await service.get_clinic(request.app[DB_POOL], path_id(request, "clinic_id"))
    return json_model(clinic)


# --- partner-facing directory -----------------------------------------------------------------


@requires(CLINICS_READ, clinic=False)
async def list_clinics(request: web.Request) -> web.Response:
    query = parse_query(request, PageQuery)
    page = await service.list_clinics_for(request.app[DB_POOL], request[PRINCIPAL], query)
    return json_model(page)


@requires(clinic=False)
async def get_clinic(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    clinic_id = path_id(request, "clinic_id")
    # A token acting for a clinic may always read that clinic; others need clinics:read.
    if principal.clinic_id != clinic_id and CLINICS_READ not in principal.scopes:
        raise Forbidden(
            f"The token lacks the scope(s): {CLINICS_READ}",
            slug="insufficient-scope",
            title="Insufficient scope",
        )
    clinic = await service.get_clinic_for(request.app[DB_POOL], principal, clinic_id)
    return json_model(clinic)


# --- operator API -----------------------------------------------------------------------------


async def admin_create_group(request: web.Request) -> web.Response:
    require_admin(request)
    data = await parse_body(request, GroupCreate)
    return json_model(await service.create_group(request.app[DB_POOL], data), status=201)


async def admin_create_clinic(request: web.Request) -> web.Response:
    require_admin(request)
    data = await parse_body(request, ClinicCreate)
    return json_model(await service.create_clinic(request.app[DB_POOL], data), status=201)


async def admin_create_partner(request: web.Request) -> web.Response:
    require_admin(request)
    data = await parse_body(request, PartnerCreate)
    return json_model(await service.create_partner(request.app[DB_POOL], data), status=201)


async def admin_create_application(request: web.Request) -> web.Response:
    require_admin(request)
    partner_id = path_id(request, "partner_id")
    data = await parse_body(request, ApplicationCreate)
    created = await service.create_application(request.app[DB_POOL], partner_id, data)
    return json_model(created, status=201, headers=NO_STORE)


async def admin_get_application(request: web.Request) -> web.Response:
    require_admin(request)
    return json_model(
        await service.get_application(request.app[DB_POOL], path_id(request, "app_id"))
    )


async def admin_update_application(request: web.Request) -> web.Response:
    require_admin(request)
    app_id = path_id(request, "app_id")
    data = await parse_body(request, ApplicationUpdate)
    changed = json_model(await service.update_application(request.app[DB_POOL], app_id, data))
    _directory_changed(request)
    return changed


async def admin_approve_application(request: web.Request) -> web.Response:
    require_admin(request)
    app_id = path_id(request, "app_id")
    changed = json_model(
        await service.set_application_status(request.app[DB_POOL], app_id, "approved")
    )
    _directory_changed(request)
    return changed


async def admin_suspend_application(request: web.Request) -> web.Response:
    require_admin(request)
    app_id = path_id(request, "app_id")
    changed = json_model(
        await service.set_application_status(request.app[DB_POOL], app_id, "suspended")
    )
    _directory_changed(request)
    return changed


async def admin_rotate_secret(request: web.Request) -> web.Response:
    require_admin(request)
    app_id = path_id(request, "app_id")
    grace = request.app[AUTH_SETTINGS].secret_rotation_grace_seconds
    rotated = await service.rotate_application_secret(
        request.app[DB_POOL], app_id, grace_seconds=grace
    )
    changed = json_model(rotated, headers=NO_STORE)
    _directory_changed(request)
    return changed


async def admin_list_grants(request: web.Request) -> web.Response:
    require_admin(request)
    app_id = path_id(request, "app_id")
    query = parse_query(request, PageQuery)
    return json_model(await service.list_grants(request.app[DB_POOL], app_id, query))


async def admin_create_grant(request: web.Request) -> web.Response:
    require_admin(request)
    data = await parse_body(request, GrantCreate)
    changed = json_model(await service.create_grant(request.app[DB_POOL], data), status=201)
    _directory_changed(request)
    return changed


async def admin_revoke_grant(request: web.Request) -> web.Response:
    require_admin(request)
    grant_id = path_id(request, "grant_id")
    changed = json_model(await service.revoke_grant(request.app[DB_POOL], grant_id))
    _directory_changed(request)
    return changed


async def admin_create_staff_user(request: web.Request) -> web.Response:
    require_admin(request)
    clinic_id = path_id(request, "clinic_id")
    data = await parse_body(request, StaffUserCreate)
    return json_model(
        await service.create_staff_user(request.app[DB_POOL], clinic_id, data), status=201
    )


async def admin_rotate_signing_key(request: web.Request) -> web.Response:
    require_admin(request)
    key = await service.rotate_signing_key(request.app[DB_POOL], request.app[AUTH_SETTINGS])
    request.app[AUTH_CONTEXT].keyring.invalidate()
    return json_model(key, status=201)
