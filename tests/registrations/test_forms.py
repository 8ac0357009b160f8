"""The registration form: default lists for every group, an operator's changes for one group,
and registrations checked against the lists of the clinic's group."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import Admin, TokenFactory
from tests.registrations.conftest import (
    Operator,
    Registrar,
    assert_problem,
    field_errors,
    make_registrar,
    narrowed,
    pet,
    registration,
    sibling,
)


async def test_default_form_has_every_list_a_partner_renders(registrar: Registrar) -> None:
    _, form, _ = await registrar.call("GET", "/registration-form", expect=200)
    assert form["clinic_id"] == registrar.clinic_id
    assert form["group_id"] == registrar.group_id
    assert form["default_country"] == "GB"
    assert {"Mr", "Mrs", "Ms", "Dr", "Mx"} <= set(form["titles"])
    assert form["countries"][0] == {"code": "GB", "name": "United Kingdom"}
    species = {s["code"]: s for s in form["species"]}
    assert {"dog", "cat", "rabbit", "other"} <= set(species)
    assert "Labrador Retriever" in species["dog"]["breeds"]
    assert "Maine Coon" in species["cat"]["breeds"]
    assert species["other"]["breeds"] == []
    assert [s["code"] for s in form["sexes"]] == ["male", "female", "unknown"]
    assert form["referral_sources"]
    consents = {c["code"]: c for c in form["consents"]}
    assert set(consents) == {"reminders", "marketing"}
    assert all(c["text"] and c["title"] and c["required"] is False for c in consents.values())
    fields = {f["name"]: f["required"] for f in form["fields"]}
    for name in ("client.first_name", "client.last_name", "client.email", "client.phone"):
        assert fields[name] is True, name
    assert fields["patient.name"] is True
    assert fields["patient.species"] is True
    assert fields["patient.microchip"] is False
    assert fields["client.address.postcode"] is False
    assert form["updated_at"] is None


async def test_the_form_follows_the_clinics_country(
    admin: Admin, get_token: TokenFactory, registrar: Registrar
) -> None:
    us = await sibling(admin, get_token, registrar, country="US", time_zone="America/New_York")
    _, form, _ = await us.call("GET", "/registration-form", expect=200)
    assert form["default_country"] == "US"
    assert form["countries"][0]["code"] == "US"


async def test_the_form_needs_registrations_write_and_the_tokens_clinic(
    get_token: TokenFactory,
    registrar: Registrar,
    admin: Admin,
    http: aiohttp.ClientSession,
    registrations_url: str,
) -> None:
    reader = await narrowed(get_token, registrar, "clients:read")
    status, problem, _ = await reader.call("GET", "/registration-form")
    assert_problem(status, problem, 403, "insufficient-scope")
    other = await make_registrar(admin, get_token, http, registrations_url)
    other.tenant.clinic_id = registrar.clinic_id  # the path names a clinic the token is not for
    status, problem, _ = await other.call("GET", "/registration-form")
    assert_problem(status, problem, 403, "clinic-not-granted")
    status, problem, _ = await registrar.call(
        "GET", "/registration-form", headers={"Authorization": "Bearer nope"}
    )
    assert_problem(status, problem, 401, "unauthorized")


async def test_an_operator_changes_one_groups_lists(
    operator: Operator,
    registrar: Registrar,
    admin: Admin,
    get_token: TokenFactory,
    http: aiohttp.ClientSession,
    registrations_url: str,
) -> None:
    group = f"/v1/groups/{registrar.group_id}/registration-form"
    _, before, _ = await registrar.call("GET", "/registration-form", expect=200)
    _, stored = await operator.call("GET", group, expect=200)
    assert stored["customised"] == []
    _, changed = await operator.call(
        "PATCH",
        group,
        {
            "titles": ["Mr", "Ms", "Sir"],
            "species": [
                {"code": "dog", "name": "Dog", "breeds": ["Lurcher", "Saluki"]},
                {"code": "alpaca", "name": "Alpaca", "breeds": ["Huacaya", "Suri"]},
            ],
            "consents": [
                {"code": "terms", "title": "Terms", "text": "I accept the terms.", "required": True}
            ],
            "required_fields": ["client.address.postcode", "patient.sex"],
        },
        expect=200,
    )
    assert changed["customised"] == ["consents", "required_fields", "species", "titles"]
    assert changed["titles"] == ["Mr", "Ms", "Sir"]
    # The fields no form can drop stay required.
    assert "client.first_name" in changed["required_fields"]
    assert "client.email" not in changed["required_fields"]

    _, form, _ = await registrar.call("GET", "/registration-form", expect=200)
    assert form["titles"] == ["Mr", "Ms", "Sir"]
    assert [s["code"] for s in form["species"]] == ["dog", "alpaca"]
    assert form["countries"] == before["countries"]  # untouched lists keep the defaults
    fields = {f["name"]: f["required"] for f in form["fields"]}
    assert fields["client.address.postcode"] is True
    assert fields["patient.sex"] is True
    assert fields["client.email"] is False
    assert form["updated_at"] is not None

    # Another group still has the defaults, and so do the other clinics of a second group.
    other = await make_registrar(admin, get_token, http, registrations_url)
    _, theirs, _ = await other.call("GET", "/registration-form", expect=200)
    assert theirs["titles"] == before["titles"]
    # A sibling clinic of the changed group sees the group's lists.
    near = await sibling(admin, get_token, registrar)
    _, same, _ = await near.call("GET", "/registration-form", expect=200)
    assert same["titles"] == ["Mr", "Ms", "Sir"]

    # Null returns one list to the default; DELETE returns them all.
    _, partly = await operator.call("PATCH", group, {"titles": None}, expect=200)
    assert partly["titles"] == before["titles"]
    assert "titles" not in partly["customised"]
    _, reset = await operator.call("DELETE", group, expect=200)
    assert reset["customised"] == []
    _, form, _ = await registrar.call("GET", "/registration-form", expect=200)
    assert form["species"] == before["species"]


async def test_registrations_are_checked_against_the_groups_lists(
    operator: Operator, registrar: Registrar
) -> None:
    await operator.call(
        "PATCH",
        f"/v1/groups/{registrar.group_id}/registration-form",
        {
            "species": [{"code": "alpaca", "name": "Alpaca", "breeds": ["Huacaya", "Suri"]}],
            "consents": [
                {"code": "terms", "title": "Terms", "text": "I accept the terms.", "required": True}
            ],
            "required_fields": ["client.address.postcode", "patient.sex"],
        },
        expect=200,
    )
    body = registration(email=None, phone=None, pets=[pet("Rex", "dog")])
    status, problem, _ = await registrar.register(body, expect=None)
    assert_problem(status, problem, 422, "validation-error")
    errors = field_errors(problem)
    assert set(errors) == {
        "body.client.address.postcode",
        "body.patients.0.species",
        "body.patients.0.sex",
        "body.consents.terms",
    }, errors
    assert "alpaca" in errors["body.patients.0.species"]

    good = registration(
        email=None,
        phone=None,
        address={"postcode": "sw1a1aa"},
        pets=[pet("Cusco", "Alpaca", breed="suri", sex="female")],
        consents={"terms": True},
    )
    _, client, _ = await registrar.register(good)
    assert client["patients"][0]["species"] == "alpaca"
    assert client["patients"][0]["breed"] == "Suri"  # the form's spelling
    assert client["address"]["postcode"] == "SW1A 1AA"
    assert client["address"]["country"] == "GB"
    assert [(c["code"], c["granted"], c["text"]) for c in client["consents"]] == [
        ("terms", True, "I accept the terms.")
    ]


async def test_operator_endpoints_need_the_admin_token(
    operator: Operator, registrar: Registrar
) -> None:
    group = f"/v1/groups/{registrar.group_id}/registration-form"
    for method, body in (("GET", None), ("PATCH", {"titles": ["Mr"]}), ("DELETE", None)):
        status, problem = await operator.call(method, group, body, token="not-the-admin-token")
        assert_problem(status, problem, 401, "unauthorized")
        status, problem = await operator.call(method, group, body, token=registrar.token)
        assert_problem(status, problem, 401, "unauthorized")
    _, form, _ = await registrar.call("GET", "/registration-form", expect=200)
    assert "Mrs" in form["titles"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"titles": []}, "body.titles"),
        ({"titles": ["Mr", "MR"]}, "body"),
        ({"countries": [{"code": "GBR", "name": "UK"}]}, "body.countries.0.code"),
        ({"sexes": [{"code": "Male!", "name": "Male"}]}, "body.sexes.0.code"),
        (
            {"species": [{"code": "dog", "name": "Dog", "breeds": ["Pug", "pug"]}]},
            "body.species.0",
        ),
        ({"species": [{"code": "dog", "name": "Dog"}, {"code": "dog", "name": "D"}]}, "body"),
        ({"consents": [{"code": "x", "title": "X", "text": ""}]}, "body.consents.0.text"),
        ({"required_fields": ["client.shoe_size"]}, "body.required_fields.0"),
        ({"colours": ["red"]}, "body.colours"),
    ],
)
async def test_operator_changes_are_validated_field_by_field(
    operator: Operator, registrar: Registrar, body: dict[str, object], field: str
) -> None:
    status, problem = await operator.call(
        "PATCH", f"/v1/groups/{registrar.group_id}/registration-form", body
    )
    assert_problem(status, problem, 422, "validation-error")
    assert field in field_errors(problem), problem


async def test_operator_paths_with_a_malformed_group_id(operator: Operator) -> None:
    status, problem = await operator.call("GET", "/v1/groups/not-a-uuid/registration-form")
    assert_problem(status, problem, 422, "validation-error")
    assert "path.group_id" in field_errors(problem)
