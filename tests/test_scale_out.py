"""Every service as two processes behind one gateway process, with no change to the services.

Nine processes: two copies each of auth, bookings, registrations and callbacks (``vetgate run
<service> --port``), and ``vetgate run gateway`` in front of them. Partners reach the gateway only.
Internal calls (JWKS, the revocation and access snapshots, the clinic directory) are not routed by
the gateway, so copy *i* of each resource service is pointed at auth copy *i* (VETGATE_AUTH_URL):
both auth copies serve internal traffic, and the issuer is the gateway's base URL.

Through that: the demo partner plays its whole flow, then pairs of booking requests race for the
same slots. Exactly one of each pair wins, the database holds no overlapping live booking, every
booking made produced exactly one booking.created webhook (and no webhook names a booking that
does not exist), and both bookings copies served requests. The gateway's own multi-copy rules
(round robin, the next copy on a refused connection, a dropped request repeated only when that is
safe) are checked first against small in-process upstreams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from services import demo, registry, sandbox
from services.gateway import (
    IDEMPOTENT_METHODS,
    UPSTREAMS_ENV,
    Copies,
    create_gateway,
    parse_upstreams,
    upstreams_from,
)
from shared.errors import PROBLEM_BASE, PROBLEM_CONTENT_TYPE
from shared.scopes import CLINIC_SCOPES
from tests.conftest import Admin, access_token
from tests.polling import eventually
from tests.test_cli import ok, process_env, vetgate, vetgate_command
from tests.test_topology import Child, free_port, spawn, stop, wait_until_ready

COPIES = 2
LONDON = ZoneInfo("Europe/London")
#: Slots raced for, two requests each: 100 booking requests at once.
CONTENDED_SLOTS = 50
SLOT_MINUTES = 15
LIVE = ("booked", "confirmed", "arrived")


# --- the gateway's rules for several copies, against in-process upstreams -------------------------


def copy_app(name: str) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"copy": name, "method": request.method})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


@dataclass
class Dropper:
    """An upstream that reads a request, then closes the connection without answering."""

    url: str = ""
    received: list[str] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.received.append(head.split(b" ", 1)[0].decode())
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def dropper() -> AsyncIterator[Dropper]:
    found = Dropper()
    server = await asyncio.start_server(found.handle, "127.0.0.1", 0)
    found.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield found
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def every_service(bookings: list[str], other: str) -> dict[str, list[str]]:
    return {
        name: ([*bookings] if name == "bookings" else [other]) for name in registry.SERVICE_NAMES
    }


BOOKINGS_PATH = "/v1/clinics/9ead7be5-f1a9-5a91-811e-f3a6ef65573e/bookings"


async def problem(r: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    assert r.status == status, await r.text()
    assert r.content_type == PROBLEM_CONTENT_TYPE
    body: dict[str, Any] = await r.json(content_type=None)
    assert body["type"] == PROBLEM_BASE + "upstream-unavailable"
    assert r.headers["Retry-After"] == "2"
    return body


async def test_requests_go_round_robin_across_copies(http: aiohttp.ClientSession) -> None:
    async with (
        serving(copy_app("a")) as a,
        serving(copy_app("b")) as b,
        serving(create_gateway(every_service([a, b], a))) as gateway,
    ):
        seen = []
        for method in ("GET", "POST", "GET", "PUT", "DELETE", "POST"):
            async with http.request(method, gateway + BOOKINGS_PATH) as r:
                assert r.status == 200
                seen.append((await r.json())["copy"])
    assert seen == ["a", "b", "a", "b", "a", "b"]


@pytest.mark.parametrize("headers", [{}, {"Idempotency-Key": "k1"}])
async def test_a_refused_connection_sends_any_request_to_the_next_copy(
    http: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    """Nothing reached a copy that refused the connection, so even a POST without a key is safe
    to send to the next one; the refusing copy is then passed over for a while."""
    async with (
        serving(copy_app("b")) as b,
        serving(create_gateway(every_service([closed_port_url(), b], b))) as gateway,
    ):
        for _ in range(4):
            async with http.post(gateway + BOOKINGS_PATH, json={}, headers=headers) as r:
                assert r.status == 200, await r.text()
                assert (await r.json())["copy"] == "b"


def test_a_copy_that_refused_goes_last_until_its_fail_timeout_passes() -> None:
    now = [100.0]
    copies = Copies(["http://a", "http://b", "http://c"], fail_timeout=5.0, clock=lambda: now[0])
    assert copies.pick() == ["http://a", "http://b"]
    copies.refused("http://b")
    assert copies.pick() == ["http://c", "http://a"]
    assert copies.pick() == ["http://c", "http://a"]
    assert copies.pick() == ["http://a", "http://c"]
    now[0] += 5.1
    assert copies.pick() == ["http://b", "http://c"]
    copies.refused("http://a")
    copies.answered("http://a")
    assert copies.pick() == ["http://c", "http://a"]
    # One copy: no second try, whatever happened to it.
    single = Copies(["http://only"])
    single.refused("http://only")
    assert single.pick() == ["http://only"]


@pytest.mark.parametrize(
    ("method", "headers", "repeated"),
    [
        ("POST", {}, False),
        ("PATCH", {}, False),
        ("POST", {"Idempotency-Key": "key-1"}, True),
        ("GET", {}, True),
        ("PUT", {}, True),
        ("DELETE", {}, True),
    ],
)
async def test_a_request_dropped_after_it_was_sent_is_repeated_only_when_safe(
    http: aiohttp.ClientSession, method: str, headers: dict[str, str], repeated: bool
) -> None:
    async with (
        dropper() as dropping,
        serving(copy_app("b")) as b,
        serving(create_gateway(every_service([dropping.url, b], b))) as gateway,
    ):
        # The first request of a new gateway goes to the first copy: the one that drops it.
        async with http.request(method, gateway + BOOKINGS_PATH, headers=headers) as r:
            if repeated:
                assert r.status == 200, await r.text()
                assert (await r.json())["copy"] == "b"
            else:
                body = await problem(r, 502)
                assert "may or may not have taken effect" in body["detail"]
        if method in IDEMPOTENT_METHODS:
            # aiohttp itself repeats an idempotent request once on a new connection to the same
            # copy (the usual cause is a kept-alive connection closed under it).
            assert dropping.received in ([method], [method, method])
        else:
            # Sent exactly once to the copy that dropped it; the key made the next copy safe.
            assert dropping.received == [method]


async def test_every_copy_refusing_is_a_quick_503(http: aiohttp.ClientSession) -> None:
    async with (
        serving(copy_app("a")) as a,
        serving(
            create_gateway(every_service([closed_port_url(), closed_port_url()], a))
        ) as gateway,
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with http.post(gateway + BOOKINGS_PATH, json={}) as r:
            body = await problem(r, 503)
        assert loop.time() - started < 2.0
        assert "bookings" in body["detail"]
        async with http.get(gateway + "/v1/events") as r:
            assert r.status == 200


def test_upstreams_from_arguments_and_environment() -> None:
    env = {
        UPSTREAMS_ENV: "auth=http://127.0.0.1:1,http://127.0.0.1:2/ ;"
        "bookings=http://b:3\nregistrations=http://r:4 callbacks=http://c:5"
    }
    assert upstreams_from(["bookings=http://x:6,http://y:7"], env) == {
        "auth": ("http://127.0.0.1:1", "http://127.0.0.1:2"),
        "bookings": ("http://x:6", "http://y:7"),
        "registrations": ("http://r:4",),
        "callbacks": ("http://c:5",),
    }
    with pytest.raises(ValueError, match="no upstream for registrations, callbacks"):
        upstreams_from(["auth=http://a:1", "bookings=http://b:1"], {})
    for wrong in ("auth", "gateway=http://a:1", "auth=", "auth=a:1", "auth=http://a:1/v1"):
        with pytest.raises(ValueError, match=re.escape(repr(wrong))):
            parse_upstreams([wrong])


# --- nine processes ------------------------------------------------------------------------------


@dataclass
class Cluster:
    base: str
    env: dict[str, str]
    gateway: Child
    copies: dict[str, list[tuple[str, Child]]]
    credentials: dict[str, Any] = field(default_factory=dict)

    def urls(self, service: str) -> list[str]:
        return [url for url, _ in self.copies[service]]


def distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture(scope="module")
async def cluster(
    overrides: dict[str, Any], database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Cluster]:
    names = registry.SERVICE_NAMES
    ports = distinct_free_ports(COPIES * len(names) + 1)
    base = f"http://127.0.0.1:{ports.pop()}"
    env = process_env(
        overrides,
        database_url,
        VETGATE_ISSUER=base,
        VETGATE_HOST="127.0.0.1",
        VETGATE_LOG_LEVEL="INFO",
        VETGATE_OUTBOX_POLL_SECONDS="0.2",
        VETGATE_WEBHOOK_ALLOWED_HOSTS='["127.0.0.1"]',
        # Eight processes share the server's connections with the rest of the suite.
        VETGATE_DB_POOL_MIN="1",
        VETGATE_DB_POOL_MAX="6",
    )
    logs = tmp_path_factory.mktemp("scale-out")
    urls = {
        name: [f"http://127.0.0.1:{ports[i * len(names) + n]}" for i in range(COPIES)]
        for n, name in enumerate(names)
    }
    copies: dict[str, list[tuple[str, Child]]] = {name: [] for name in names}
    gateway: Child | None = None
    try:
        for i in range(COPIES):
            for name in names:
                url = urls[name][i]
                child = await spawn(
                    [*vetgate_command(), "run", name, "--port", url.rsplit(":", 1)[1]],
                    {**env, "VETGATE_AUTH_URL": urls["auth"][i]},
                    logs / f"{name}-{i + 1}.log",
                )
                copies[name].append((url, child))
        # Two services' copies on the command line, the other two from the environment.
        gateway_env = {
            **env,
            UPSTREAMS_ENV: " ".join(
                f"{name}={','.join(urls[name])}" for name in ("registrations", "callbacks")
            ),
        }
        gateway = await spawn(
            [
                *vetgate_command(),
                "run",
                "gateway",
                "--port",
                base.rsplit(":", 1)[1],
                *(f"--upstream={name}={','.join(urls[name])}" for name in ("auth", "bookings")),
            ],
            gateway_env,
            logs / "gateway.log",
        )
        await asyncio.gather(
            wait_until_ready(gateway, [base + "/healthz"]),
            *(
                wait_until_ready(child, [url + "/readyz"])
                for service in copies.values()
                for url, child in service
            ),
        )
        cluster = Cluster(base, env, gateway, copies)
        cluster.credentials = await ok("seed-sandbox", "--json", env=env)
        async with asyncpg.create_pool(database_url, min_size=1, max_size=1) as pool:
            await granted_in_callbacks(pool, str(sandbox.GRANT_ID))
        yield cluster
    finally:
        children = [child for service in copies.values() for _, child in service]
        await asyncio.gather(
            *(stop(child) for child in [*children, *([gateway] if gateway else [])])
        )


async def granted_in_callbacks(db: asyncpg.Pool, grant_id: str) -> None:
    """Wait until the callbacks projection holds a grant: webhooks and the feed follow grants."""
    await eventually(
        lambda: db.fetchval(
            "SELECT count(*) FROM callbacks.grants WHERE grant_id = $1 AND NOT revoked",
            uuid.UUID(grant_id),
        ),
        f"grant {grant_id} in the callbacks projection",
        seconds=20,
    )


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    yield pool
    await pool.close()


async def token(
    http: aiohttp.ClientSession,
    cluster: Cluster,
    *,
    credentials: dict[str, Any] | None = None,
    **form: str,
) -> str:
    """An access token from the gateway, for the sandbox application unless told otherwise."""
    return await access_token(http, cluster.base, credentials or cluster.credentials, **form)


def request_counts(metrics: str, method: str, route_suffix: str) -> dict[str, float]:
    """``http_requests_total`` by status for one method and route (matched by its end)."""
    counts: dict[str, float] = defaultdict(float)
    for match in re.finditer(
        # Route labels hold braces of their own ("/v1/clinics/{clinic_id}/bookings").
        r"^http_requests_total\{(.*)\} (\S+)$",
        metrics,
        flags=re.MULTILINE,
    ):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels.get("method") == method and labels.get("route", "").endswith(route_suffix):
            counts[labels["status"]] += float(match.group(2))
    return counts


async def metrics_of(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url + "/metrics") as r:
        assert r.status == 200
        return await r.text()


async def test_every_copy_is_ready_and_the_gateway_spreads_token_requests(
    http: aiohttp.ClientSession, cluster: Cluster
) -> None:
    for name in registry.SERVICE_NAMES:
        for url in cluster.urls(name):
            async with http.get(url + "/healthz") as r:
                assert (await r.json())["service"] == name
    before = [
        sum(request_counts(await metrics_of(http, url), "POST", "/oauth/token").values())
        for url in cluster.urls("auth")
    ]
    for _ in range(4):
        await token(http, cluster)
    after = [
        sum(request_counts(await metrics_of(http, url), "POST", "/oauth/token").values())
        for url in cluster.urls("auth")
    ]
    assert [a - b for a, b in zip(after, before, strict=True)] == [2.0, 2.0]


async def test_the_demo_plays_a_partner_through_the_gateway(
    http: aiohttp.ClientSession, cluster: Cluster, db: asyncpg.Pool
) -> None:
    # A partner application of its own for the sandbox clinic, so that the endpoint, mappings
    # and feed the demo sees are this test's alone.
    clinic = cluster.credentials["clinic_id"]
    app, grant = await Admin(http, cluster.base).application_for(
        clinic, scopes=sorted(CLINIC_SCOPES), name="Demo"
    )
    # The callbacks copies learn of the grant from the auth service's events; the demo subscribes
    # a webhook for the clinic straight away.
    await granted_in_callbacks(db, grant["id"])
    # As a partner would run it: `vetgate demo` against the gateway.
    run = await vetgate(
        "demo",
        "--base-url",
        cluster.base,
        "--client-id",
        app["client_id"],
        "--client-secret",
        app["client_secret"],
        "--clinic-id",
        clinic,
        env=cluster.env,
    )
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    text = run.stdout
    assert "signature verified" in text, text
    for step in range(1, 12):
        assert f"\n{step}. " in "\n" + text, (step, text)
    endpoint = re.search(r"^   endpoint ([0-9a-f-]{36}), secret", text, flags=re.MULTILINE)
    booking = re.search(r"^Done: booking ([0-9a-f-]{36}),", text, flags=re.MULTILINE)
    assert endpoint, text
    assert booking, text
    made = {"endpoint_id": endpoint.group(1), "booking_id": booking.group(1)}

    # Its webhook endpoint's receiver is gone: delete the endpoint so that nothing retries at it.
    app_token = await token(http, cluster, scope="webhooks:manage events:read", credentials=app)
    bearer = {"Authorization": f"Bearer {app_token}"}
    async with http.delete(
        f"{cluster.base}/v1/webhooks/endpoints/{made['endpoint_id']}", headers=bearer
    ) as r:
        assert r.status == 204, await r.text()

    async def booking_events() -> list[tuple[str, int]]:
        async with http.get(cluster.base + "/v1/events?limit=200", headers=bearer) as r:
            assert r.status == 200
            feed = await r.json()
        return [
            (e["type"], e["sequence"])
            for e in feed["items"]
            if e["data"].get("id") == made["booking_id"]
        ]

    async def all_three() -> list[tuple[str, int]] | None:
        found = await booking_events()
        return found if len(found) >= 3 else None

    assert await eventually(all_three, "the demo booking's events in the feed") == [
        ("booking.created", 1),
        ("booking.rescheduled", 2),
        ("booking.cancelled", 3),
    ]


@dataclass
class Webhooks:
    """A partner's receiver: every request kept, answered 204."""

    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def receive(self, request: web.Request) -> web.Response:
        self.received.append(
            ({k.lower(): v for k, v in request.headers.items()}, await request.read())
        )
        return web.Response(status=204)

    def of_type(self, event_type: str) -> list[tuple[dict[str, str], dict[str, Any]]]:
        out = []
        for headers, body in self.received:
            event = json.loads(body)
            if event.get("type") == event_type:
                out.append((headers, event))
        return out


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[Webhooks]:
    hooks = Webhooks()
    app = web.Application()
    app.router.add_post("/hooks", hooks.receive)
    async with serving(app) as url:
        hooks.url = url + "/hooks"
        yield hooks


def racing_day() -> date:
    """A weekday clear of the demo's (which books two to four days ahead)."""
    day = datetime.now(LONDON).date() + timedelta(days=6)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


async def test_concurrent_bookings_through_the_gateway_never_double_book_or_lose_a_webhook(
    http: aiohttp.ClientSession, cluster: Cluster, db: asyncpg.Pool
) -> None:
    clinic = cluster.credentials["clinic_id"]
    c = f"{cluster.base}/v1/clinics/{clinic}"
    clinic_token = await token(http, cluster, clinic_id=clinic)
    bearer = {"Authorization": f"Bearer {clinic_token}"}
    app_bearer = {"Authorization": f"Bearer {await token(http, cluster, scope='webhooks:manage')}"}
    practitioner = str(sandbox.NURSE_ID)
    async with http.get(f"{c}/services?limit=10", headers=bearer) as r:
        services = (await r.json())["items"]
    service = next(
        s
        for s in services
        if practitioner in s["practitioner_ids"] and s["duration_minutes"] == SLOT_MINUTES
    )

    async with webhook_receiver() as hooks:
        async with http.post(
            cluster.base + "/v1/webhooks/endpoints",
            json={
                "url": hooks.url,
                "event_types": ["booking.created"],
                "clinic_ids": [clinic],
                "description": "scale-out test",
            },
            headers={**app_bearer, "Idempotency-Key": f"scale-out-{uuid.uuid4().hex}"},
        ) as r:
            endpoint = await r.json()
            assert r.status == 201, endpoint

        # A day of slots: fifty 15-minute starts from 08:00.
        day = racing_day()
        first = datetime.combine(day, datetime.min.time().replace(hour=8), LONDON)
        starts = [first + timedelta(minutes=SLOT_MINUTES * i) for i in range(CONTENDED_SLOTS)]
        last_end = starts[-1] + timedelta(minutes=SLOT_MINUTES)
        async with http.put(
            f"{c}/practitioners/{practitioner}/slots/{day}",
            json={"slots": [{"start": first.isoformat(), "end": last_end.isoformat()}]},
            headers=bearer,
        ) as r:
            assert r.status == 200, await r.text()
        async with http.get(
            f"{c}/availability",
            params={
                "service_id": service["id"],
                "practitioner_id": practitioner,
                "from": first.isoformat(),
                "to": last_end.isoformat(),
            },
            headers=bearer,
        ) as r:
            found = await r.json()
            assert r.status == 200, found
        bookable = {datetime.fromisoformat(s["start"]) for s in found["slots"]}
        assert set(starts) <= bookable

        before = {
            url: request_counts(await metrics_of(http, url), "POST", "/bookings")
            for url in cluster.urls("bookings")
        }
        attempts_before = {url: await metrics_of(http, url) for url in cluster.urls("callbacks")}

        async def book(start: datetime, contender: int) -> tuple[datetime, int, Any]:
            headers = dict(bearer)
            # Half the partners send an Idempotency-Key, as partners do or do not.
            if contender == 0:
                headers["Idempotency-Key"] = f"race-{uuid.uuid4().hex}"
            body = {
                "practitioner_id": practitioner,
                "service_id": service["id"],
                "start": start.isoformat(),
                "prospect": {
                    "owner": {"first_name": "Race", "last_name": f"Contender{contender}"},
                    "pet": {"name": "Dash", "species": "dog"},
                },
            }
            async with http.post(f"{c}/bookings", json=body, headers=headers) as r:
                return start, r.status, await r.json(content_type=None)

        calls = [(start, contender) for start in starts for contender in (0, 1)]
        random.shuffle(calls)
        results = await asyncio.gather(*(book(start, k) for start, k in calls))

        statuses = Counter(status for _, status, _ in results)
        assert not [r for r in results if r[1] >= 500], statuses
        by_start: dict[datetime, list[tuple[int, Any]]] = defaultdict(list)
        for start, status, body in results:
            by_start[start].append((status, body))
        for start, answers in by_start.items():
            assert sorted(status for status, _ in answers) == [201, 409], (start, answers)
            loser = next(body for status, body in answers if status == 409)
            assert loser["type"] in (
                PROBLEM_BASE + "slot-taken",
                PROBLEM_BASE + "slot-unavailable",
            ), loser
        created = {body["id"] for _, status, body in results if status == 201}
        assert len(created) == CONTENDED_SLOTS

        # Both bookings copies took part, and each request was sent upstream exactly once.
        served = {}
        for url in cluster.urls("bookings"):
            now = request_counts(await metrics_of(http, url), "POST", "/bookings")
            served[url] = {s: now[s] - before[url].get(s, 0.0) for s in now}
        per_copy = [sum(counts.values()) for counts in served.values()]
        assert all(n > 0 for n in per_copy), served
        assert sum(per_copy) == 2 * CONTENDED_SLOTS, served
        assert sum(counts.get("201", 0.0) for counts in served.values()) == CONTENDED_SLOTS

        # The database: the winners are the practitioner's live bookings that day, and no two
        # live bookings of any practitioner overlap.
        live = await db.fetch(
            """
            SELECT id::text FROM bookings.bookings
            WHERE practitioner_id = $1 AND status = ANY($2::text[])
              AND period && tstzrange($3, $4)
            """,
            sandbox.NURSE_ID,
            list(LIVE),
            first,
            last_end,
        )
        assert {row["id"] for row in live} == created
        overlapping = await db.fetch(
            """
            SELECT a.id, b.id FROM bookings.bookings a JOIN bookings.bookings b
              ON a.practitioner_id = b.practitioner_id AND a.id < b.id AND a.period && b.period
            WHERE a.status = ANY($1::text[]) AND b.status = ANY($1::text[])
            """,
            list(LIVE),
        )
        assert overlapping == []
        # One booking.created event per booking made, whichever copy made it.
        emitted = Counter(
            row["booking_id"]
            for row in await db.fetch(
                """
                SELECT payload -> 'data' ->> 'id' AS booking_id FROM bookings.outbox
                WHERE event_type = 'booking.created' AND payload -> 'data' ->> 'id' = ANY($1)
                """,
                list(created),
            )
        )
        assert emitted == dict.fromkeys(created, 1)

        # Every booking made arrives as a signed booking.created webhook.
        def delivered() -> set[str]:
            return {event["data"]["id"] for _, event in hooks.of_type("booking.created")}

        await eventually(
            lambda: created <= delivered(), "a booking.created webhook per booking", 30
        )
        # Time for a late duplicate to show itself.
        await asyncio.sleep(2.0)
        webhooks = hooks.of_type("booking.created")
        ids_by_booking: dict[str, set[str]] = defaultdict(set)
        deliveries: Counter[str] = Counter()
        for headers, event in webhooks:
            ids_by_booking[event["data"]["id"]].add(headers["webhook-id"])
            deliveries[headers["webhook-id"]] += 1
        # A booking's event is one event: never two webhook-ids for the same booking.
        assert {b: len(ids) for b, ids in ids_by_booking.items() if len(ids) > 1} == {}
        # At-least-once allows the same webhook-id again; none happened here.
        repeats = {wid: n for wid, n in deliveries.items() if n > 1}
        assert repeats == {}
        # No webhook for a booking that does not exist, nor for a losing request.
        existing = {
            row["id"]
            for row in await db.fetch(
                "SELECT id::text FROM bookings.bookings WHERE id::text = ANY($1)",
                list(ids_by_booking),
            )
        }
        assert set(ids_by_booking) == existing
        assert set(ids_by_booking) == created
        # Besides them, only the endpoint monitor's ping.
        others = Counter(json.loads(body)["type"] for _, body in hooks.received)
        del others["booking.created"]
        assert set(others) <= {"ping"}, others
        for headers, body in hooks.received:
            assert demo.verify_webhook(endpoint["secret"], headers, body)

        # callbacks: one delivery per event for this endpoint, done in one attempt.
        async def outcomes() -> Counter[tuple[str, int]]:
            rows = await db.fetch(
                "SELECT status, attempts FROM callbacks.deliveries WHERE endpoint_id = $1",
                uuid.UUID(endpoint["id"]),
            )
            return Counter((r["status"], r["attempts"]) for r in rows)

        async def all_succeeded_at_once() -> bool:
            return await outcomes() == Counter({("succeeded", 1): CONTENDED_SLOTS})

        await eventually(all_succeeded_at_once, "every delivery recorded as succeeded", 15)

        attempts = {}
        for url in cluster.urls("callbacks"):
            after = await metrics_of(http, url)
            attempts[url] = webhook_successes(after) - webhook_successes(attempts_before[url])
        print(
            "\nbookings POST /bookings per copy:",
            {url: dict(counts) for url, counts in served.items()},
            "\nwebhook successes per callbacks copy:",
            attempts,
            "\nrequests at the receiver by type:",
            dict(Counter(json.loads(body)["type"] for _, body in hooks.received)),
        )
        assert sum(attempts.values()) >= CONTENDED_SLOTS


def webhook_successes(metrics: str) -> float:
    match = re.search(
        r'^vetgate_webhook_attempts_total\{result="success"\} (\S+)$', metrics, flags=re.MULTILINE
    )
    return float(match.group(1)) if match else 0.0


async def test_a_stopped_copy_is_passed_over(http: aiohttp.ClientSession, cluster: Cluster) -> None:
    """One bookings copy goes away: writes and reads still succeed through the other. A POST
    without an Idempotency-Key may go to the next copy too, because a refused connection sent
    nothing."""
    clinic = cluster.credentials["clinic_id"]
    c = f"{cluster.base}/v1/clinics/{clinic}"
    bearer = {"Authorization": f"Bearer {await token(http, cluster, clinic_id=clinic)}"}
    _, second = cluster.copies["bookings"][1]
    await stop(second)
    assert second.process.returncode is not None

    day = racing_day() + timedelta(days=7)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    start = datetime.combine(day, datetime.min.time().replace(hour=10), LONDON)
    # Two in a row: round robin sends one of them to the stopped copy first.
    for k in range(2):
        body = {
            "practitioner_id": str(sandbox.VET_ID),
            "service_id": str(sandbox.VACCINATION_ID),
            "start": (start + timedelta(minutes=SLOT_MINUTES * k)).isoformat(),
            "prospect": {
                "owner": {"first_name": "Solo", "last_name": "Copy"},
                "pet": {"name": "Pip", "species": "cat"},
            },
        }
        async with http.post(f"{c}/bookings", json=body, headers=bearer) as r:
            assert r.status == 201, await r.text()
    for _ in range(4):
        async with http.get(f"{c}/practitioners?limit=5", headers=bearer) as r:
            assert r.status == 200, await r.text()
    refused = [
        line["msg"]
        for line in cluster.gateway.log_lines()
        if "refused the connection for POST" in line.get("msg", "")
    ]
    assert refused, cluster.gateway.log_text()[-3000:]
    assert refused[0].startswith("bookings copy " + cluster.urls("bookings")[1])
    assert refused[0].endswith("trying the next copy")


async def test_no_process_logged_an_error(cluster: Cluster) -> None:
    for name, copies in cluster.copies.items():
        for url, child in copies:
            errors = [
                line
                for line in child.log_lines()
                if line.get("level") in ("error", "critical") or "exc" in line
            ]
            shown = [(e.get("msg"), e.get("exc", "")[-1500:]) for e in errors]
            assert errors == [], (name, url, shown)
            assert "Traceback" not in child.log_text(), (name, url, child.log_text()[-3000:])
    assert "Traceback" not in cluster.gateway.log_text()
