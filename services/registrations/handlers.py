"""HTTP only: authenticate, parse, call the rules, render."""

from __future__ import annotations

import uuid

from aiohttp import web

from services.registrations import service
from services.registrations.keys import DIRECTORY, MATCH_LIMIT, REGISTRATIONS_SETTINGS
from services.registrations.schemas import (
    ClientListQuery,
    ClientUpdate,
    GroupFormUpdate,
    MatchRequest,
    PatientCreate,
    PatientUpdate,
    RegistrationCreate,
)
from shared.keys import DB_POOL
from shared.scopes import CLIENTS_READ, REGISTRATIONS_WRITE
from shared.tokens import PRINCIPAL, requires
from shared.web import (
    idempotency_key,
    json_model,
    json_tagged,
    parse_body,
    parse_query,
    path_id,
    require_bearer,
)


def _clinic(request: web.Request) -> uuid.UUID:
    return path_id(request, "clinic_id")


def _app(request: web.Request) -> uuid.UUID:
    return request[PRINCIPAL].application_id


def _require_admin(request: web.Request) -> None:
    """The operator's credential."""
    require_bearer(request, request.app[REGISTRATIONS_SETTINGS].admin_token, "Operator")


def _client_url(clinic_id: uuid.UUID, client_id: uuid.UUID) -> str:
    return f"/v1/clinics/{clinic_id}/registrations/clients/{client_id}"


# --- the form ---------------------------------------------------------------------------------


@requires(REGISTRATIONS_WRITE)
async def get_registration_form(request: web.Request) -> web.Response:
    form = await service.clinic_form(
        request.app[DB_POOL], request.app[DIRECTORY], clinic_id=_clinic(request)
    )
    return json_model(form)


async def get_group_form(request: web.Request) -> web.Response:
    _require_admin(request)
    form = await service.group_form(request.app[DB_POOL], group_id=path_id(request, "group_id"))
    return json_model(form)


async def change_group_form(request: web.Request) -> web.Response:
    _require_admin(request)
    data = await parse_body(request, GroupFormUpdate)
    form = await service.change_group_form(
        request.app[DB_POOL], group_id=path_id(request, "group_id"), data=data
    )
    return json_model(form)


async def reset_group_form(request: web.Request) -> web.Response:
    _require_admin(request)
    form = await service.reset_group_form(
        request.app[DB_POOL], group_id=path_id(request, "group_id")
    )
    return json_model(form)


# --- does this client exist? ------------------------------------------------------------------


@requires(REGISTRATIONS_WRITE)
async def match_client(request: web.Request) -> web.Response:
    principal = request[PRINCIPAL]
    # Counted before the body is read: malformed attempts use up the allowance too.
    request.app[MATCH_LIMIT].check(principal.client_id)
    data = await parse_body(request, MatchRequest)
    result = await service.match(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        data=data,
        reveal_id=CLIENTS_READ in principal.scopes,
    )
    return json_model(result, headers={"Cache-Control": "no-store"})


# --- register, read, change -------------------------------------------------------------------


@requires(REGISTRATIONS_WRITE)
async def register(request: web.Request) -> web.Response:
    data = await parse_body(request, RegistrationCreate)
    clinic_id = _clinic(request)
    client, created = await service.register(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=clinic_id,
        app_id=_app(request),
        data=data,
        idempotency_key=idempotency_key(request),
    )
    response = json_tagged(client, client.version, status=201)
    response.headers["Location"] = _client_url(clinic_id, client.id)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@requires(CLIENTS_READ)
async def list_clients(request: web.Request) -> web.Response:
    page = await service.list_clients(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        query=parse_query(request, ClientListQuery),
    )
    return json_model(page)


@requires(CLIENTS_READ)
async def get_client(request: web.Request) -> web.Response:
    client = await service.get_client(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        client_id=path_id(request, "client_id"),
    )
    return json_tagged(client, client.version)


@requires(REGISTRATIONS_WRITE)
async def update_client(request: web.Request) -> web.Response:
    data = await parse_body(request, ClientUpdate)
    client = await service.update_client(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        app_id=_app(request),
        client_id=path_id(request, "client_id"),
        data=data,
        if_match=request.headers.get("If-Match"),
    )
    return json_tagged(client, client.version)


@requires(REGISTRATIONS_WRITE)
async def add_patient(request: web.Request) -> web.Response:
    data = await parse_body(request, PatientCreate)
    clinic_id = _clinic(request)
    patient, created = await service.add_patient(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=clinic_id,
        app_id=_app(request),
        client_id=path_id(request, "client_id"),
        data=data,
        idempotency_key=idempotency_key(request),
    )
    response = json_tagged(patient, patient.version, status=201)
    response.headers["Location"] = f"/v1/clinics/{clinic_id}/patients/{patient.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@requires(CLIENTS_READ)
async def get_patient(request: web.Request) -> web.Response:
    patient = await service.get_patient(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        patient_id=path_id(request, "patient_id"),
    )
    return json_tagged(patient, patient.version)


@requires(REGISTRATIONS_WRITE)
async def update_patient(request: web.Request) -> web.Response:
    data = await parse_body(request, PatientUpdate)
    patient = await service.update_patient(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        patient_id=path_id(request, "patient_id"),
        data=data,
        if_match=request.headers.get("If-Match"),
    )
    return json_tagged(patient, patient.version)


# --- erasure ----------------------------------------------------------------------------------


@requires(REGISTRATIONS_WRITE)
async def erase_client(request: web.Request) -> web.Response:
    client = await service.erase_for_clinic(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        client_id=path_id(request, "client_id"),
    )
    return json_tagged(client, client.version)


async def operator_erase_client(request: web.Request) -> web.Response:
    _require_admin(request)
    client = await service.erase_client(
        request.app[DB_POOL],
        group_id=path_id(request, "group_id"),
        client_id=path_id(request, "client_id"),
        clinic_id=None,
    )
    return json_tagged(client, client.version)
