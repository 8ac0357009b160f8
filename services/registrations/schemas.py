from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from services.registrations import normalise
from shared.pagination import PageQuery
from shared.validation import Email, Name

Code = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_]{0,39}$")]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Answer = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Line = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Phone = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=40)]
Postcode = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=16)]
Microchip = Annotated[str, AfterValidator(normalise.microchip)]


def _country(value: str) -> str:
    code = value.strip().upper()
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        raise ValueError("not an ISO 3166 alpha-2 country code")
    return code


Country = Annotated[str, AfterValidator(_country)]
MatchResultKind = Literal["none", "possible", "exact"]

#: Form fields whose requirement a group may set (``client.*`` once, ``patient.*`` per pet).
FieldName = Literal[
    "client.title",
    "client.first_name",
    "client.last_name",
    "client.email",
    "client.phone",
    "client.address.line1",
    "client.address.line2",
    "client.address.city",
    "client.address.region",
    "client.address.postcode",
    "client.address.country",
    "client.referral_source",
    "patient.name",
    "patient.species",
    "patient.breed",
    "patient.sex",
    "patient.date_of_birth",
    "patient.neutered",
    "patient.microchip",
]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _unique(values: list[str], what: str) -> list[str]:
    seen: set[str] = set()
    for value in values:
        key = normalise.choice_key(value)
        if key in seen:
            raise ValueError(f"{what} {value!r} is listed twice")
        seen.add(key)
    return values


# --- the registration form's lists -----------------------------------------------------------


class Choice(_Input):
    code: Code
    name: Label


class CountryChoice(_Input):
    code: Country
    name: Label


class SpeciesChoice(_Input):
    code: Code
    name: Label
    breeds: list[Label] = Field(
        default_factory=list,
        max_length=500,
        description="The breeds a pet of this species may have; empty: breed is not asked",
    )

    @model_validator(mode="after")
    def _distinct_breeds(self) -> SpeciesChoice:
        _unique(self.breeds, "breed")
        return self


class ConsentItem(_Input):
    code: Code
    title: Label
    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
    required: bool = Field(
        default=False, description="Registration is refused unless this consent is given"
    )


def _codes_unique(
    items: list[Choice] | list[CountryChoice] | list[SpeciesChoice] | list[ConsentItem],
) -> None:
    _unique([i.code for i in items], "code")


class FormLists(BaseModel):
    """The lists a group's registration form offers; defaults unless the group changed them."""

    titles: list[str]
    countries: list[CountryChoice]
    species: list[SpeciesChoice]
    sexes: list[Choice]
    referral_sources: list[Choice]
    consents: list[ConsentItem]
    required_fields: list[FieldName]


class GroupFormUpdate(_Input):
    """Replace some of a group's lists; a list set to null goes back to the default."""

    titles: Annotated[list[Label], Field(min_length=1, max_length=50)] | None = None
    countries: Annotated[list[CountryChoice], Field(min_length=1, max_length=300)] | None = None
    species: Annotated[list[SpeciesChoice], Field(min_length=1, max_length=100)] | None = None
    sexes: Annotated[list[Choice], Field(min_length=1, max_length=20)] | None = None
    referral_sources: Annotated[list[Choice], Field(max_length=100)] | None = None
    consents: Annotated[list[ConsentItem], Field(max_length=20)] | None = None
    required_fields: Annotated[list[FieldName], Field(max_length=50)] | None = None

    @model_validator(mode="after")
    def _distinct(self) -> GroupFormUpdate:
        if self.titles is not None:
            _unique(self.titles, "title")
        for items in (self.countries, self.species, self.sexes, self.referral_sources):
            if items is not None:
                _codes_unique(items)
        if self.consents is not None:
            _codes_unique(self.consents)
        return self


class GroupFormRead(FormLists):
    group_id: uuid.UUID
    customised: list[str] = Field(description="The lists this group has changed from the default")
    updated_at: datetime | None


class FormField(BaseModel):
    name: FieldName
    required: bool


class RegistrationForm(BaseModel):
    """Everything a partner needs to render the clinic's registration form."""

    clinic_id: uuid.UUID
    group_id: uuid.UUID
    default_country: str = Field(
        description="The clinic's country: national phone numbers are read in it, and so are "
        "postcodes of an address that names no country"
    )
    titles: list[str]
    countries: list[CountryChoice]
    species: list[SpeciesChoice]
    sexes: list[Choice]
    referral_sources: list[Choice]
    consents: list[ConsentItem]
    fields: list[FormField]
    updated_at: datetime | None


# --- clients and patients --------------------------------------------------------------------


class AddressIn(_Input):
    line1: Line | None = None
    line2: Line | None = None
    city: Line | None = None
    region: Line | None = None
    postcode: Postcode | None = None
    country: Country | None = Field(
        default=None, description="ISO 3166 alpha-2; the clinic's country when left out"
    )


class ClientIn(_Input):
    title: Answer | None = None
    first_name: Name
    last_name: Name
    email: Email | None = None
    phone: Phone | None = None
    address: AddressIn | None = None
    referral_source: Answer | None = None


class PatientCreate(_Input):
    name: Name
    species: Answer
    breed: Answer | None = None
    sex: Answer | None = None
    date_of_birth: date | None = None
    neutered: bool | None = None
    microchip: Microchip | None = None


Consents = Annotated[dict[Code, bool], Field(max_length=20)]


class RegistrationCreate(_Input):
    client: ClientIn
    patients: Annotated[list[PatientCreate], Field(min_length=1, max_length=20)]
    consents: Consents = Field(
        default_factory=dict, description="Consent code → given; codes from the form"
    )


class ClientUpdate(_Input):
    """Contact details to change; a field set to null is removed (unless the form requires it)."""

    title: Answer | None = None
    first_name: Name | None = None
    last_name: Name | None = None
    email: Email | None = None
    phone: Phone | None = None
    address: AddressIn | None = Field(default=None, description="Replaces the whole address")
    referral_source: Answer | None = None
    consents: Consents | None = Field(default=None, description="Consents to record now")


class PatientUpdate(_Input):
    name: Name | None = None
    species: Answer | None = None
    breed: Answer | None = None
    sex: Answer | None = None
    date_of_birth: date | None = None
    neutered: bool | None = None
    microchip: Microchip | None = None


class AddressRead(BaseModel):
    line1: str | None
    line2: str | None
    city: str | None
    region: str | None
    postcode: str | None
    country: str | None


class ConsentRead(BaseModel):
    code: str
    granted: bool
    text: str
    recorded_at: datetime


class PatientRead(BaseModel):
    id: uuid.UUID
    client_id: uuid.UUID
    name: str | None
    species: str
    breed: str | None
    sex: str | None
    date_of_birth: date | None
    neutered: bool | None
    microchip: str | None
    version: int
    created_at: datetime
    updated_at: datetime


class ClientRead(BaseModel):
    id: uuid.UUID
    group_id: uuid.UUID
    registered_clinic_id: uuid.UUID
    title: str | None
    first_name: str | None
    last_name: str | None
    email: str | None
    phone: str | None = Field(description="E.164")
    address: AddressRead | None
    referral_source: str | None
    consents: list[ConsentRead]
    patients: list[PatientRead]
    erased: bool
    erased_at: datetime | None
    version: int
    created_at: datetime
    updated_at: datetime


class ClientPage(BaseModel):
    items: list[ClientRead]
    next_cursor: str | None = None


class ClientListQuery(PageQuery):
    limit: int = Field(default=50, ge=1, le=100)


# --- does this client exist? -----------------------------------------------------------------


class MatchRequest(_Input):
    email: Email | None = None
    phone: Phone | None = None
    first_name: Name | None = None
    last_name: Name | None = None
    postcode: Postcode | None = None

    @model_validator(mode="after")
    def _something(self) -> MatchRequest:
        if self.email is None and self.phone is None and self.last_name is None:
            raise ValueError("give at least one of email, phone or last_name")
        return self


class MatchResult(BaseModel):
    result: MatchResultKind = Field(
        description="exact: registering would be refused as a duplicate; possible: someone "
        "similar is registered, ask before registering; none: no one alike"
    )
    client_id: uuid.UUID | None = Field(
        default=None, description="Only for an exact match, and only with clients:read"
    )
