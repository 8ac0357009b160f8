from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shared.scopes import ClinicScope
from shared.validation import CountryCode, Email, Name, TimeZone

Environment = Literal["sandbox", "production"]
Status = Literal["pending", "approved", "suspended"]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GroupCreate(_Input):
    name: Name


class GroupRead(BaseModel):
    id: uuid.UUID
    name: str
    created_at: datetime


class ClinicCreate(_Input):
    group_id: uuid.UUID
    name: Name
    time_zone: TimeZone
    country: CountryCode = "GB"
    sandbox: bool = False


class ClinicRead(BaseModel):
    id: uuid.UUID
    group_id: uuid.UUID
    name: str
    time_zone: str
    country: str
    sandbox: bool
    created_at: datetime
    updated_at: datetime


class ClinicPage(BaseModel):
    items: list[ClinicRead]
    next_cursor: str | None = None


class PartnerCreate(_Input):
    name: Name
    contact_email: Email


class PartnerRead(BaseModel):
    id: uuid.UUID
    name: str
    contact_email: str
    created_at: datetime


class ApplicationCreate(_Input):
    name: Name
    environment: Environment = "sandbox"
    contact_email: Email
    tier: int = Field(default=0, ge=0, le=2)
    clinic_owned: bool = False
    dpa_signed: bool = False


class ApplicationUpdate(_Input):
    name: Name | None = None
    contact_email: Email | None = None
    tier: int | None = Field(default=None, ge=0, le=2)
    dpa_signed: bool | None = None


class ApplicationRead(BaseModel):
    id: uuid.UUID
    partner_id: uuid.UUID
    name: str
    client_id: str
    environment: Environment
    tier: int
    status: Status
    contact_email: str
    clinic_owned: bool
    dpa_signed: bool
    created_at: datetime
    updated_at: datetime


class ApplicationCredentials(ApplicationRead):
    """Returned once, at creation or secret rotation: the secret is never shown again."""

    client_secret: str
    previous_secret_expires_at: datetime | None = None


class GrantCreate(_Input):
    application_id: uuid.UUID
    clinic_id: uuid.UUID | None = None
    group_id: uuid.UUID | None = None
    scopes: list[ClinicScope] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_target(self) -> GrantCreate:
        if (self.clinic_id is None) == (self.group_id is None):
            raise ValueError("give exactly one of clinic_id or group_id")
        return self


class GrantRead(BaseModel):
    id: uuid.UUID
    application_id: uuid.UUID
    clinic_id: uuid.UUID | None
    group_id: uuid.UUID | None
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class GrantPage(BaseModel):
    items: list[GrantRead]
    next_cursor: str | None = None


Username = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=3, max_length=100, pattern=r"^[\w.@+-]+$"),
]


class StaffUserCreate(_Input):
    username: Username
    display_name: Name
    password: Annotated[str, StringConstraints(min_length=12, max_length=256)]
    role: Literal["staff", "vet", "admin"] = "staff"


class StaffUserRead(BaseModel):
    id: uuid.UUID
    clinic_id: uuid.UUID
    username: str
    display_name: str
    role: str
    active: bool
    created_at: datetime


class SigningKeyRead(BaseModel):
    kid: str
    algorithm: str
    created_at: datetime
    activates_at: datetime
    retires_at: datetime | None


# --- OAuth -----------------------------------------------------------------------------------


class TokenForm(BaseModel):
    """RFC 6749 §4.4 (client_credentials) and §4.3 (password, for staff user tokens)."""

    grant_type: str
    scope: str | None = None
    clinic_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    username: str | None = None
    password: str | None = None


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int
    scope: str
    clinic_id: uuid.UUID | None = None


class TokenForms(BaseModel):
    token: str
    token_type_hint: str | None = None


class IntrospectionResponse(BaseModel):
    """RFC 7662 §2.2: only ``active`` for a token that is not (or no longer) valid."""

    model_config = ConfigDict(extra="allow")

    active: bool


class ServerMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    issuer: str
    token_endpoint: str


class Jwks(BaseModel):
    keys: list[dict[str, Any]]


class AccessQuery(BaseModel):
    """A page of the access snapshot; with neither field, the whole snapshot at once (what
    copies of callbacks from before paging ask for)."""

    limit: int | None = Field(default=None, ge=1, le=5000)
    after: str | None = None
