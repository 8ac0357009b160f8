"""HTTP only: authenticate, parse, call the rules, render."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date

from aiohttp import web
from pydantic import BaseModel, ValidationError

from services.bookings import catalogue, schedules, service
from services.bookings.keys import AVAILABILITY_CACHE, DIRECTORY
from services.bookings.schemas import (
    AvailabilityQuery,
    BookingCancel,
    BookingCreate,
    BookingQuery,
    BookingReschedule,
    BookingSettingsUpdate,
    BookingStatusChange,
    BreakCreate,
    ClientQuery,
    ListQuery,
    MappingPut,
    MappingQuery,
    SlotsPut,
    TimeRange,
    WorkingHoursPut,
)
from shared.errors import FieldError, ValidationProblem
from shared.keys import DB_POOL
from shared.scopes import BOOKINGS_READ, BOOKINGS_WRITE, CLIENTS_READ
from shared.tokens import PRINCIPAL, requires
from shared.validation import EARLIEST, LATEST
from shared.web import idempotency_key, json_model, json_tagged, parse_body, parse_query, path_id

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
RESOURCE_TYPES = ("practitioner", "service", "insurance", "client", "patient", "booking")


def _clinic(request: web.Request) -> uuid.UUID:
    return path_id(request, "clinic_id")


def _app(request: web.Request) -> uuid.UUID:
    return request[PRINCIPAL].application_id


def _day(request: web.Request) -> date:
    value = request.match_info["date"]
    try:
        # fromisoformat also takes 20270328 and 2027-W12-7: one day, one URL.
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
            raise ValueError(value)
        day = date.fromisoformat(value)
    except ValueError:
        raise ValidationProblem([FieldError("path.date", "Not a date (YYYY-MM-DD)")]) from None
    # The day's bounds in the clinic zone reach into the days either side.
    if not EARLIEST.date() <= day <= LATEST.date():
        raise ValidationProblem([FieldError("path.date", "Must lie between the years 2 and 9998")])
    return day


def _external_id(request: web.Request) -> str:
    value = request.match_info["external_id"]
    if not 1 <= len(value) <= 200 or "\x00" in value:
        raise ValidationProblem([FieldError("path.external_id", "1 to 200 characters, not NUL")])
    return value


def _resource_type(request: web.Request) -> str:
    value = request.match_info["resource_type"]
    if value not in RESOURCE_TYPES:
        raise ValidationProblem(
            [FieldError("path.resource_type", f"One of: {', '.join(RESOURCE_TYPES)}")]
        )
    return value


# --- clinic booking rules ---------------------------------------------------------------------


@requires(BOOKINGS_READ)
async def get_settings(request: web.Request) -> web.Response:
    return json_model(await catalogue.get_settings(request.app[DIRECTORY], _clinic(request)))


@requires(BOOKINGS_WRITE)
async def update_settings(request: web.Request) -> web.Response:
    data = await parse_body(request, BookingSettingsUpdate)
    settings = await catalogue.update_settings(
        request.app[DB_POOL], request.app[DIRECTORY], _clinic(request), data
    )
    return json_model(settings)


# --- practitioners, services, insurances (one shape for all three) ----------------------------


@dataclass(frozen=True)
class ResourceHandlers:
    create: Handler
    update: Handler
    deactivate: Handler
    get: Handler
    list: Handler


def resource_handlers(
    resource_type: str,
    create_model: type[BaseModel],
    update_model: type[BaseModel],
    page_model: type[BaseModel],
) -> ResourceHandlers:
    """The five handlers of a practitioner-like resource."""
    plural = resource_type + "s"

    @requires(BOOKINGS_WRITE)
    async def create(request: web.Request) -> web.Response:
        data = await parse_body(request, create_model)
        model = await catalogue.create_resource(
            request.app[DB_POOL],
            request.app[DIRECTORY],
            resource_type=resource_type,
            clinic_id=_clinic(request),
            app_id=_app(request),
            data=data,  # type: ignore[arg-type]
        )
        location = f"{request.path.rstrip('/')}/{model.id}"  # type: ignore[attr-defined]
        return json_model(model, status=201, headers={"Location": location})

    @requires(BOOKINGS_WRITE)
    async def update(request: web.Request) -> web.Response:
        data = await parse_body(request, update_model)
        model = await catalogue.update_resource(
            request.app[DB_POOL],
            resource_type=resource_type,
            clinic_id=_clinic(request),
            resource_id=path_id(request, "resource_id"),
            app_id=_app(request),
            data=data,  # type: ignore[arg-type]
        )
        return json_model(model)

    @requires(BOOKINGS_WRITE)
    async def deactivate(request: web.Request) -> web.Response:
        model = await catalogue.update_resource(
            request.app[DB_POOL],
            resource_type=resource_type,
            clinic_id=_clinic(request),
            resource_id=path_id(request, "resource_id"),
            app_id=_app(request),
            data=update_model.model_validate({"active": False}),  # type: ignore[arg-type]
        )
        return json_model(model)

    @requires(BOOKINGS_READ)
    async def get(request: web.Request) -> web.Response:
        model = await catalogue.get_resource(
            request.app[DB_POOL],
            resource_type=resource_type,
            clinic_id=_clinic(request),
            resource_id=path_id(request, "resource_id"),
            app_id=_app(request),
        )
        return json_model(model)

    @requires(BOOKINGS_READ)
    async def list_(request: web.Request) -> web.Response:
        query = parse_query(request, ListQuery)
        items, cursor = await catalogue.list_resources(
            request.app[DB_POOL],
            resource_type=resource_type,
            clinic_id=_clinic(request),
            app_id=_app(request),
            query=query,
        )
        return json_model(page_model.model_validate({"items": items, "next_cursor": cursor}))

    for handler, verb in (
        (create, "create"),
        (update, "update"),
        (deactivate, "deactivate"),
        (get, "get"),
        (list_, "list"),
    ):
        handler.__name__ = f"{verb}_{resource_type if verb != 'list' else plural}"
    return ResourceHandlers(create, update, deactivate, get, list_)


# --- mappings ---------------------------------------------------------------------------------


@requires(BOOKINGS_WRITE)
async def put_mapping(request: web.Request) -> web.Response:
    data = await parse_body(request, MappingPut)
    external_id = _external_id(request)
    mapping, created = await catalogue.put_mapping(
        request.app[DB_POOL],
        clinic_id=_clinic(request),
        app_id=_app(request),
        resource_type=_resource_type(request),
        external_id=external_id,
        resource_id=data.resource_id,
    )
    return json_model(mapping, status=201 if created else 200)


@requires(BOOKINGS_READ)
async def get_mapping(request: web.Request) -> web.Response:
    mapping = await catalogue.get_mapping(
        request.app[DB_POOL],
        clinic_id=_clinic(request),
        app_id=_app(request),
        resource_type=_resource_type(request),
        external_id=_external_id(request),
    )
    return json_model(mapping)


@requires(BOOKINGS_WRITE)
async def delete_mapping(request: web.Request) -> web.Response:
    await catalogue.delete_mapping(
        request.app[DB_POOL],
        clinic_id=_clinic(request),
        app_id=_app(request),
        resource_type=_resource_type(request),
        external_id=_external_id(request),
    )
    return web.Response(status=204)


@requires(BOOKINGS_READ)
async def list_mappings(request: web.Request) -> web.Response:
    page = await catalogue.list_mappings(
        request.app[DB_POOL],
        clinic_id=_clinic(request),
        app_id=_app(request),
        resource_type=_resource_type(request),
        query=parse_query(request, MappingQuery),
    )
    return json_model(page)


# --- schedules --------------------------------------------------------------------------------


@requires(BOOKINGS_WRITE)
async def put_working_hours(request: web.Request) -> web.Response:
    data = await parse_body(request, WorkingHoursPut)
    hours = await schedules.replace_working_hours(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        practitioner_id=path_id(request, "practitioner_id"),
        data=data,
    )
    return json_model(hours)


@requires(BOOKINGS_READ)
async def get_working_hours(request: web.Request) -> web.Response:
    hours = await schedules.get_working_hours(
        request.app[DB_POOL],
        clinic_id=_clinic(request),
        practitioner_id=path_id(request, "practitioner_id"),
    )
    return json_model(hours)


@requires(BOOKINGS_WRITE)
async def put_slots(request: web.Request) -> web.Response:
    data = await parse_body(request, SlotsPut)
    day = await schedules.replace_day(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        practitioner_id=path_id(request, "practitioner_id"),
        day=_day(request),
        data=data,
    )
    return json_model(day)


@requires(BOOKINGS_READ)
async def get_slots(request: web.Request) -> web.Response:
    day = await schedules.get_day(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        practitioner_id=path_id(request, "practitioner_id"),
        day=_day(request),
    )
    return json_model(day)


@requires(BOOKINGS_WRITE)
async def create_break(request: web.Request) -> web.Response:
    data = await parse_body(request, BreakCreate)
    created = await schedules.create_break(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        practitioner_id=path_id(request, "practitioner_id"),
        data=data,
    )
    return json_model(created, status=201)


@requires(BOOKINGS_WRITE)
async def delete_break(request: web.Request) -> web.Response:
    await schedules.delete_break(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        practitioner_id=path_id(request, "practitioner_id"),
        break_id=path_id(request, "break_id"),
    )
    return web.Response(status=204)


def _breaks_window(request: web.Request) -> TimeRange:
    """``from`` and ``to`` as a range; errors name the query parameters, not the model's fields."""
    try:
        return TimeRange.model_validate(
            {"start": request.query.get("from"), "end": request.query.get("to")}
        )
    except ValidationError as exc:
        # The range's own check (end after start) has no location: it is the ``to`` that is wrong.
        fields: dict[tuple[int | str, ...], str] = {
            ("start",): "query.from",
            ("end",): "query.to",
            (): "query.to",
        }
        raise ValidationProblem(
            [
                FieldError(fields.get(tuple(e["loc"]), "query"), e["msg"])
                for e in exc.errors(include_url=False)
            ]
        ) from None


@requires(BOOKINGS_READ)
async def list_breaks(request: web.Request) -> web.Response:
    span = _breaks_window(request)
    items = await schedules.list_breaks(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        practitioner_id=path_id(request, "practitioner_id"),
        start=span.start,
        end=span.end,
    )
    return web.json_response({"items": [i.model_dump(mode="json") for i in items]})


@requires(BOOKINGS_READ)
async def search_availability(request: web.Request) -> web.Response:
    query = parse_query(request, AvailabilityQuery)
    body = await schedules.search(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        request.app[AVAILABILITY_CACHE],
        clinic_id=_clinic(request),
        query=query,
    )
    return web.Response(text=body, content_type="application/json")


# --- bookings ---------------------------------------------------------------------------------


@requires(BOOKINGS_WRITE)
async def create_booking(request: web.Request) -> web.Response:
    data = await parse_body(request, BookingCreate)
    booking, created = await service.create_booking(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        app_id=_app(request),
        data=data,
        idempotency_key=idempotency_key(request),
    )
    response = json_tagged(booking, booking.version, status=201)
    response.headers["Location"] = f"{request.path.rstrip('/')}/{booking.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@requires(BOOKINGS_READ)
async def get_booking(request: web.Request) -> web.Response:
    booking = await service.get_booking(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        app_id=_app(request),
        booking_id=path_id(request, "booking_id"),
    )
    return json_tagged(booking, booking.version)


@requires(BOOKINGS_READ)
async def list_bookings(request: web.Request) -> web.Response:
    page = await service.list_bookings(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        app_id=_app(request),
        query=parse_query(request, BookingQuery),
    )
    return json_model(page)


@requires(BOOKINGS_WRITE)
async def reschedule_booking(request: web.Request) -> web.Response:
    data = await parse_body(request, BookingReschedule)
    booking = await service.reschedule(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        app_id=_app(request),
        booking_id=path_id(request, "booking_id"),
        data=data,
        if_match=request.headers.get("If-Match"),
    )
    return json_tagged(booking, booking.version)


@requires(BOOKINGS_WRITE)
async def cancel_booking(request: web.Request) -> web.Response:
    data = await parse_body(request, BookingCancel)
    booking = await service.cancel(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        app_id=_app(request),
        booking_id=path_id(request, "booking_id"),
        data=data,
        if_match=request.headers.get("If-Match"),
    )
    return json_tagged(booking, booking.version)


@requires(BOOKINGS_WRITE)
async def change_booking_status(request: web.Request) -> web.Response:
    data = await parse_body(request, BookingStatusChange)
    booking = await service.change_status(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        app_id=_app(request),
        booking_id=path_id(request, "booking_id"),
        data=data,
        if_match=request.headers.get("If-Match"),
    )
    return json_tagged(booking, booking.version)


# --- client search ----------------------------------------------------------------------------


@requires(CLIENTS_READ)
async def search_clients(request: web.Request) -> web.Response:
    page = await service.search_clients(
        request.app[DB_POOL],
        request.app[DIRECTORY],
        clinic_id=_clinic(request),
        query=parse_query(request, ClientQuery),
    )
    return json_model(page)
