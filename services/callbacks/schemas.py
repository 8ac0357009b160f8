"""What the callbacks API takes and returns."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from shared.events import PARTNER_EVENT_TYPES
from shared.pagination import Page
from shared.validation import Instant, OffsetDatetime

DeliveryStatus = Literal["pending", "succeeded", "failed"]
HealthState = Literal["unknown", "healthy", "failing", "alerting", "disabled"]


def _event_type(value: str) -> str:
    if value not in PARTNER_EVENT_TYPES:
        raise ValueError(f"unknown event type; one of: {', '.join(sorted(PARTNER_EVENT_TYPES))}")
    return value


EventType = Annotated[str, AfterValidator(_event_type)]
Url = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2048)]
Description = Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)]


class EndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Url
    description: Description = ""
    event_types: list[EventType] | None = Field(
        default=None, min_length=1, max_length=100, description="Absent: every event type"
    )
    clinic_ids: list[uuid.UUID] | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="Absent: every clinic the application holds a grant for",
    )
    rate_limit: int | None = Field(
        default=None, ge=1, le=10_000, description="At most this many deliveries per second"
    )
    ordered: bool = Field(
        default=False,
        description="Events of one resource arrive strictly in sequence order",
    )


class EndpointUpdate(BaseModel):
    """Fields to change; ``null`` for ``event_types``/``clinic_ids``/``rate_limit`` clears."""

    model_config = ConfigDict(extra="forbid")

    url: Url | None = None
    description: Description | None = None
    event_types: list[EventType] | None = Field(default=None, min_length=1, max_length=100)
    clinic_ids: list[uuid.UUID] | None = Field(default=None, min_length=1, max_length=1000)
    rate_limit: int | None = Field(default=None, ge=1, le=10_000)
    ordered: bool | None = None
    enabled: bool | None = Field(default=None, description="true re-enables a disabled endpoint")


class EndpointRead(BaseModel):
    id: uuid.UUID
    url: str
    description: str
    event_types: list[str] | None
    clinic_ids: list[uuid.UUID] | None
    rate_limit: int | None
    ordered: bool
    enabled: bool
    disabled_reason: str | None
    disabled_at: OffsetDatetime | None
    created_at: OffsetDatetime
    updated_at: OffsetDatetime


class EndpointCreated(EndpointRead):
    secret: str = Field(description="The signing secret; shown only here")


class EndpointPage(Page[EndpointRead]):
    pass


class SecretRotated(BaseModel):
    secret: str = Field(description="The new signing secret; shown only here")
    previous_valid_until: OffsetDatetime


class EndpointHealth(BaseModel):
    endpoint_id: uuid.UUID
    state: HealthState
    enabled: bool
    last_ping_at: OffsetDatetime | None
    last_ping_status: int | None
    last_ping_error: str | None
    consecutive_failures: int
    alerted: bool
    next_ping_at: OffsetDatetime | None
    last_success_at: OffsetDatetime | None
    failing_since: OffsetDatetime | None


class AttemptRead(BaseModel):
    id: int
    attempted_at: OffsetDatetime
    duration_ms: int
    status_code: int | None
    response_excerpt: str | None
    error: str | None
    trigger: Literal["scheduled", "replay", "test"]


class DeliveryRead(BaseModel):
    id: uuid.UUID
    endpoint_id: uuid.UUID
    event_id: uuid.UUID
    event_type: str
    aggregate: str | None
    sequence: int
    status: DeliveryStatus
    attempts: int
    next_attempt_at: OffsetDatetime | None
    last_status: int | None
    last_error: str | None
    created_at: OffsetDatetime
    updated_at: OffsetDatetime
    completed_at: OffsetDatetime | None


class DeliveryDetail(DeliveryRead):
    attempt_log: list[AttemptRead]


class DeliveryPage(Page[DeliveryRead]):
    pass


class DeliveryListQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: DeliveryStatus | None = None
    limit: int = Field(default=50, ge=1, le=200)
    cursor: str | None = None


class RecoverRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: Instant = Field(description="Failed deliveries of events since then are resent")


class RecoverResult(BaseModel):
    endpoint_id: uuid.UUID
    deliveries: int


class TestResult(BaseModel):
    delivery_id: uuid.UUID
    event_id: uuid.UUID
    succeeded: bool
    attempt: AttemptRead


class FeedQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after: str | None = Field(default=None, description="The next_cursor of the previous page")
    types: str | None = Field(default=None, description="Comma-separated event types")
    limit: int = Field(default=100, ge=1, le=500)


class FeedPage(BaseModel):
    items: list[dict[str, Any]] = Field(description="Event envelopes, oldest first")
    next_cursor: str | None = Field(
        description="Where to continue; kept when the page is empty, so a partner can poll"
    )
    has_more: bool
