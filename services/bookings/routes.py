"""The bookings service's URL map, readable top to bottom."""

from __future__ import annotations

from services.bookings import handlers as h
from services.bookings import schemas as s
from shared.api import Api
from shared.scopes import BOOKINGS_READ, BOOKINGS_WRITE, CLIENTS_READ

C = "/v1/clinics/{clinic_id}"
P = C + "/practitioners/{practitioner_id}"
READ = (BOOKINGS_READ,)
WRITE = (BOOKINGS_WRITE,)


def build_api() -> Api:
    api = Api(
        "Vetgate bookings",
        description="Practitioners, services, insurances, resource mappings, schedules, "
        "real-time availability and bookings that never collide.",
    )
    api.add(
        "GET",
        C + "/schedules/settings",
        h.get_settings,
        "The clinic's zone, slot grid and lead time",
        response=s.BookingSettingsRead,
        scopes=READ,
        tags=("schedules",),
        errors=(403,),
    )
    api.add(
        "PATCH",
        C + "/schedules/settings",
        h.update_settings,
        "Change the slot grid or lead time",
        body=s.BookingSettingsUpdate,
        response=s.BookingSettingsRead,
        scopes=WRITE,
        tags=("schedules",),
        errors=(403,),
    )

    for plural, kind, create, update, read, page in (
        (
            "practitioners",
            "practitioner",
            s.PractitionerCreate,
            s.PractitionerUpdate,
            s.PractitionerRead,
            s.PractitionerPage,
        ),
        ("services", "service", s.ServiceCreate, s.ServiceUpdate, s.ServiceRead, s.ServicePage),
        (
            "insurances",
            "insurance",
            s.InsuranceCreate,
            s.InsuranceUpdate,
            s.InsuranceRead,
            s.InsurancePage,
        ),
    ):
        rh = h.resource_handlers(kind, create, update, page)
        base, one = f"{C}/{plural}", f"{C}/{plural}/{{resource_id}}"
        tags = (plural,)
        api.add(
            "POST",
            base,
            rh.create,
            f"Create a {kind}",
            body=create,
            response=read,
            status=201,
            scopes=WRITE,
            tags=tags,
            errors=(403, 409),
        )
        api.add(
            "GET",
            base,
            rh.list,
            f"List {plural} (by updated_at; filter by external_id)",
            query=s.ListQuery,
            response=page,
            scopes=READ,
            tags=tags,
            errors=(403,),
        )
        api.add(
            "GET",
            one,
            rh.get,
            f"One {kind}",
            response=read,
            scopes=READ,
            tags=tags,
            errors=(403, 404),
        )
        api.add(
            "PATCH",
            one,
            rh.update,
            f"Change a {kind}",
            body=update,
            response=read,
            scopes=WRITE,
            tags=tags,
            errors=(403, 404),
        )
        api.add(
            "DELETE",
            one,
            rh.deactivate,
            f"Deactivate a {kind}",
            response=read,
            scopes=WRITE,
            tags=tags,
            errors=(403, 404),
        )

    m = C + "/mappings/{resource_type}"
    api.add(
        "GET",
        m,
        h.list_mappings,
        "Your mappings of one resource type",
        query=s.MappingQuery,
        response=s.MappingPage,
        scopes=READ,
        tags=("mappings",),
        errors=(403,),
    )
    api.add(
        "PUT",
        m + "/{external_id}",
        h.put_mapping,
        "Map your id to one of ours",
        body=s.MappingPut,
        response=s.MappingRead,
        scopes=WRITE,
        tags=("mappings",),
        errors=(403, 409),
        extra_responses={201: "Created"},
    )
    api.add(
        "GET",
        m + "/{external_id}",
        h.get_mapping,
        "Look up your id",
        response=s.MappingRead,
        scopes=READ,
        tags=("mappings",),
        errors=(403, 404),
    )
    api.add(
        "DELETE",
        m + "/{external_id}",
        h.delete_mapping,
        "Forget a mapping",
        status=204,
        scopes=WRITE,
        tags=("mappings",),
        errors=(403, 404),
    )

    sched = ("schedules",)
    api.add(
        "PUT",
        P + "/working-hours",
        h.put_working_hours,
        "Replace weekly working hours",
        body=s.WorkingHoursPut,
        response=s.WorkingHoursRead,
        scopes=WRITE,
        tags=sched,
        errors=(403, 404),
    )
    api.add(
        "GET",
        P + "/working-hours",
        h.get_working_hours,
        "Weekly working hours",
        response=s.WorkingHoursRead,
        scopes=READ,
        tags=sched,
        errors=(403, 404),
    )
    api.add(
        "PUT",
        P + "/slots/{date}",
        h.put_slots,
        "Publish a local day's slots (replaces working hours that day; bookings stay)",
        body=s.SlotsPut,
        response=s.SlotsRead,
        scopes=WRITE,
        tags=sched,
        errors=(403, 404),
    )
    api.add(
        "GET",
        P + "/slots/{date}",
        h.get_slots,
        "A published day's slots",
        response=s.SlotsRead,
        scopes=READ,
        tags=sched,
        errors=(403, 404),
    )
    api.add(
        "POST",
        P + "/breaks",
        h.create_break,
        "Block time (409 over existing bookings)",
        body=s.BreakCreate,
        response=s.BreakRead,
        status=201,
        scopes=WRITE,
        tags=sched,
        errors=(403, 404, 409),
    )
    api.add(
        "GET",
        P + "/breaks",
        h.list_breaks,
        "Breaks between from and to",
        query=s.BreakQuery,
        response=s.BreakPage,
        scopes=READ,
        tags=sched,
        errors=(403, 404),
    )
    api.add(
        "DELETE",
        P + "/breaks/{break_id}",
        h.delete_break,
        "Remove a break",
        status=204,
        scopes=WRITE,
        tags=sched,
        errors=(403, 404),
    )
    api.add(
        "GET",
        C + "/availability",
        h.search_availability,
        "Bookable starts for a service (window up to 31 days)",
        query=s.AvailabilityQuery,
        response=s.Availability,
        scopes=READ,
        tags=("availability",),
        errors=(403,),
    )

    b, one = C + "/bookings", C + "/bookings/{booking_id}"
    bt = ("bookings",)
    api.add(
        "POST",
        b,
        h.create_booking,
        "Book (Idempotency-Key; never double-booked)",
        body=s.BookingCreate,
        response=s.BookingRead,
        status=201,
        scopes=WRITE,
        tags=bt,
        errors=(403, 409),
    )
    api.add(
        "GET",
        b,
        h.list_bookings,
        "List bookings by range, practitioner, status",
        query=s.BookingQuery,
        response=s.BookingPage,
        scopes=READ,
        tags=bt,
        errors=(403,),
    )
    api.add(
        "GET",
        one,
        h.get_booking,
        "One booking (ETag)",
        response=s.BookingRead,
        scopes=READ,
        tags=bt,
        errors=(403, 404),
    )
    api.add(
        "POST",
        one + "/reschedule",
        h.reschedule_booking,
        "Move a booking (If-Match)",
        body=s.BookingReschedule,
        response=s.BookingRead,
        scopes=WRITE,
        tags=bt,
        errors=(403, 404, 409, 412),
    )
    api.add(
        "POST",
        one + "/cancel",
        h.cancel_booking,
        "Cancel with a reason (If-Match)",
        body=s.BookingCancel,
        response=s.BookingRead,
        scopes=WRITE,
        tags=bt,
        errors=(403, 404, 409, 412),
    )
    api.add(
        "POST",
        one + "/status",
        h.change_booking_status,
        "Confirm, arrive, complete or mark no-show (If-Match)",
        body=s.BookingStatusChange,
        response=s.BookingRead,
        scopes=WRITE,
        tags=bt,
        errors=(403, 404, 409, 412),
    )

    api.add(
        "GET",
        C + "/clients",
        h.search_clients,
        "Search the group's clients and pets",
        query=s.ClientQuery,
        response=s.ClientPage,
        scopes=(CLIENTS_READ,),
        tags=("clients",),
        errors=(403,),
    )
    return api
