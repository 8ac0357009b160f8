"""Registrations: registering clients and "does this client exist?", each against a bare baseline.

One clinic in GB whose group holds 100,000 clients. The auth and registrations services run as
one process each (registrations verifies tokens against auth's JWKS and fetches the clinic from
auth's directory); the application holds ``registrations:write`` and ``clients:read`` for the
clinic, with the tier limits and the per-application duplicate-check limit lifted. Every figure
sits next to a baseline measured in the same run.

(a) ``POST …/registrations`` from 50 concurrent clients, each request a client of its own
    (distinct e-mail, phone and microchip) with one pet and an ``Idempotency-Key``, against a
    bare asyncpg loop writing the same rows (the client, the pet, the idempotency record and the
    two outbox events through the service's own statements) from 50 tasks on a pool of the
    service's size. Driven by wrk when installed (a Lua script sends every pre-generated body
    once, split between wrk's threads, and times each request itself), else by an aiohttp
    client. Target: ≥ 800 registrations/s.
(b) ``POST …/registrations/match`` with 100,000 clients in the group, bulk-loaded with the keys
    the service computes (``services.registrations.normalise``): 1,000 requests one after another
    on one keep-alive connection, a mix of exact, possible and no matches typed the way people
    type them, against a bare aiohttp handler (a process of its own) that normalises the same
    fields, runs the service's match query and answers a similar small JSON. Target: p99 ≤ 15 ms.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from bench.bookings import _app_id, _markdown, _percentile, _token
from bench.harness import (
    bench_database,
    bench_platform,
    bench_tenant,
    free_port,
    server_process,
    table,
    wait_http,
)
from bench.load import Block, LoadResult, post_each_once
from services.registrations import normalise, store
from services.registrations.settings import RegistrationsSettings
from shared import events
from shared.db import create_pool
from shared.outbox import emit

COUNTRY = "GB"
GROUP_CLIENTS = int(os.environ.get("BENCH_GROUP_CLIENTS", "100000"))
MATCH_REQUESTS = int(os.environ.get("BENCH_MATCH_REQUESTS", "1000"))
REGISTRATIONS = int(os.environ.get("BENCH_REGISTRATIONS", "3000"))
CLIENTS = 50
WARM_UP = 100
BLOCKS = 3  # the registration rows take turns, each writing a third of its clients at a time
MATCH_BLOCKS = 5
WRK_THREADS = 2

REGISTER = "POST registrations, Idempotency-Key"
REGISTER_BARE = "bare asyncpg: client + pet + key + 2 events"
MATCH = "POST registrations/match"
MATCH_BARE = "bare handler, same keys and match query"

# Serial numbers keep e-mails, phones and microchips apart between the parts of the run.
LOADED, UNREGISTERED, REGISTERED_HTTP, REGISTERED_BARE = 0, 1_000_000, 2_000_000, 3_000_000


# --- people -----------------------------------------------------------------------------------

FIRST_NAMES = (
    "Oliver Amelia George Isla Harry Ava Noah Mia Jack Ivy Leo Lily Arthur Isabella Muhammad "
    "Rosie Oscar Sophia Charlie Grace Jacob Freya Thomas Willow Henry Florence William Emily "
    "James Ella Alfie Poppy Joshua Evie Theo Elsie Archie Charlotte Freddie Evelyn Isaac Sienna "
    "Alexander Daisy Edward Phoebe Lucas Matilda Samuel Sofia Adam Ruby Joseph Alice Max Harper "
    "Daniel Millie Logan Aria"
).split()
#: The most common British surnames, most common first; together about a quarter of the group.
COMMON_SURNAMES = (
    "Smith Jones Williams Taylor Brown Davies Evans Wilson Thomas Johnson Roberts Robinson "
    "Thompson Wright Walker White Edwards Hughes Green Hall Lewis Harris Clarke Patel Jackson "
    "Wood Turner Martin Cooper Hill Ward Morris Moore Clark Lee King Baker Harrison Morgan Allen "
    "James Scott Phillips Watson Davis Parker Price Bennett Young Griffiths O'Brien Mitchell "
    "Kelly Cook Carter Richardson Bailey Collins Bell Shaw"
).split()
COMMON_SHARE = 0.25
#: The long tail: 2,000 made-up surnames of a few dozen clients each.
_HEADS = (
    "Ash Brad Bur Cal Chad Craw Dal Dun Elling Fair Fen Gold Green Ham Hart Hay Hol Kings Lang "
    "Lin Mar Mel Mid Mor New Nor Old Pen Pres Rad Red Ros Rush Sal Stan Stock Sut Thorn Wal "
    "War Wel West Whit Wick Wil Win Wood Wyn Yar Brom"
).split()
_TAILS = (
    "ford ley ton wood field worth well by ham don more croft hurst stone brook wick dale "
    "cote bury mere shaw land thorpe well ridge gate ing low sey combe den holme hill lock "
    "bridge more wood cliffe marsh ham stead"
).split()
TAIL_SURNAMES = sorted({h + t for h in _HEADS for t in _TAILS})
#: Surnames no loaded client has: for the requests that must match no one.
UNKNOWN_SURNAMES = [f"{h}{t}" for h in ("Quill", "Vex", "Zeph", "Jinx") for t in _TAILS]
TITLES = ("Mr", "Mrs", "Ms", "Miss", "Dr", "Mx")
STREETS = "High Church Station Mill Park Victoria Green Manor Queen's Kingsway Orchard".split()
AREAS = "SW SE N NW E W B M L LS S BS CF EH G NE NG OX CB BN RG GU YO".split()
INWARD = "ABDEFGHJLNPQRSTUWXYZ"
DOMAINS = ("example.com", "example.org", "example.net", "mail.example")


@dataclass(frozen=True)
class Person:
    """A client as someone types them into a registration form."""

    serial: int
    title: str
    first_name: str
    last_name: str
    email: str
    phone: str  # national, as dialled in GB
    line1: str
    city: str
    postcode: str


class People:
    """Plausible British clients: common surnames shared by hundreds, a long tail of rarer ones."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        weights = [k**-0.3 for k in range(1, len(COMMON_SURNAMES) + 1)]
        scale = COMMON_SHARE / sum(weights)
        tail = (1 - COMMON_SHARE) / len(TAIL_SURNAMES)
        self._surnames = [*COMMON_SURNAMES, *TAIL_SURNAMES]
        self._cumulative: list[float] = []
        total = 0.0
        for w in [w * scale for w in weights] + [tail] * len(TAIL_SURNAMES):
            total += w
            self._cumulative.append(total)

    def surname(self) -> str:
        return self._rng.choices(self._surnames, cum_weights=self._cumulative)[0]

    def postcode(self) -> str:
        rng = self._rng
        return (
            f"{rng.choice(AREAS)}{rng.randint(1, 20)} "
            f"{rng.randint(0, 9)}{rng.choice(INWARD)}{rng.choice(INWARD)}"
        )

    def person(
        self, serial: int, *, first_name: str | None = None, last_name: str | None = None
    ) -> Person:
        rng = self._rng
        first = first_name or rng.choice(FIRST_NAMES)
        last = last_name or self.surname()
        local = re.sub(r"[^a-z0-9.]", "", f"{first}.{last}.{serial}".lower())
        return Person(
            serial=serial,
            title=rng.choice(TITLES),
            first_name=first,
            last_name=last,
            email=f"{local}@{rng.choice(DOMAINS)}",
            phone=_phone(serial),
            line1=f"{rng.randint(1, 240)} {rng.choice(STREETS)} Road",
            city="London",
            postcode=self.postcode(),
        )


def _phone(serial: int) -> str:
    """A valid GB mobile number of its own for every serial, as people write them."""
    digits = f"0740{serial:07d}"
    return f"{digits[:5]} {digits[5:]}"


def _client_values(person: Person) -> dict[str, Any]:
    """The client columns, the normalised keys computed as the service computes them."""
    first, last = normalise.collapse(person.first_name), normalise.collapse(person.last_name)
    phone = normalise.phone_e164(person.phone, COUNTRY)
    return {
        "title": person.title,
        "first_name": first,
        "last_name": last,
        "email": person.email,
        "phone": phone,
        "address_line1": normalise.collapse(person.line1),
        "address_line2": None,
        "address_city": normalise.collapse(person.city),
        "address_region": None,
        "address_postcode": normalise.postcode(person.postcode, COUNTRY),
        "address_country": COUNTRY,
        "referral_source": None,
        "email_key": normalise.email_key(person.email),
        "phone_key": phone,
        "first_name_key": normalise.name_key(first),
        "last_name_key": normalise.name_key(last),
        "postcode_key": normalise.postcode_key(person.postcode, COUNTRY),
    }


# --- the tenant and the services --------------------------------------------------------------


@dataclass(frozen=True)
class Clinic:
    base: str  # …/v1/clinics/{id}
    clinic_id: uuid.UUID
    group_id: uuid.UUID
    app_id: uuid.UUID
    headers: dict[str, str]


# --- (b) does this client exist? --------------------------------------------------------------


async def _load_group(pool: asyncpg.Pool, clinic: Clinic, people: Sequence[Person]) -> float:
    """Clients straight into the table with COPY; the seconds it took."""
    started = time.perf_counter()
    columns = ["id", "group_id", "registered_clinic_id", *store.CLIENT_COLUMNS]
    records = []
    for person in people:
        values = _client_values(person)
        records.append(
            (
                _loaded_id(person),
                clinic.group_id,
                clinic.clinic_id,
                *(values[c] for c in store.CLIENT_COLUMNS),
            )
        )
    async with pool.acquire() as conn:
        await conn.copy_records_to_table(
            "clients", records=records, columns=columns, schema_name="registrations"
        )
        await conn.execute("ANALYZE clients")
    return time.perf_counter() - started


def _loaded_id(person: Person) -> uuid.UUID:
    """A loaded client's id, derived from its serial so that expected answers can name it."""
    return uuid.UUID(int=(0xB3 << 120) | person.serial)


@dataclass(frozen=True)
class MatchCase:
    kind: str  # what the request is meant to hit
    body: bytes
    expected: str  # none, possible or exact
    client_id: uuid.UUID | None  # for an exact match


def _shout(text: str) -> str:
    return f"  {text.upper()} "


def _match_cases(people: People, loaded: Sequence[Person], count: int) -> list[MatchCase]:
    """A mix of exact, possible and no matches, typed differently from how they were stored."""
    rng = random.Random(31)
    plan = [
        ("exact: e-mail", 0.3),
        ("exact: phone + last name", 0.1),
        ("possible: phone", 0.1),
        ("possible: full name", 0.1),
        ("possible: last name + postcode", 0.1),
        ("none", 0.3),
    ]
    kinds = [k for k, share in plan for _ in range(round(count * share))]
    kinds = (kinds + ["none"] * count)[:count]
    rng.shuffle(kinds)
    cases = []
    for i, kind in enumerate(kinds):
        known = rng.choice(loaded)
        unknown = people.person(UNREGISTERED + i, last_name=rng.choice(UNKNOWN_SURNAMES))
        body: dict[str, str] = {
            "email": unknown.email,
            "phone": unknown.phone,
            "first_name": unknown.first_name,
            "last_name": unknown.last_name,
            "postcode": unknown.postcode,
        }
        expected, client_id = kind.partition(":")[0], None
        if kind == "exact: e-mail":
            body.update(
                email=known.email.upper(),
                phone="+44 " + known.phone[1:],
                first_name=known.first_name,
                last_name=known.last_name,
                postcode=known.postcode.lower().replace(" ", ""),
            )
            client_id = _loaded_id(known)
        elif kind == "exact: phone + last name":
            body.update(phone=known.phone.replace(" ", ""), last_name=_shout(known.last_name))
            client_id = _loaded_id(known)
        elif kind == "possible: phone":
            body.update(phone=known.phone)
        elif kind == "possible: full name":
            body.update(first_name=known.first_name.lower(), last_name=known.last_name)
        elif kind == "possible: last name + postcode":
            body.update(last_name=known.last_name, postcode=known.postcode)
        cases.append(MatchCase(kind, json.dumps(body).encode(), expected, client_id))
    return cases


def _bare_match_keys(body: dict[str, Any], country: str) -> dict[str, str | None]:
    """The keys the match query compares, from the same fields as the service reads."""

    def text(name: str) -> str | None:
        value = body.get(name)
        return value.strip() if isinstance(value, str) and value.strip() else None

    email, phone, first, last, postcode = (
        text(n) for n in ("email", "phone", "first_name", "last_name", "postcode")
    )
    return {
        "email_key": normalise.email_key(email) if email else None,
        "phone_key": normalise.phone_e164(phone, country) if phone else None,
        "first_name_key": normalise.name_key(first) if first else None,
        "last_name_key": normalise.name_key(last) if last else None,
        "postcode_key": normalise.postcode_key(postcode, country) if postcode else None,
    }


def baseline_app(dsn: str, clinic_id: uuid.UUID) -> web.Application:
    """The match without the platform: JSON in, the service's keys and query, JSON out."""
    app = web.Application()
    pool_key = web.AppKey("pool", asyncpg.Pool)
    clinic: dict[str, Any] = {}

    async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(
            dsn, schema="registrations", min_size=2, max_size=RegistrationsSettings().db_pool_max
        )
        async with pool.acquire() as conn:
            row = await store.get_clinic(conn, clinic_id)
        assert row is not None
        clinic.update(group_id=row["group_id"], country=str(row["country"]).strip())
        app[pool_key] = pool
        yield
        await pool.close()

    async def handler(request: web.Request) -> web.Response:
        keys = _bare_match_keys(await request.json(), clinic["country"])
        async with request.app[pool_key].acquire() as conn:
            row = await store.match(conn, clinic["group_id"], **keys)
        exact = row["by_email"] or row["by_phone_name"]
        if exact is not None:
            result = "exact"
        elif row["phone"] or row["full_name"] or row["name_postcode"]:
            result = "possible"
        else:
            result = "none"
        return web.json_response(
            {"result": result, "client_id": str(exact) if exact else None},
            headers={"Cache-Control": "no-store"},
        )

    app.cleanup_ctx.append(pool_ctx)
    app.router.add_post("/v1/clinics/{clinic_id}/registrations/match", handler)
    return app


@dataclass
class MatchRun:
    latencies: list[float]
    errors: int
    answers: Counter[str]
    wrong: Counter[str]  # kind of request whose answer was not the expected one


async def _match_sequence(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], cases: Sequence[MatchCase]
) -> MatchRun:
    run = MatchRun([], 0, Counter(), Counter())
    for case in cases:
        started = time.perf_counter()
        async with session.post(url, data=case.body, headers=headers) as response:
            body = await response.read()
            status = response.status
        run.latencies.append(time.perf_counter() - started)
        if status != 200:
            run.errors += 1
            run.answers[str(status)] += 1
            continue
        answer = json.loads(body)
        run.answers[answer["result"]] += 1
        named = answer.get("client_id")
        if answer["result"] != case.expected or (
            case.client_id is not None and named != str(case.client_id)
        ):
            run.wrong[case.kind] += 1
    return run


def _sequential_result(name: str, run: MatchRun) -> LoadResult:
    ordered = sorted(run.latencies)
    return LoadResult(
        name,
        len(ordered) / sum(ordered),
        statistics.median(ordered) * 1000,
        _percentile(ordered, 0.99) * 1000,
        run.errors,
        "aiohttp client, one keep-alive connection, requests one after another",
    )


async def _measure_match(
    clinic: Clinic, pool: asyncpg.Pool, dsn: str, people: People
) -> tuple[list[LoadResult], list[str]]:
    """(b): load the group, then the service and its baseline in alternating blocks."""
    loaded = [people.person(LOADED + i) for i in range(GROUP_CLIENTS)]
    load_seconds = await _load_group(pool, clinic, loaded)
    in_group = await pool.fetchval(
        "SELECT count(*) FROM clients WHERE group_id = $1", clinic.group_id
    )
    cases = _match_cases(people, loaded, MATCH_REQUESTS)
    headers = {**clinic.headers, "Content-Type": "application/json"}
    service_url = f"{clinic.base}/registrations/match"
    port = free_port()
    path = service_url.split("/v1/", 1)[1]
    bare_url = f"http://127.0.0.1:{port}/v1/{path}"
    service = MatchRun([], 0, Counter(), Counter())
    bare = MatchRun([], 0, Counter(), Counter())
    connector = aiohttp.TCPConnector(limit=1)
    with server_process(
        ["-m", "bench.registrations", str(port), str(clinic.clinic_id)], {"DATABASE_URL": dsn}
    ):
        await wait_http(f"http://127.0.0.1:{port}/")
        async with aiohttp.ClientSession(connector=connector) as session:
            for url in (service_url, bare_url):
                await _match_sequence(session, url, headers, cases[:50])
            block = max(1, len(cases) // MATCH_BLOCKS)
            for start in range(0, len(cases), block):
                part = cases[start : start + block]
                for run, url in ((bare, bare_url), (service, service_url)):
                    done = await _match_sequence(session, url, headers, part)
                    run.latencies += done.latencies
                    run.errors += done.errors
                    run.answers.update(done.answers)
                    run.wrong.update(done.wrong)
    rows = [_sequential_result(MATCH, service), _sequential_result(MATCH_BARE, bare)]
    expected = Counter(c.expected for c in cases)
    notes = [
        f"group: {in_group} clients, {GROUP_CLIENTS} of them bulk-loaded with COPY in "
        f"{load_seconds:.1f} s (keys computed with services.registrations.normalise); "
        f"{len(COMMON_SURNAMES)} common surnames share {COMMON_SHARE:.0%} of them "
        f"(the most common about {_most_common_share(loaded):.1%})",
        f"match requests: {dict(Counter(c.kind for c in cases))}; expected answers "
        f"{dict(expected)}",
        f"service answers: {dict(service.answers)}; not as expected: "
        f"{dict(service.wrong) or 'none'}",
        f"bare answers: {dict(bare.answers)}; not as expected: {dict(bare.wrong) or 'none'}",
    ]
    return rows, notes


def _most_common_share(loaded: Sequence[Person]) -> float:
    return Counter(p.last_name for p in loaded).most_common(1)[0][1] / len(loaded)


# --- (a) registration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """One client with one pet: the request body and the rows the bare loop writes for it."""

    key: str
    body: bytes
    client_id: uuid.UUID
    patient_id: uuid.UUID
    client: dict[str, Any]
    patient: dict[str, Any]
    digest: bytes


def _registrations(people: People, first_serial: int, count: int) -> list[Registration]:
    out = []
    born = date(2020, 1, 1)
    for i in range(count):
        person = people.person(first_serial + i)
        pet: dict[str, Any] = {
            "name": ("Rex", "Bella", "Milo", "Luna")[i % 4],
            "species": "Dog",
            "breed": "Labrador Retriever",
            "sex": "female",
            "date_of_birth": (born + timedelta(days=i % 1500)).isoformat(),
            "neutered": True,
            "microchip": f"826{first_serial + i:012d}",
        }
        body = {
            "client": {
                "title": person.title,
                "first_name": person.first_name,
                "last_name": person.last_name,
                "email": person.email,
                "phone": person.phone,
                "address": {
                    "line1": person.line1,
                    "city": person.city,
                    "postcode": person.postcode,
                },
            },
            "patients": [pet],
        }
        out.append(
            Registration(
                key=uuid.uuid4().hex,
                body=json.dumps(body).encode(),
                client_id=uuid.uuid4(),
                patient_id=uuid.uuid4(),
                client=_client_values(person),
                patient={
                    **pet,
                    "species": "dog",
                    "date_of_birth": date.fromisoformat(pet["date_of_birth"]),
                },
                digest=hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest(),
            )
        )
    return out


async def _post_wrk(clinic: Clinic, registrations: Sequence[Registration]) -> Block:
    """Every registration once, from CLIENTS connections shared by WRK_THREADS wrk threads."""
    return await post_each_once(
        f"{clinic.base}/registrations",
        clinic.headers,
        [(r.key, r.body.decode()) for r in registrations],
        connections=CLIENTS,
        threads=WRK_THREADS,
        keyed=True,
    )


async def _post_aiohttp(
    session: aiohttp.ClientSession, clinic: Clinic, registrations: Sequence[Registration]
) -> Block:
    """Every registration once, from CLIENTS concurrent clients on keep-alive connections."""
    url = f"{clinic.base}/registrations"
    work = deque(registrations)
    base = {**clinic.headers, "Content-Type": "application/json"}
    statuses: Counter[str] = Counter()
    latencies: list[float] = []

    async def client() -> None:
        while work:
            r = work.popleft()
            headers = {**base, "Idempotency-Key": r.key, "X-Request-Id": r.key}
            started = time.perf_counter()
            try:
                async with session.post(url, data=r.body, headers=headers) as response:
                    await response.read()
                    code = str(response.status)
                    if response.headers.get("Idempotent-Replayed"):
                        code += " replayed"
            except aiohttp.ClientError as exc:
                code = type(exc).__name__
            statuses[code] += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(min(CLIENTS, len(registrations)))))
    return Block(len(registrations), statuses, latencies, time.perf_counter() - started)


async def _bare_write(conn: Any, clinic: Clinic, r: Registration) -> None:
    """The service's own insert statements and outbox emit, in one transaction."""
    async with conn.transaction():
        await store.insert_client(
            conn, r.client_id, group_id=clinic.group_id, clinic_id=clinic.clinic_id, values=r.client
        )
        await store.insert_patient(
            conn, r.patient_id, group_id=clinic.group_id, client_id=r.client_id, values=r.patient
        )
        await store.insert_create_request(
            conn,
            clinic.app_id,
            clinic.clinic_id,
            "registration",
            r.key,
            request_hash=r.digest,
            client_id=r.client_id,
            resource_id=r.client_id,
        )
        now = datetime.now(UTC).isoformat()
        aggregate = f"client:{r.client_id}"
        await emit(
            conn,
            events.CLIENT_REGISTERED,
            {
                "client_id": str(r.client_id),
                "group_id": str(clinic.group_id),
                "clinic_id": str(clinic.clinic_id),
                **{k: r.client[k] for k in ("title", "first_name", "last_name", "email", "phone")},
                "changed_at": now,
            },
            aggregate=aggregate,
            clinic_id=clinic.clinic_id,
        )
        await emit(
            conn,
            events.PATIENT_REGISTERED,
            {
                "patient_id": str(r.patient_id),
                "client_id": str(r.client_id),
                "group_id": str(clinic.group_id),
                **{k: r.patient[k] for k in ("name", "species", "breed")},
                "changed_at": now,
            },
            aggregate=aggregate,
            clinic_id=clinic.clinic_id,
        )


async def _bare_all(
    pool: asyncpg.Pool, clinic: Clinic, registrations: Sequence[Registration]
) -> Block:
    """The same rows from CLIENTS concurrent tasks on the pool."""
    work = deque(registrations)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []

    async def task() -> None:
        while work:
            r = work.popleft()
            started = time.perf_counter()
            try:
                async with pool.acquire() as conn:
                    await _bare_write(conn, clinic, r)
                statuses["ok"] += 1
            except asyncpg.PostgresError as exc:
                statuses[type(exc).__name__] += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(task() for _ in range(min(CLIENTS, len(registrations)))))
    return Block(len(registrations), statuses, latencies, time.perf_counter() - started)


@dataclass(frozen=True)
class Creation:
    name: str
    count: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def per_second(self) -> float:
        return self.count / self.seconds


def _creation(name: str, blocks: Sequence[Block], ok: str) -> Creation:
    ordered = sorted(latency for b in blocks for latency in b.latencies)
    count = sum(b.count for b in blocks)
    return Creation(
        name,
        count,
        sum(b.seconds for b in blocks),
        statistics.median(ordered) * 1000,
        _percentile(ordered, 0.99) * 1000,
        count - sum(b.statuses[ok] for b in blocks),
    )


def _parts(items: Sequence[Registration], blocks: int) -> Iterator[Sequence[Registration]]:
    for block in range(blocks):
        yield items[block * len(items) // blocks : (block + 1) * len(items) // blocks]


async def _measure_registration(
    session: aiohttp.ClientSession, pool: asyncpg.Pool, clinic: Clinic, people: People
) -> tuple[list[Creation], str, list[str]]:
    """(a): warm both up, then the service and the bare loop take turns in blocks."""
    use_wrk = shutil.which("wrk") is not None
    http = _registrations(people, REGISTERED_HTTP, WARM_UP + REGISTRATIONS)
    bare = _registrations(people, REGISTERED_BARE, WARM_UP + REGISTRATIONS)

    async def post(registrations: Sequence[Registration]) -> Block:
        if use_wrk:
            return await _post_wrk(clinic, registrations)
        return await _post_aiohttp(session, clinic, registrations)

    await post(http[:WARM_UP])
    await _bare_all(pool, clinic, bare[:WARM_UP])
    http_blocks: list[Block] = []
    bare_blocks: list[Block] = []
    drains: list[tuple[int, float]] = []
    for http_part, bare_part in zip(
        _parts(http[WARM_UP:], BLOCKS), _parts(bare[WARM_UP:], BLOCKS), strict=True
    ):
        # Each row starts with the relay idle: neither pays for the other's events.
        await _drain_outbox(pool)
        bare_blocks.append(await _bare_all(pool, clinic, bare_part))
        await _drain_outbox(pool)
        http_blocks.append(await post(http_part))
        drains.append(await _drain_outbox(pool))
    rows = [
        _creation(REGISTER, http_blocks, "201"),
        _creation(REGISTER_BARE, bare_blocks, "ok"),
    ]
    outcomes = Counter[str]()
    for b in http_blocks:
        outcomes.update(b.statuses)
    bare_outcomes = Counter[str]()
    for b in bare_blocks:
        bare_outcomes.update(b.statuses)
    stored = await pool.fetchval(
        "SELECT count(*) FROM create_requests WHERE application_id = $1 AND idempotency_key = "
        "ANY($2::text[])",
        clinic.app_id,
        [r.key for r in http[WARM_UP:]],
    )
    # The outbox is empty when an HTTP block starts: whatever waits at its end, the relay did
    # not publish while the registrations came in.
    written = 2 * rows[0].count
    left, waited = sum(d[0] for d in drains), sum(d[1] for d in drains)
    generator = (
        f"wrk, {WRK_THREADS} threads, {CLIENTS} keep-alive connections, every body and key sent "
        "once, each request timed by the Lua script"
        if use_wrk
        else f"aiohttp client, {CLIENTS} keep-alive connections"
    )
    notes = [
        f"HTTP answers: {dict(outcomes)}; clients the service stored for them: {stored}; "
        f"bare outcomes: {dict(bare_outcomes)}",
        f"outbox relay (in the service's process; it publishes the bare loop's events too, and "
        "the bench waits for an empty outbox before each block): during the HTTP blocks it "
        f"published {written - left} of the {written} events the registrations wrote "
        f"({(written - left) / rows[0].seconds:.0f}/s against "
        f"{written / rows[0].seconds:.0f}/s written); the other {left} took {waited:.1f} s "
        "once the load stopped",
    ]
    return rows, generator, notes


async def _drain_outbox(pool: asyncpg.Pool, within: float = 60.0) -> tuple[int, float]:
    """Wait until the relay has published every event: (events waiting, seconds waited)."""
    query = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
    started = time.perf_counter()
    waiting = first = int(await pool.fetchval(query))
    while waiting and time.perf_counter() - started < within:
        await asyncio.sleep(0.05)
        waiting = int(await pool.fetchval(query))
    if waiting:
        raise RuntimeError(f"the relay left {waiting} events unpublished for {within:.0f} s")
    return first, time.perf_counter() - started


def _creation_table(rows: list[Creation], generator: str) -> str:
    bare = next(r for r in rows if r.name == REGISTER_BARE).per_second
    return _markdown(
        f"Registration — {REGISTRATIONS} clients per row, one pet each, {CLIENTS} concurrent "
        f"clients, {GROUP_CLIENTS} clients already in the group",
        ["case", "clients", "registrations/s", "vs bare", "p50 ms", "p99 ms", "errors"],
        [
            [
                r.name,
                str(r.count),
                f"{r.per_second:.0f}",
                f"{r.per_second / bare:.2f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                str(r.errors),
            ]
            for r in rows
        ],
        f"HTTP row: {generator}; bare row: {CLIENTS} tasks on a pool of "
        f"{RegistrationsSettings().db_pool_max} (the service's size); the rows took turns in "
        f"{BLOCKS} blocks, every row measured in this run",
    )


# --- the run ----------------------------------------------------------------------------------


async def run() -> tuple[str, tuple[list[Creation], list[LoadResult]]]:
    people = People(seed=20)
    async with bench_database() as dsn:
        tenant = await bench_tenant(
            dsn, scopes=["registrations:write", "clients:read"], country=COUNTRY
        )
        # The bench measures registrations, not the match allowance either.
        allowance = {"VETGATE_MATCH_RATE": "1e9", "VETGATE_MATCH_BURST": "1000000000"}
        async with bench_platform(
            dsn, "registrations", queues=("registrations.directory",), env=allowance
        ) as platform:
            auth_url, registrations_url = platform.auth_url, str(platform.service_url)
            pool = await create_pool(
                dsn,
                schema="registrations",
                min_size=2,
                max_size=RegistrationsSettings().db_pool_max,
            )
            try:
                async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=CLIENTS)
                ) as session:
                    token = await _token(
                        session, auth_url, (tenant.client_id, tenant.secret, str(tenant.clinic_id))
                    )
                    clinic = Clinic(
                        base=f"{registrations_url}/v1/clinics/{tenant.clinic_id}",
                        clinic_id=tenant.clinic_id,
                        group_id=tenant.group_id,
                        app_id=_app_id(token),
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    # The first request brings the clinic into the service's directory.
                    async with session.get(
                        f"{clinic.base}/registration-form", headers=clinic.headers
                    ) as response:
                        if response.status != 200:
                            raise RuntimeError(f"form: {response.status} {await response.text()}")
                    matching, match_notes = await _measure_match(clinic, pool, dsn, people)
                    creation, generator, notes = await _measure_registration(
                        session, pool, clinic, people
                    )
            finally:
                await pool.close()
    report = "\n\n".join(
        [
            _creation_table(creation, generator),
            table(
                f"Duplicate check — {MATCH_REQUESTS} requests each, {GROUP_CLIENTS} clients in "
                "the group, exact / possible / no matches mixed",
                matching,
                baseline=MATCH_BARE,
            ),
            "\n".join(f"- {n}" for n in [*notes, *match_notes, *_verdicts(creation, matching)]),
        ]
    )
    return report, (creation, matching)


def _verdicts(creation: list[Creation], matching: list[LoadResult]) -> list[str]:
    rate = next(r for r in creation if r.name == REGISTER).per_second
    p99 = next(r for r in matching if r.name == MATCH).p99_ms
    return [
        f"registration: {rate:.0f}/s against a target of ≥ 800/s: "
        f"{'met' if rate >= 800 else 'not met'}",
        f"duplicate check: p99 {p99:.2f} ms against a target of ≤ 15 ms: "
        f"{'met' if p99 <= 15 else 'not met'}",
    ]


if __name__ == "__main__":
    port, clinic_id = int(sys.argv[1]), uuid.UUID(sys.argv[2])
    web.run_app(
        baseline_app(os.environ["DATABASE_URL"], clinic_id),
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
    )
