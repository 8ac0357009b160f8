"""The auth service's URL map, readable top to bottom."""

from __future__ import annotations

from services.auth import handlers as h
from services.auth import schemas as s
from services.auth.schemas import AccessQuery
from shared.api import Api
from shared.errors import PROBLEM_CONTENT_TYPE
from shared.pagination import PageQuery
from shared.scopes import CLINICS_READ


def build_api() -> Api:
    api = Api(
        "Vetgate auth",
        description="OAuth 2.0 tokens for partner applications, the clinic directory and the "
        "operator API.",
    )
    oauth = ("oauth",)
    # OAuth refusals are RFC 6749 JSON; rate limits and oversized bodies are problem details.
    oauth_errors = ("application/json", PROBLEM_CONTENT_TYPE)
    api.add(
        "POST",
        "/oauth/token",
        h.token,
        "Issue an access token (client_credentials or password)",
        form=s.TokenForm,
        response=s.TokenResponse,
        security="basic",
        tags=oauth,
        error_media_types=oauth_errors,
        errors=(400, 401, 429),
    )
    api.add(
        "POST",
        "/oauth/introspect",
        h.introspect,
        "Introspect a token (RFC 7662)",
        form=s.TokenForms,
        response=s.IntrospectionResponse,
        security="basic",
        tags=oauth,
        error_media_types=oauth_errors,
        errors=(400, 401),
    )
    api.add(
        "POST",
        "/oauth/revoke",
        h.revoke,
        "Revoke a token (RFC 7009)",
        form=s.TokenForms,
        security="basic",
        tags=oauth,
        error_media_types=oauth_errors,
        errors=(400, 401),
    )
    api.add(
        "GET",
        "/.well-known/jwks.json",
        h.jwks,
        "Public signing keys",
        response=s.Jwks,
        security=None,
        tags=oauth,
    )
    api.add(
        "GET",
        "/.well-known/oauth-authorization-server",
        h.server_metadata,
        "Authorization server metadata (RFC 8414)",
        response=s.ServerMetadata,
        security=None,
        tags=oauth,
    )

    api.add(
        "GET",
        "/internal/v1/revocations",
        h.internal_revocations,
        "Revocations still in force (service-to-service; not routed by the gateway)",
        security="bearer",
        tags=("internal",),
    )

    api.add(
        "GET",
        "/internal/v1/access",
        h.internal_access,
        "Every clinic, application and grant as events, a page of one kind at a time with "
        "`limit` and `after` (service-to-service; not routed)",
        query=AccessQuery,
        tags=("internal",),
    )

    api.add(
        "GET",
        "/internal/v1/clinics/{clinic_id}",
        h.internal_clinic,
        "One directory entry (service-to-service; not routed by the gateway)",
        response=s.ClinicRead,
        tags=("internal",),
        errors=(404, 422),
    )

    directory = ("clinics",)
    api.add(
        "GET",
        "/v1/clinics",
        h.list_clinics,
        "Clinics this application is granted",
        query=PageQuery,
        response=s.ClinicPage,
        scopes=(CLINICS_READ,),
        tags=directory,
        errors=(403,),
    )
    api.add(
        "GET",
        "/v1/clinics/{clinic_id}",
        h.get_clinic,
        "One granted clinic",
        response=s.ClinicRead,
        tags=directory,
        errors=(404, 422),
    )

    admin = ("operator",)
    api.add(
        "POST",
        "/v1/admin/groups",
        h.admin_create_group,
        "Create a group",
        body=s.GroupCreate,
        response=s.GroupRead,
        status=201,
        tags=admin,
    )
    api.add(
        "POST",
        "/v1/admin/clinics",
        h.admin_create_clinic,
        "Create a clinic",
        body=s.ClinicCreate,
        response=s.ClinicRead,
        status=201,
        tags=admin,
    )
    api.add(
        "POST",
        "/v1/admin/clinics/{clinic_id}/staff",
        h.admin_create_staff_user,
        "Create a clinic staff user",
        body=s.StaffUserCreate,
        response=s.StaffUserRead,
        status=201,
        tags=admin,
        errors=(404, 409),
    )
    api.add(
        "POST",
        "/v1/admin/partners",
        h.admin_create_partner,
        "Create a partner",
        body=s.PartnerCreate,
        response=s.PartnerRead,
        status=201,
        tags=admin,
    )
    api.add(
        "POST",
        "/v1/admin/partners/{partner_id}/applications",
        h.admin_create_application,
        "Create an application (the secret is shown once)",
        body=s.ApplicationCreate,
        response=s.ApplicationCredentials,
        status=201,
        tags=admin,
        errors=(404,),
    )
    api.add(
        "GET",
        "/v1/admin/applications/{app_id}",
        h.admin_get_application,
        "One application",
        response=s.ApplicationRead,
        tags=admin,
        errors=(404,),
    )
    api.add(
        "PATCH",
        "/v1/admin/applications/{app_id}",
        h.admin_update_application,
        "Change an application",
        body=s.ApplicationUpdate,
        response=s.ApplicationRead,
        tags=admin,
        errors=(404,),
    )
    api.add(
        "POST",
        "/v1/admin/applications/{app_id}/approve",
        h.admin_approve_application,
        "Approve an application",
        response=s.ApplicationRead,
        tags=admin,
        errors=(404, 409),
    )
    api.add(
        "POST",
        "/v1/admin/applications/{app_id}/suspend",
        h.admin_suspend_application,
        "Suspend an application",
        response=s.ApplicationRead,
        tags=admin,
        errors=(404,),
    )
    api.add(
        "POST",
        "/v1/admin/applications/{app_id}/secret",
        h.admin_rotate_secret,
        "Rotate the client secret (the old one stays valid for a grace period)",
        response=s.ApplicationCredentials,
        tags=admin,
        errors=(404,),
    )
    api.add(
        "GET",
        "/v1/admin/applications/{app_id}/grants",
        h.admin_list_grants,
        "An application's grants",
        query=PageQuery,
        response=s.GrantPage,
        tags=admin,
    )
    api.add(
        "POST",
        "/v1/admin/grants",
        h.admin_create_grant,
        "Grant an application a clinic or group",
        body=s.GrantCreate,
        response=s.GrantRead,
        status=201,
        tags=admin,
        errors=(409,),
    )
    api.add(
        "DELETE",
        "/v1/admin/grants/{grant_id}",
        h.admin_revoke_grant,
        "Revoke a grant",
        response=s.GrantRead,
        tags=admin,
        errors=(404, 409),
    )
    api.add(
        "POST",
        "/v1/admin/signing-keys/rotate",
        h.admin_rotate_signing_key,
        "Publish a new signing key and retire the current one",
        response=s.SigningKeyRead,
        status=201,
        tags=admin,
    )
    return api
