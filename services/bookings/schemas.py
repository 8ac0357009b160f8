from __future__ import annotations

import uuid
from datetime import date, datetime, time
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.pagination import PageQuery
from shared.validation import AwareInstant, Email, Name, OffsetDatetime, rfc3339

ResourceType = Literal["practitioner", "service", "insurance", "client", "patient", "booking"]
Role = Literal["vet", "nurse", "other"]
BookingStatus = Literal["booked", "confirmed", "arrived", "completed", "cancelled", "no_show"]
ExternalId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Species = Annotated[
    str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=50)
]
Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]


def _iso(moment: datetime) -> str:
    return rfc3339(moment)


def _after(value: datetime, info: ValidationInfo) -> datetime:
    start = info.data.get("start")
    if start is not None and value <= start:
        raise ValueError("end must be after start")
    return value


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ListQuery(PageQuery):
    external_id: ExternalId | None = None
    active: bool | None = None


# --- clinic booking rules -------------------------------------------------------------------


class BookingSettingsRead(BaseModel):
    clinic_id: uuid.UUID
    time_zone: str
    slot_minutes: int
    min_lead_minutes: int


class BookingSettingsUpdate(_Input):
    slot_minutes: int | None = Field(default=None, ge=5, le=240)
    min_lead_minutes: int | None = Field(default=None, ge=0, le=10080)


# --- practitioners, services, insurances -----------------------------------------------------


class PractitionerCreate(_Input):
    name: Name
    role: Role = "vet"
    active: bool = True
    external_id: ExternalId | None = None


class PractitionerUpdate(_Input):
    name: Name | None = None
    role: Role | None = None
    active: bool | None = None


class PractitionerRead(BaseModel):
    id: uuid.UUID
    clinic_id: uuid.UUID
    name: str
    role: Role
    active: bool
    external_id: str | None = None
    created_at: datetime
    updated_at: datetime


class PractitionerPage(BaseModel):
    items: list[PractitionerRead]
    next_cursor: str | None = None


def _unique(ids: list[uuid.UUID]) -> list[uuid.UUID]:
    return list(dict.fromkeys(ids))


PractitionerIds = Annotated[list[uuid.UUID], AfterValidator(_unique), Field(max_length=200)]


class ServiceCreate(_Input):
    name: Name
    duration_minutes: int = Field(ge=5, le=1440)
    practitioner_ids: PractitionerIds = Field(default_factory=list)
    species: list[Species] | None = None
    active: bool = True
    external_id: ExternalId | None = None


class ServiceUpdate(_Input):
    name: Name | None = None
    duration_minutes: int | None = Field(default=None, ge=5, le=1440)
    practitioner_ids: PractitionerIds | None = None
    species: list[Species] | None = None
    active: bool | None = None


class ServiceRead(BaseModel):
    id: uuid.UUID
    clinic_id: uuid.UUID
    name: str
    duration_minutes: int
    practitioner_ids: list[uuid.UUID]
    species: list[str] | None
    active: bool
    external_id: str | None = None
    created_at: datetime
    updated_at: datetime


class ServicePage(BaseModel):
    items: list[ServiceRead]
    next_cursor: str | None = None


class InsuranceCreate(_Input):
    name: Name
    active: bool = True
    external_id: ExternalId | None = None


class InsuranceUpdate(_Input):
    name: Name | None = None
    active: bool | None = None


class InsuranceRead(BaseModel):
    id: uuid.UUID
    clinic_id: uuid.UUID
    name: str
    active: bool
    external_id: str | None = None
    created_at: datetime
    updated_at: datetime


class InsurancePage(BaseModel):
    items: list[InsuranceRead]
    next_cursor: str | None = None


# --- mappings -------------------------------------------------------------------------------


class MappingPut(_Input):
    resource_id: uuid.UUID


class MappingRead(BaseModel):
    resource_type: ResourceType
    external_id: str
    resource_id: uuid.UUID
    created_at: datetime
    updated_at: datetime


class MappingPage(BaseModel):
    items: list[MappingRead]
    next_cursor: str | None = None


class MappingQuery(PageQuery):
    resource_id: uuid.UUID | None = None


# --- schedules ------------------------------------------------------------------------------


class WorkingHoursRule(_Input):
    weekday: int = Field(ge=0, le=6, description="0 = Monday … 6 = Sunday")
    start: time
    end: time
    effective_from: date
    effective_to: date | None = None

    # Field validators (not a model validator) so that each error names its own field.
    @field_validator("start", "end")
    @classmethod
    def _local(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("working hours are local clinic times, without an offset")
        return value

    @field_validator("end")
    @classmethod
    def _after_start(cls, value: time, info: ValidationInfo) -> time:
        start = info.data.get("start")
        if start is not None and value <= start:
            raise ValueError("end must be after start")
        return value

    @field_validator("effective_to")
    @classmethod
    def _not_before_from(cls, value: date | None, info: ValidationInfo) -> date | None:
        first = info.data.get("effective_from")
        if value is not None and first is not None and value < first:
            raise ValueError("effective_to must not be before effective_from")
        return value


class WorkingHoursPut(_Input):
    rules: list[WorkingHoursRule] = Field(max_length=200)


class WorkingHoursRead(BaseModel):
    practitioner_id: uuid.UUID
    rules: list[WorkingHoursRule]


class TimeRange(_Input):
    start: Annotated[AwareInstant, PlainSerializer(_iso, return_type=str, when_used="json")]
    end: Annotated[AwareInstant, PlainSerializer(_iso, return_type=str, when_used="json")]

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, value: datetime, info: ValidationInfo) -> datetime:
        return _after(value, info)


class SlotsPut(_Input):
    """The whole day's slots; an empty list publishes the day as closed."""

    slots: list[TimeRange] = Field(max_length=500)


class SlotsRead(BaseModel):
    practitioner_id: uuid.UUID
    date: date
    slots: list[TimeRange]
    published_at: datetime


class BreakCreate(_Input):
    start: AwareInstant
    end: AwareInstant
    reason: Text | None = None

    @field_validator("end")
    @classmethod
    def _end_after_start(cls, value: datetime, info: ValidationInfo) -> datetime:
        return _after(value, info)


class BreakRead(BaseModel):
    id: uuid.UUID
    practitioner_id: uuid.UUID
    start: OffsetDatetime
    end: OffsetDatetime
    reason: str | None
    created_at: datetime


class BreakQuery(BaseModel):
    """The window of ``GET .../breaks`` (read by the handler as a :class:`TimeRange`)."""

    model_config = ConfigDict(populate_by_name=True)

    from_: AwareInstant = Field(alias="from")
    to: AwareInstant


class BreakPage(BaseModel):
    items: list[BreakRead]
    next_cursor: str | None = None


# --- availability ---------------------------------------------------------------------------


class AvailabilityQuery(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    service_id: uuid.UUID
    from_: AwareInstant = Field(alias="from")
    to: AwareInstant
    practitioner_id: uuid.UUID | None = None


class AvailableSlot(BaseModel):
    start: OffsetDatetime
    end: OffsetDatetime
    practitioner_id: uuid.UUID


class Availability(BaseModel):
    service_id: uuid.UUID
    time_zone: str
    slots: list[AvailableSlot]


# --- bookings -------------------------------------------------------------------------------


class ProspectOwner(_Input):
    first_name: Name
    last_name: Name
    email: Email | None = None
    phone: (
        Annotated[str, StringConstraints(strip_whitespace=True, min_length=5, max_length=32)] | None
    ) = None


class ProspectPet(_Input):
    name: Name
    species: Species
    breed: Name | None = None


class Prospect(_Input):
    """A new owner and pet, not yet registered, as given with the booking."""

    owner: ProspectOwner
    pet: ProspectPet


class BookingCreate(_Input):
    practitioner_id: uuid.UUID
    service_id: uuid.UUID
    start: AwareInstant
    end: AwareInstant | None = Field(
        default=None, description="Only for bookings pushed from a partner's own system"
    )
    client_id: uuid.UUID | None = None
    patient_id: uuid.UUID | None = None
    prospect: Prospect | None = None
    insurance_id: uuid.UUID | None = None
    notes: Text | None = None
    source: Literal["partner", "clinic"] = "partner"
    pushed: bool = Field(
        default=False,
        description="Made in the partner's own system and synchronised here: it may lie outside "
        "published availability (never over another booking)",
    )
    external_id: ExternalId | None = None

    @model_validator(mode="after")
    def _who(self) -> BookingCreate:
        if (self.client_id is None) == (self.prospect is None):
            raise ValueError("give exactly one of client_id or prospect")
        if self.patient_id is not None and self.client_id is None:
            raise ValueError("patient_id needs client_id")
        if self.end is not None and self.end <= self.start:
            raise ValueError("end must be after start")
        if self.end is not None and not self.pushed:
            raise ValueError("end may only be given for a pushed booking")
        return self


class BookingReschedule(_Input):
    start: AwareInstant
    practitioner_id: uuid.UUID | None = None


class BookingCancel(_Input):
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class BookingStatusChange(_Input):
    status: Literal["confirmed", "arrived", "completed", "no_show"]


class BookingRead(BaseModel):
    id: uuid.UUID
    clinic_id: uuid.UUID
    practitioner_id: uuid.UUID
    service_id: uuid.UUID
    start: OffsetDatetime
    end: OffsetDatetime
    status: BookingStatus
    source: Literal["partner", "clinic"]
    pushed: bool
    client_id: uuid.UUID | None
    patient_id: uuid.UUID | None
    prospect: dict[str, Any] | None
    insurance_id: uuid.UUID | None
    notes: str | None
    cancel_reason: str | None
    version: int
    external_id: str | None = None
    created_at: datetime
    updated_at: datetime


class BookingPage(BaseModel):
    items: list[BookingRead]
    next_cursor: str | None = None


class BookingQuery(PageQuery):
    from_: AwareInstant | None = Field(default=None, alias="from")
    to: AwareInstant | None = None
    practitioner_id: uuid.UUID | None = None
    status: BookingStatus | None = None
    external_id: ExternalId | None = None

    model_config = ConfigDict(populate_by_name=True)


# --- client search --------------------------------------------------------------------------


class ClientQuery(PageQuery):
    q: Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=100)]


class PatientSummary(BaseModel):
    id: uuid.UUID
    name: str
    species: str | None


class ClientSummary(BaseModel):
    id: uuid.UUID
    display_name: str
    email: str | None
    phone: str | None
    patients: list[PatientSummary]


class ClientPage(BaseModel):
    items: list[ClientSummary]
    next_cursor: str | None = None
