"""The rules of registrations: the form's lists, "does this client exist?", registering a client
with pets (idempotent, never a duplicate), reading and changing them, and erasure.

Clients belong to a group: a client registered at one clinic is known at every clinic of the
group, and invisible to every other group. Duplicates are refused by the database itself
(unique indexes on the normalised keys per group); the constraint's name says which rule.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import asyncpg

from services.registrations import normalise, store
from services.registrations.directory import Clinic, ClinicDirectory
from services.registrations.forms import FIELDS, Lookups, effective, render, required
from services.registrations.schemas import (
    AddressIn,
    AddressRead,
    ClientIn,
    ClientListQuery,
    ClientPage,
    ClientRead,
    ClientUpdate,
    ConsentRead,
    FormLists,
    GroupFormRead,
    GroupFormUpdate,
    MatchRequest,
    MatchResult,
    PatientCreate,
    PatientRead,
    PatientUpdate,
    RegistrationCreate,
    RegistrationForm,
)
from shared import events
from shared.conditional import check_if_match, idempotency_key_reused, request_hash
from shared.db import Connection, Record
from shared.errors import (
    Conflict,
    FieldError,
    NotFound,
    ProblemError,
    RateLimited,
    ValidationProblem,
)
from shared.events import ClientChanged, ClientErased, PatientChanged
from shared.outbox import Draft, emit, emit_many
from shared.pagination import encode_cursor, time_cursor
from shared.ratelimit import TokenBuckets

REGISTRATION = "registration"
PATIENT = "patient"
DEADLOCK_ATTEMPTS = 3

# --- problems ---------------------------------------------------------------------------------


@dataclass
class Problems:
    """Field errors collected across a whole request, raised together."""

    errors: list[FieldError] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.errors.append(FieldError(where, message))

    def raise_any(self) -> None:
        if self.errors:
            raise ValidationProblem(self.errors)


def client_exists(client_id: uuid.UUID | None, where: str, rule: str) -> Conflict:
    extra: dict[str, Any] = {"errors": [FieldError(where, "Already registered in this group")]}
    if client_id is not None:
        extra["client_id"] = str(client_id)
    return Conflict(
        f"A client with this {rule} is already registered in the clinic's group",
        slug="client-exists",
        title="Client already registered",
        extra=extra,
    )


def microchip_registered(patient: Record | None, where: str) -> Conflict:
    extra: dict[str, Any] = {"errors": [FieldError(where, "Already registered in this group")]}
    if patient is not None:
        extra.update(patient_id=str(patient["id"]), client_id=str(patient["client_id"]))
    return Conflict(
        "A pet with this microchip is already registered in the clinic's group",
        slug="microchip-registered",
        title="Microchip already registered",
        extra=extra,
    )


def client_erased() -> Conflict:
    return Conflict(
        "The client has been erased; nothing of it can change any more",
        slug="client-erased",
        title="Client erased",
    )


# --- the registration form --------------------------------------------------------------------


async def _lists(conn: Connection, group_id: uuid.UUID) -> tuple[FormLists, Record | None]:
    row = await store.get_group_form(conn, group_id)
    return effective(row["lists"] if row else None), row


async def clinic_form(
    pool: asyncpg.Pool, directory: ClinicDirectory, *, clinic_id: uuid.UUID
) -> RegistrationForm:
    """What a partner needs to render the clinic's registration form."""
    clinic = await directory.get(clinic_id)
    async with pool.acquire() as conn:
        lists, row = await _lists(conn, clinic.group_id)
    return render(
        lists,
        clinic_id=clinic_id,
        group_id=clinic.group_id,
        country=clinic.country,
        updated_at=row["updated_at"] if row else None,
    )


def _group_form(group_id: uuid.UUID, row: Record | None) -> GroupFormRead:
    stored: dict[str, Any] = dict(row["lists"]) if row else {}
    lists = effective(stored)
    needed = required(lists)
    return GroupFormRead(
        **{**lists.model_dump(), "required_fields": [f for f in FIELDS if f in needed]},
        group_id=group_id,
        customised=sorted(stored),
        updated_at=row["updated_at"] if row else None,
    )


async def group_form(pool: asyncpg.Pool, *, group_id: uuid.UUID) -> GroupFormRead:
    """A group's lists (its own where it changed them, the defaults elsewhere)."""
    async with pool.acquire() as conn:
        row = await store.get_group_form(conn, group_id)
    return _group_form(group_id, row)


async def change_group_form(
    pool: asyncpg.Pool, *, group_id: uuid.UUID, data: GroupFormUpdate
) -> GroupFormRead:
    """Replace the given lists of a group's form; a list given as null returns to the default."""
    given = data.model_dump(mode="json", exclude_unset=True)
    replace = {name: value for name, value in given.items() if value is not None}
    reset = [name for name, value in given.items() if value is None]
    async with pool.acquire() as conn:
        row = await store.change_group_form(conn, group_id, replace, reset)
    _forget_form(group_id)
    return _group_form(group_id, row)


async def reset_group_form(pool: asyncpg.Pool, *, group_id: uuid.UUID) -> GroupFormRead:
    """Every list of the group back to the defaults."""
    async with pool.acquire() as conn:
        await store.delete_group_form(conn, group_id)
    _forget_form(group_id)
    return _group_form(group_id, None)


# --- checking and normalising answers ---------------------------------------------------------


def _pick(
    index: Mapping[str, str], answer: str | None, where: str, what: str, problems: Problems
) -> str | None:
    """The form's own spelling of an answer from one of its lists."""
    if answer is None:
        return None
    found = index.get(normalise.choice_key(answer))
    if found is None:
        options = ", ".join(dict.fromkeys(index.values()))
        problems.add(where, f"Not one of the form's {what}: {options}")
    return found


def _missing(
    needed: frozenset[str], present: Mapping[str, Any], where: str, problems: Problems
) -> None:
    """Errors for the form's required fields left empty; ``where`` replaces the field's group."""
    for name in FIELDS:
        if name in needed and name in present and present[name] in (None, ""):
            problems.add(where + name.partition(".")[2], "Required by the registration form")


def _address(
    address: AddressIn | None,
    clinic: Clinic,
    lookups: Lookups,
    where: str,
    problems: Problems,
) -> dict[str, Any]:
    """The address columns (and the postcode key), read in the address's or clinic's country."""
    if address is None:
        return {
            "address_line1": None,
            "address_line2": None,
            "address_city": None,
            "address_region": None,
            "address_postcode": None,
            "address_country": None,
            "postcode_key": None,
        }
    country = address.country or clinic.country
    if address.country is not None and country not in lookups.countries:
        problems.add(where + "country", "Not one of the form's countries")
    postcode = key = None
    if address.postcode is not None:
        try:
            postcode = normalise.postcode(address.postcode, country)
            key = normalise.postcode_key(address.postcode, country)
        except ValueError as exc:
            problems.add(where + "postcode", str(exc))
    return {
        "address_line1": _text(address.line1),
        "address_line2": _text(address.line2),
        "address_city": _text(address.city),
        "address_region": _text(address.region),
        "address_postcode": postcode,
        "address_country": country,
        "postcode_key": key,
    }


def _text(value: str | None) -> str | None:
    return normalise.collapse(value) if value is not None else None


def _address_present(address: AddressIn | None, clinic: Clinic) -> dict[str, Any]:
    """The address's parts as the form's required fields see them (country defaults)."""
    present = {
        f"client.address.{part}": getattr(address, part) if address else None
        for part in ("line1", "line2", "city", "region", "postcode")
    }
    present["client.address.country"] = (address.country or clinic.country) if address else None
    return present


def _phone(value: str, clinic: Clinic, where: str, problems: Problems) -> str | None:
    try:
        return normalise.phone_e164(value, clinic.country)
    except ValueError as exc:
        problems.add(where, str(exc))
        return None


def _client_values(
    client: ClientIn, clinic: Clinic, lookups: Lookups, problems: Problems
) -> dict[str, Any]:
    """A new client's columns, every answer checked against the form."""
    where = "body.client."
    present: dict[str, Any] = {
        f"client.{name}": getattr(client, name)
        for name in ("title", "first_name", "last_name", "email", "phone", "referral_source")
    }
    present.update(_address_present(client.address, clinic))
    _missing(lookups.required, present, where, problems)
    first, last = normalise.collapse(client.first_name), normalise.collapse(client.last_name)
    phone = _phone(client.phone, clinic, where + "phone", problems) if client.phone else None
    return {
        "title": _pick(lookups.titles, client.title, where + "title", "titles", problems),
        "first_name": first,
        "last_name": last,
        "email": client.email,
        "phone": phone,
        "referral_source": _pick(
            lookups.referral_sources,
            client.referral_source,
            where + "referral_source",
            "referral sources",
            problems,
        ),
        "email_key": normalise.email_key(client.email) if client.email else None,
        "phone_key": phone,
        "first_name_key": normalise.name_key(first),
        "last_name_key": normalise.name_key(last),
        **_address(client.address, clinic, lookups, where + "address.", problems),
    }


def _species_and_breed(
    species: str | None,
    breed: str | None,
    lookups: Lookups,
    where: str,
    problems: Problems,
) -> tuple[str | None, str | None]:
    if species is None:
        return None, None
    choice = lookups.species.get(normalise.choice_key(species))
    if choice is None:
        options = ", ".join(dict.fromkeys(s.code for s in lookups.species.values()))
        problems.add(where + "species", f"Not one of the form's species: {options}")
        return None, None
    if breed is None:
        return choice.code, None
    breeds = lookups.breeds.get(choice.code, {})
    if not breeds:
        problems.add(where + "breed", f"The form lists no breeds of {choice.name}; leave it out")
        return choice.code, None
    found = breeds.get(normalise.choice_key(breed))
    if found is None:
        problems.add(where + "breed", f"Not one of the form's breeds of {choice.name}")
    return choice.code, found


def _date_of_birth(value: date | None, clinic: Clinic, where: str, problems: Problems) -> None:
    if value is not None and value > datetime.now(clinic.time_zone).date():
        problems.add(where + "date_of_birth", "Lies in the future")


def _patient_values(
    patient: PatientCreate, clinic: Clinic, lookups: Lookups, where: str, problems: Problems
) -> dict[str, Any]:
    """A new pet's columns, every answer checked against the form."""
    present = {f"patient.{name}": getattr(patient, name) for name in PatientCreate.model_fields}
    _missing(lookups.required, present, where, problems)
    species, breed = _species_and_breed(patient.species, patient.breed, lookups, where, problems)
    _date_of_birth(patient.date_of_birth, clinic, where, problems)
    return {
        "name": normalise.collapse(patient.name),
        "species": species,
        "breed": breed,
        "sex": _pick(lookups.sexes, patient.sex, where + "sex", "sexes", problems),
        "date_of_birth": patient.date_of_birth,
        "neutered": patient.neutered,
        "microchip": patient.microchip,
    }


def _consent_answers(
    given: Mapping[str, bool], lookups: Lookups, *, registering: bool, problems: Problems
) -> list[tuple[str, bool, str]]:
    """(code, answer, text shown) for each consent given; required ones must be given at sign-up."""
    answers: list[tuple[str, bool, str]] = []
    for code, granted in given.items():
        item = lookups.consents.get(code)
        if item is None:
            problems.add(f"body.consents.{code}", "Not a consent of the registration form")
            continue
        answers.append((code, granted, item.text))
    if registering:
        for code, item in lookups.consents.items():
            if item.required and not given.get(code, False):
                problems.add(f"body.consents.{code}", "Required by the registration form")
    return answers


#: Indexed lists by (group, version of its form): building them is the costliest step of a
#: registration, and a form changes rarely. Which version a group is on is itself kept for a
#: second; a change made through this copy of the service is seen at once, through another copy
#: within that second.
_LOOKUPS: dict[tuple[uuid.UUID | None, datetime | None], Lookups] = {}
_VERSIONS: dict[uuid.UUID, tuple[float, datetime | None]] = {}
_CACHE_MAX = 1024
VERSION_SECONDS = 1.0


def _forget_form(group_id: uuid.UUID) -> None:
    _VERSIONS.pop(group_id, None)


async def _lookups(pool: asyncpg.Pool, group_id: uuid.UUID) -> Lookups:
    known = _VERSIONS.get(group_id)
    if known is not None and known[0] > time.monotonic():
        version = known[1]
        found = _LOOKUPS.get((group_id, version) if version is not None else (None, None))
        if found is not None:
            return found
    async with pool.acquire() as conn:
        version = await store.group_form_version(conn, group_id)
        # Every group on the defaults shares one entry.
        key = (group_id, version) if version is not None else (None, None)
        found = _LOOKUPS.get(key)
        if found is None:
            lists, _ = await _lists(conn, group_id)
            found = Lookups.of(lists)
            if len(_LOOKUPS) >= _CACHE_MAX:
                _LOOKUPS.clear()
            _LOOKUPS[key] = found
    if len(_VERSIONS) >= _CACHE_MAX:
        _VERSIONS.clear()
    _VERSIONS[group_id] = (time.monotonic() + VERSION_SECONDS, version)
    return found


# --- reading ----------------------------------------------------------------------------------


def _patient(row: Record) -> PatientRead:
    return PatientRead.model_validate(dict(row))


def _client(row: Record, patients: list[PatientRead], consents: list[ConsentRead]) -> ClientRead:
    values = dict(row)
    address = {
        part: values.pop(f"address_{part}")
        for part in ("line1", "line2", "city", "region", "postcode", "country")
    }
    has_address = any(v is not None for v in address.values())
    return ClientRead(
        **values,
        address=AddressRead(**address) if has_address else None,
        consents=consents,
        patients=patients,
        erased=values["erased_at"] is not None,
    )


async def _reads(conn: Connection, rows: list[Record]) -> list[ClientRead]:
    """Clients with their pets and current consents, three queries for any number of them."""
    ids = [r["id"] for r in rows]
    patients: dict[uuid.UUID, list[PatientRead]] = {i: [] for i in ids}
    for p in await store.patients_of(conn, ids):
        patients[p["client_id"]].append(_patient(p))
    consents: dict[uuid.UUID, list[ConsentRead]] = {i: [] for i in ids}
    for c in await store.current_consents(conn, ids):
        consents[c["client_id"]].append(ConsentRead.model_validate(dict(c)))
    return [_client(r, patients[r["id"]], consents[r["id"]]) for r in rows]


async def _read(conn: Connection, group_id: uuid.UUID, client_id: uuid.UUID) -> ClientRead:
    row = await store.get_client(conn, group_id, client_id)
    if row is None:
        raise NotFound("No such client in this clinic's group")
    return (await _reads(conn, [row]))[0]


async def get_client(
    pool: asyncpg.Pool, directory: ClinicDirectory, *, clinic_id: uuid.UUID, client_id: uuid.UUID
) -> ClientRead:
    """One client of the clinic's group, with its pets and consents."""
    clinic = await directory.get(clinic_id)
    async with pool.acquire() as conn:
        return await _read(conn, clinic.group_id, client_id)


async def list_clients(
    pool: asyncpg.Pool, directory: ClinicDirectory, *, clinic_id: uuid.UUID, query: ClientListQuery
) -> ClientPage:
    """The group's clients in sync order (erased ones included, so partners forget them)."""
    clinic = await directory.get(clinic_id)
    after = time_cursor(query.cursor)
    async with pool.acquire() as conn:
        rows = await store.list_clients(
            conn,
            clinic.group_id,
            after=after,
            updated_since=query.updated_since,
            limit=query.limit + 1,
        )
        items = await _reads(conn, rows[: query.limit])
    cursor = None
    if len(rows) > query.limit:
        last = rows[query.limit - 1]
        cursor = encode_cursor(last["updated_at"], last["id"])
    return ClientPage(items=items, next_cursor=cursor)


async def get_patient(
    pool: asyncpg.Pool, directory: ClinicDirectory, *, clinic_id: uuid.UUID, patient_id: uuid.UUID
) -> PatientRead:
    """One pet of a client of the clinic's group."""
    clinic = await directory.get(clinic_id)
    async with pool.acquire() as conn:
        row = await store.get_patient(conn, clinic.group_id, patient_id)
    if row is None:
        raise NotFound("No such patient in this clinic's group")
    return _patient(row)


# --- events -----------------------------------------------------------------------------------


def _aggregate(client_id: uuid.UUID) -> str:
    # One sequence per client for the client and its pets: a receiver orders them all.
    return f"client:{client_id}"


def _client_event(event_type: str, client: ClientRead, clinic_id: uuid.UUID) -> Draft:
    assert client.first_name is not None
    assert client.last_name is not None
    return Draft(
        event_type,
        ClientChanged(
            client_id=client.id,
            group_id=client.group_id,
            clinic_id=clinic_id,
            title=client.title,
            first_name=client.first_name,
            last_name=client.last_name,
            email=client.email,
            phone=client.phone,
            changed_at=client.updated_at,
        ),
        aggregate=_aggregate(client.id),
        clinic_id=clinic_id,
    )


def _patient_event(
    event_type: str, patient: PatientRead, group_id: uuid.UUID, clinic_id: uuid.UUID
) -> Draft:
    assert patient.name is not None
    return Draft(
        event_type,
        PatientChanged(
            patient_id=patient.id,
            client_id=patient.client_id,
            group_id=group_id,
            name=patient.name,
            species=patient.species,
            breed=patient.breed,
            changed_at=patient.updated_at,
        ),
        aggregate=_aggregate(patient.client_id),
        clinic_id=clinic_id,
    )


# --- does this client exist? ------------------------------------------------------------------


@dataclass(frozen=True)
class MatchLimit:
    """Match requests per application: few enough that answers cannot enumerate a group."""

    buckets: TokenBuckets
    rate: float
    burst: int

    def check(self, application: str) -> None:
        """Take one request from the application's bucket; 429 when it is empty."""
        wait = self.buckets.take(application, rate=self.rate, burst=self.burst)
        if wait > 0:
            raise RateLimited("Too many duplicate checks from this application", retry_after=wait)


async def match(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    data: MatchRequest,
    reveal_id: bool,
) -> MatchResult:
    """``exact`` when registering would be refused as a duplicate, ``possible`` when someone
    alike is registered, ``none`` otherwise; the id only for an exact match and ``reveal_id``."""
    clinic = await directory.get(clinic_id)
    problems = Problems()
    phone = _phone(data.phone, clinic, "body.phone", problems) if data.phone else None
    postcode_key = None
    if data.postcode is not None:
        try:
            postcode_key = normalise.postcode_key(data.postcode, clinic.country)
        except ValueError as exc:
            problems.add("body.postcode", str(exc))
    problems.raise_any()
    async with pool.acquire() as conn:
        row = await store.match(
            conn,
            clinic.group_id,
            email_key=normalise.email_key(data.email) if data.email else None,
            phone_key=phone,
            first_name_key=normalise.name_key(data.first_name) if data.first_name else None,
            last_name_key=normalise.name_key(data.last_name) if data.last_name else None,
            postcode_key=postcode_key,
        )
    exact: uuid.UUID | None = row["by_email"] or row["by_phone_name"]
    if exact is not None:
        return MatchResult(result="exact", client_id=exact if reveal_id else None)
    if row["phone"] or row["full_name"] or row["name_postcode"]:
        return MatchResult(result="possible")
    return MatchResult(result="none")


# --- register ---------------------------------------------------------------------------------


async def _replay(
    pool: asyncpg.Pool,
    clinic: Clinic,
    *,
    app_id: uuid.UUID,
    operation: str,
    key: str,
    digest: bytes,
) -> Record | None:
    async with pool.acquire() as conn:
        previous = await store.create_request(conn, app_id, clinic.clinic_id, operation, key)
    if previous is not None and previous["request_hash"] != digest:
        raise idempotency_key_reused()
    return previous


async def _duplicate(
    conn: Connection,
    exc: asyncpg.UniqueViolationError,
    group_id: uuid.UUID,
    *,
    client: Mapping[str, Any] | None = None,
    where: str = "body.client.",
    chips: Mapping[str, str] | None = None,
) -> ProblemError:
    """The refusal a violated duplicate rule stands for, naming the client already there.

    ``client`` holds the normalised keys that were written, ``chips`` each microchip with the
    field it came from. Asked after the rollback: the winner of a race has committed by the time
    the index refused the loser, so it is there to be named.
    """
    name = exc.constraint_name
    if name == "clients_group_email_key" and client is not None:
        found = await store.client_by_email(conn, group_id, client["email_key"])
        return client_exists(found, where + "email", "e-mail address")
    if name == "clients_group_phone_name_key" and client is not None:
        found = await store.client_by_phone_name(
            conn, group_id, client["phone_key"], client["last_name_key"]
        )
        return client_exists(found, where + "phone", "phone number and last name")
    if name == "patients_group_microchip_key" and chips:
        patient = await store.patient_by_microchip(conn, group_id, list(chips))
        field_name = chips.get(patient["microchip"]) if patient else None
        return microchip_registered(patient, field_name or next(iter(chips.values())))
    if name == "create_requests_pkey":
        return Conflict("A request with this Idempotency-Key was made meanwhile; retry it")
    raise exc


async def _write_registration(
    conn: Connection,
    clinic: Clinic,
    *,
    app_id: uuid.UUID,
    client_values: dict[str, Any],
    patients: list[dict[str, Any]],
    answers: list[tuple[str, bool, str]],
    request: tuple[str | None, bytes],
) -> ClientRead:
    """Insert the client, pets, consents and request key, and emit their events."""
    client_id = uuid.uuid4()
    # The answer is built from what the inserts return: reading it back would cost three more
    # round trips on the busiest write of the service.
    key, digest = request
    row = await store.insert_client(
        conn,
        client_id,
        group_id=clinic.group_id,
        clinic_id=clinic.clinic_id,
        values=client_values,
        request=(app_id, key, digest) if key is not None else None,
    )
    pets = [
        _patient(
            await store.insert_patient(
                conn, uuid.uuid4(), group_id=clinic.group_id, client_id=client_id, values=values
            )
        )
        for values in patients
    ]
    consents = await store.record_consents(
        conn, client_id, clinic_id=clinic.clinic_id, application_id=app_id, answers=answers
    )
    client = _client(
        row,
        pets,
        [ConsentRead.model_validate(dict(c)) for c in sorted(consents, key=lambda c: c["code"])],
    )
    await emit_many(
        conn,
        [
            _client_event(events.CLIENT_REGISTERED, client, clinic.clinic_id),
            *(
                _patient_event(
                    events.PATIENT_REGISTERED, patient, clinic.group_id, clinic.clinic_id
                )
                for patient in client.patients
            ),
        ],
    )
    return client


async def register(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    data: RegistrationCreate,
    idempotency_key: str | None,
) -> tuple[ClientRead, bool]:
    """Register a client with one or more pets; the flag is False for the replay of an earlier
    identical request. An exact duplicate in the group is refused with the existing id."""
    clinic = await directory.get(clinic_id)
    digest = request_hash(data)
    # A retry with the same Idempotency-Key is found when its write is refused (the key, or the
    # client it registered, is taken), so the usual first request pays no look-up for it.
    lookups = await _lookups(pool, clinic.group_id)
    problems = Problems()
    client_values = _client_values(data.client, clinic, lookups, problems)
    patients = [
        _patient_values(p, clinic, lookups, f"body.patients.{i}.", problems)
        for i, p in enumerate(data.patients)
    ]
    chips: dict[str, str] = {}
    for i, p in enumerate(patients):
        if p["microchip"] is None:
            continue
        if p["microchip"] in chips:
            problems.add(f"body.patients.{i}.microchip", "Given for two pets")
        chips.setdefault(p["microchip"], f"body.patients.{i}.microchip")
    answers = _consent_answers(data.consents, lookups, registering=True, problems=problems)
    problems.raise_any()

    refusal: ProblemError | None = None
    async with pool.acquire() as conn:
        for attempt in range(DEADLOCK_ATTEMPTS):
            try:
                async with conn.transaction():
                    client = await _write_registration(
                        conn,
                        clinic,
                        app_id=app_id,
                        client_values=client_values,
                        patients=patients,
                        answers=answers,
                        request=(idempotency_key, digest),
                    )
                break
            except asyncpg.DeadlockDetectedError:
                # Two registrations giving the same microchips in opposite orders: one is
                # rolled back by the server; run it again, and it meets the other's chips.
                if attempt + 1 == DEADLOCK_ATTEMPTS:
                    raise
            except asyncpg.UniqueViolationError as exc:
                refusal = await _duplicate(
                    conn, exc, clinic.group_id, client=client_values, chips=chips
                )
                break
    if refusal is None:
        return client, True
    if idempotency_key is not None:
        # The same request may have raced this one and won: answer as its replay.
        previous = await _replay(
            pool, clinic, app_id=app_id, operation=REGISTRATION, key=idempotency_key, digest=digest
        )
        if previous is not None:
            return await get_client(
                pool, directory, clinic_id=clinic_id, client_id=previous["client_id"]
            ), False
    raise refusal


# --- change a client --------------------------------------------------------------------------


def _client_changes(
    data: ClientUpdate, clinic: Clinic, lookups: Lookups, problems: Problems
) -> dict[str, Any]:
    """The columns a PATCH sets, checked against the form and with their keys recomputed."""
    given = data.model_fields_set - {"consents"}
    where = "body."
    changes: dict[str, Any] = {}
    for name in ("first_name", "last_name"):
        if name in given and getattr(data, name) is None:
            problems.add(where + name, "May not be null")
    present: dict[str, Any] = {
        f"client.{name}": getattr(data, name)
        for name in ("title", "email", "phone", "referral_source")
        if name in given
    }
    if "address" in given:
        present.update(_address_present(data.address, clinic))
    _missing(lookups.required, present, where, problems)
    if "title" in given:
        changes["title"] = _pick(lookups.titles, data.title, where + "title", "titles", problems)
    if "referral_source" in given:
        changes["referral_source"] = _pick(
            lookups.referral_sources,
            data.referral_source,
            where + "referral_source",
            "referral sources",
            problems,
        )
    for name in ("first_name", "last_name"):
        value = getattr(data, name)
        if name in given and value is not None:
            changes[name] = normalise.collapse(value)
            changes[f"{name}_key"] = normalise.name_key(value)
    if "email" in given:
        changes["email"] = data.email
        changes["email_key"] = normalise.email_key(data.email) if data.email else None
    if "phone" in given:
        phone = _phone(data.phone, clinic, where + "phone", problems) if data.phone else None
        changes["phone"] = changes["phone_key"] = phone
    if "address" in given:
        changes.update(_address(data.address, clinic, lookups, where + "address.", problems))
    return changes


async def update_client(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    client_id: uuid.UUID,
    data: ClientUpdate,
    if_match: str | None,
) -> ClientRead:
    """Change a client's contact details or consents; emits ``client.updated``."""
    clinic = await directory.get(clinic_id)
    lookups = await _lookups(pool, clinic.group_id)
    async with pool.acquire() as conn:
        refusal: ProblemError | None = None
        changes: dict[str, Any] = {}
        try:
            async with conn.transaction():
                row = await store.get_client(conn, clinic.group_id, client_id, for_update=True)
                if row is None:
                    raise NotFound("No such client in this clinic's group")
                if row["erased_at"] is not None:
                    raise client_erased()
                check_if_match(if_match, row["version"])
                problems = Problems()
                changes = _client_changes(data, clinic, lookups, problems)
                answers = _consent_answers(
                    data.consents or {}, lookups, registering=False, problems=problems
                )
                problems.raise_any()
                if not changes and not answers:
                    return await _read(conn, clinic.group_id, client_id)
                await store.update_client(conn, client_id, changes)
                await store.record_consents(
                    conn, client_id, clinic_id=clinic_id, application_id=app_id, answers=answers
                )
                client = await _read(conn, clinic.group_id, client_id)
                await emit_many(conn, [_client_event(events.CLIENT_UPDATED, client, clinic_id)])
        except asyncpg.UniqueViolationError as exc:
            keys = dict(await store.get_client_keys(conn, client_id))
            keys.update({k: v for k, v in changes.items() if k.endswith("_key")})
            refusal = await _duplicate(conn, exc, clinic.group_id, client=keys, where="body.")
    if refusal is not None:
        raise refusal
    return client


# --- pets -------------------------------------------------------------------------------------


async def add_patient(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    client_id: uuid.UUID,
    data: PatientCreate,
    idempotency_key: str | None,
) -> tuple[PatientRead, bool]:
    """Add a pet to a client; the flag is False for the replay of an earlier identical request."""
    clinic = await directory.get(clinic_id)
    digest = request_hash(data)

    async def replayed() -> PatientRead | None:
        if idempotency_key is None:
            return None
        previous = await _replay(
            pool, clinic, app_id=app_id, operation=PATIENT, key=idempotency_key, digest=digest
        )
        if previous is None:
            return None
        return await get_patient(
            pool, directory, clinic_id=clinic_id, patient_id=previous["resource_id"]
        )

    earlier = await replayed()
    if earlier is not None:
        return earlier, False
    lookups = await _lookups(pool, clinic.group_id)
    problems = Problems()
    values = _patient_values(data, clinic, lookups, "body.", problems)
    problems.raise_any()
    patient_id = uuid.uuid4()
    refusal: ProblemError | None = None
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                owner = await store.get_client(conn, clinic.group_id, client_id, for_update=True)
                if owner is None:
                    raise NotFound("No such client in this clinic's group")
                if owner["erased_at"] is not None:
                    raise client_erased()
                await store.insert_patient(
                    conn, patient_id, group_id=clinic.group_id, client_id=client_id, values=values
                )
                if idempotency_key is not None:
                    await store.insert_create_request(
                        conn,
                        app_id,
                        clinic_id,
                        PATIENT,
                        idempotency_key,
                        request_hash=digest,
                        client_id=client_id,
                        resource_id=patient_id,
                    )
                row = await store.get_patient(conn, clinic.group_id, patient_id)
                assert row is not None
                patient = _patient(row)
                await emit_many(
                    conn,
                    [
                        _patient_event(
                            events.PATIENT_REGISTERED, patient, clinic.group_id, clinic_id
                        )
                    ],
                )
        except asyncpg.UniqueViolationError as exc:
            chips = {values["microchip"]: "body.microchip"} if values["microchip"] else {}
            refusal = await _duplicate(conn, exc, clinic.group_id, chips=chips)
    if refusal is None:
        return patient, True
    earlier = await replayed()
    if earlier is not None:
        return earlier, False
    raise refusal


async def update_patient(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    patient_id: uuid.UUID,
    data: PatientUpdate,
    if_match: str | None,
) -> PatientRead:
    """Change a pet's details; emits ``patient.updated``."""
    clinic = await directory.get(clinic_id)
    lookups = await _lookups(pool, clinic.group_id)
    given = data.model_fields_set
    chips = {data.microchip: "body.microchip"} if data.microchip else {}
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                row = await store.get_patient(conn, clinic.group_id, patient_id, for_update=True)
                if row is None:
                    raise NotFound("No such patient in this clinic's group")
                owner = await store.get_client(conn, clinic.group_id, row["client_id"])
                if owner is None or owner["erased_at"] is not None:
                    raise client_erased()
                check_if_match(if_match, row["version"])
                changes = _patient_changes(data, given, row, clinic, lookups)
                if not changes:
                    return _patient(row)
                await store.update_patient(conn, patient_id, changes)
                fresh = await store.get_patient(conn, clinic.group_id, patient_id)
                assert fresh is not None
                patient = _patient(fresh)
                await emit_many(
                    conn,
                    [_patient_event(events.PATIENT_UPDATED, patient, clinic.group_id, clinic_id)],
                )
        except asyncpg.UniqueViolationError as exc:
            raise await _duplicate(conn, exc, clinic.group_id, chips=chips) from None
    return patient


def _patient_changes(
    data: PatientUpdate, given: set[str], row: Record, clinic: Clinic, lookups: Lookups
) -> dict[str, Any]:
    problems = Problems()
    for name in ("name", "species"):
        if name in given and getattr(data, name) is None:
            problems.add(f"body.{name}", "May not be null")
    present = {f"patient.{name}": getattr(data, name) for name in given}
    _missing(lookups.required, present, "body.", problems)
    changes: dict[str, Any] = {}
    if "name" in given and data.name is not None:
        changes["name"] = normalise.collapse(data.name)
    if given & {"species", "breed"}:
        # A new species needs a breed of its own: the current one is checked against it too.
        species = data.species if "species" in given else row["species"]
        breed = data.breed if "breed" in given else row["breed"]
        code, found = _species_and_breed(species, breed, lookups, "body.", problems)
        if code is not None:
            changes["species"] = code
        changes["breed"] = found
    if "sex" in given:
        changes["sex"] = _pick(lookups.sexes, data.sex, "body.sex", "sexes", problems)
    if "date_of_birth" in given:
        _date_of_birth(data.date_of_birth, clinic, "body.", problems)
        changes["date_of_birth"] = data.date_of_birth
    for name in ("neutered", "microchip"):
        if name in given:
            changes[name] = getattr(data, name)
    problems.raise_any()
    return changes


# --- erasure ----------------------------------------------------------------------------------


async def erase_client(
    pool: asyncpg.Pool,
    *,
    group_id: uuid.UUID,
    client_id: uuid.UUID,
    clinic_id: uuid.UUID | None,
) -> ClientRead:
    """Anonymise a client and its pets for good; ``client.erased`` tells every service and
    partner to forget them. Erasing an erased client again changes nothing."""
    async with pool.acquire() as conn, conn.transaction():
        row = await store.get_client(conn, group_id, client_id, for_update=True)
        if row is None:
            raise NotFound("No such client in this group")
        if row["erased_at"] is not None:
            return await _read(conn, group_id, client_id)
        await store.erase_client(conn, client_id)
        client = await _read(conn, group_id, client_id)
        assert client.erased_at is not None
        acting = clinic_id or row["registered_clinic_id"]
        await emit(
            conn,
            events.CLIENT_ERASED,
            ClientErased(client_id=client_id, group_id=group_id, erased_at=client.erased_at),
            aggregate=_aggregate(client_id),
            clinic_id=acting,
        )
    return client


async def erase_for_clinic(
    pool: asyncpg.Pool, directory: ClinicDirectory, *, clinic_id: uuid.UUID, client_id: uuid.UUID
) -> ClientRead:
    """Erasure asked by a clinic of the client's group."""
    clinic = await directory.get(clinic_id)
    return await erase_client(
        pool, group_id=clinic.group_id, client_id=client_id, clinic_id=clinic_id
    )
