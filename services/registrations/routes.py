"""The registrations service's URL map, readable top to bottom."""

from __future__ import annotations

from services.registrations import handlers as h
from services.registrations import schemas as s
from shared.api import Api
from shared.scopes import CLIENTS_READ, REGISTRATIONS_WRITE

C = "/v1/clinics/{clinic_id}"
R = C + "/registrations"
CLIENT = R + "/clients/{client_id}"
PATIENT = C + "/patients/{patient_id}"
G = "/v1/groups/{group_id}"
WRITE = (REGISTRATIONS_WRITE,)
READ = (CLIENTS_READ,)


def build_api() -> Api:
    api = Api(
        "Vetgate registrations",
        description="Registration form lookups, duplicate checks and client + pet onboarding. "
        "Clients belong to the clinic's group: registered at one clinic, known at all of them.",
    )
    form = ("registration form",)
    api.add(
        "GET",
        C + "/registration-form",
        h.get_registration_form,
        "Everything needed to render the clinic's registration form",
        response=s.RegistrationForm,
        scopes=WRITE,
        tags=form,
        errors=(403,),
    )

    regs = ("registrations",)
    api.add(
        "POST",
        R + "/match",
        h.match_client,
        "Does this client exist? none, possible or exact (the id only with clients:read)",
        body=s.MatchRequest,
        response=s.MatchResult,
        scopes=WRITE,
        tags=regs,
        errors=(403,),
    )
    api.add(
        "POST",
        R,
        h.register,
        "Register a client with their pets (Idempotency-Key; 409 with the id of a duplicate)",
        body=s.RegistrationCreate,
        response=s.ClientRead,
        status=201,
        scopes=WRITE,
        tags=regs,
        errors=(403, 409),
    )
    api.add(
        "GET",
        R + "/clients",
        h.list_clients,
        "The group's clients in sync order (erased ones marked)",
        query=s.ClientListQuery,
        response=s.ClientPage,
        scopes=READ,
        tags=regs,
        errors=(403,),
    )
    api.add(
        "GET",
        CLIENT,
        h.get_client,
        "A client with their pets and consents (ETag)",
        response=s.ClientRead,
        scopes=READ,
        tags=regs,
        errors=(403, 404),
    )
    api.add(
        "PATCH",
        CLIENT,
        h.update_client,
        "Change contact details or consents (If-Match)",
        body=s.ClientUpdate,
        response=s.ClientRead,
        scopes=WRITE,
        tags=regs,
        errors=(403, 404, 409, 412),
    )
    api.add(
        "POST",
        CLIENT + "/patients",
        h.add_patient,
        "Add a pet (Idempotency-Key)",
        body=s.PatientCreate,
        response=s.PatientRead,
        status=201,
        scopes=WRITE,
        tags=regs,
        errors=(403, 404, 409),
    )
    api.add(
        "POST",
        CLIENT + "/erase",
        h.erase_client,
        "Erase the client's personal data for good; client.erased tells everyone to forget it",
        response=s.ClientRead,
        scopes=WRITE,
        tags=regs,
        errors=(403, 404),
    )

    pets = ("patients",)
    api.add(
        "GET",
        PATIENT,
        h.get_patient,
        "A pet (ETag)",
        response=s.PatientRead,
        scopes=READ,
        tags=pets,
        errors=(403, 404),
    )
    api.add(
        "PATCH",
        PATIENT,
        h.update_patient,
        "Change a pet's details (If-Match)",
        body=s.PatientUpdate,
        response=s.PatientRead,
        scopes=WRITE,
        tags=pets,
        errors=(403, 404, 409, 412),
    )

    operator = ("operator",)
    api.add(
        "GET",
        G + "/registration-form",
        h.get_group_form,
        "A group's registration form lists (operator)",
        response=s.GroupFormRead,
        tags=operator,
        errors=(422,),
    )
    api.add(
        "PATCH",
        G + "/registration-form",
        h.change_group_form,
        "Replace some of a group's lists; null returns a list to the default (operator)",
        body=s.GroupFormUpdate,
        response=s.GroupFormRead,
        tags=operator,
    )
    api.add(
        "DELETE",
        G + "/registration-form",
        h.reset_group_form,
        "Every list of the group back to the defaults (operator)",
        response=s.GroupFormRead,
        tags=operator,
        errors=(422,),
    )
    api.add(
        "POST",
        G + "/clients/{client_id}/erase",
        h.operator_erase_client,
        "Erase a client of the group (operator)",
        response=s.ClientRead,
        tags=operator,
        errors=(404, 422),
    )
    return api
