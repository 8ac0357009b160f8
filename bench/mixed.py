"""Mixed workload: partner sessions through the gateway, and the webhooks they cause, with one and
with two copies of every service; the scaling factor.

Three topologies, one after another, each on a database, exchange and queue prefix of its own:

- ``vetgate run all``: the four services and the gateway in one process (the reference);
- one copy of each service (``vetgate run <service> --port``) behind ``vetgate run gateway``;
- two copies of each behind one gateway, copy *i* of a resource service pointed at auth copy *i*
  (as tests/test_scale_out.py runs them). Every process has a pool of at most
  ``POOL_MAX`` connections, so that nine of them fit in Postgres's 100.

In each: one sandbox clinic in Europe/London with 10 practitioners, all offering one 30-minute
service and working Mon–Sat 08:00–18:00, made through the gateway as a partner makes them; a
webhook endpoint for ``booking.created`` of that clinic at ``bench.receiver`` (a process of its
own, answering ``200`` at once). Then wrk drives ``CONNECTIONS`` partner sessions at once through
the gateway for BENCH_SECONDS (default 40), each session:

1. ``POST /oauth/token`` (client credentials, the clinic's token);
2. ``GET …/availability`` for one practitioner over the 3 days from its slot's day;
3. ``POST …/bookings`` with an ``Idempotency-Key`` on that slot: a half hour no other session
   ever takes, so every booking should succeed;

and then the next session begins on the same connection. Each request is timed by its
``X-Request-Id`` (echoed by the services through the gateway). A short warm-up run comes first;
its webhooks are waited for before the measured run. The webhooks of the measured run's bookings
are counted at the receiver (deduplicated by ``webhook-id``) against the bookings the database
gained, with their lag from the event's ``occurred_at`` (stamped when the booking was written)
to their receipt.

The scaling factor is sessions/s with two copies over sessions/s with one; the ``vetgate run all``
row is there to show what splitting into processes buys at all. CPU per process group is read
from /proc over the measured run. BENCH_SECONDS sets the measured run's length,
BENCH_MIXED_CONNECTIONS (default 32) the sessions in flight.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import resource
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as wall_time
from pathlib import Path
from urllib.parse import urlencode

import aiohttp
import asyncpg

from bench.bookings import (
    LONDON,
    POSITIONS,
    WORKDAYS,
    Clinic,
    Slot,
    _app_id,
    _booking_body,
    _call,
    _markdown,
    _percentile,
    _start,
    _token,
    _workdays,
    partner_clinic,
)
from bench.callbacks import (
    Receiver,
    _cpu,
    _cpu_named,
    _machine_busy,
    _projected,
    app_token,
)
from bench.harness import (
    BenchTenant,
    _remove_broker_objects,
    bench_database,
    bench_tenant,
    free_port,
    server_process,
    wait_http,
)
from bench.load import WRK_PRELUDE
from services.registry import SERVICE_NAMES
from shared.db import create_pool

SECONDS = float(os.environ.get("BENCH_SECONDS", "40"))
WARM_UP_SECONDS = 3.0
CONNECTIONS = int(os.environ.get("BENCH_MIXED_CONNECTIONS", "32"))
WRK_THREADS = 2
PRACTITIONERS = 10
SEARCH_DAYS = 3
POOL_MAX = 6
SCOPES = ["bookings:read", "bookings:write"]
QUEUES = ("bookings.projections", "registrations.directory", "callbacks.intake")
# Slots put aside per wrk run, per second of it: no session reuses a slot below this rate.
SLOTS_PER_SECOND = 1000
# After the load, the webhooks still missing are given up once none arrived for this long.
STALL_SECONDS = 20.0
START_SECONDS = 90.0

KINDS = ("token", "search", "book")
KIND_LABELS = {
    "token": "POST /oauth/token",
    "search": f"GET …/availability, 1 practitioner, {SEARCH_DAYS} days",
    "book": "POST …/bookings, Idempotency-Key",
}
EXPECTED = {"token": "200", "search": "200", "book": "201"}


@dataclass(frozen=True)
class Topology:
    name: str
    copies: int  # 0: everything in one ``vetgate run all`` process

    @property
    def processes(self) -> int:
        return 1 if self.copies == 0 else self.copies * len(SERVICE_NAMES) + 1


ALL_IN_ONE = Topology("vetgate run all (one process)", 0)
ONE_COPY = Topology("1 copy of each + gateway", 1)
TWO_COPIES = Topology("2 copies of each + gateway", 2)
TOPOLOGIES = (ALL_IN_ONE, ONE_COPY, TWO_COPIES)


# --- the platform --------------------------------------------------------------------------------


@dataclass
class Platform:
    base: str  # the gateway
    exchange: str
    groups: dict[str, list[int]]  # process group → pids
    logs: dict[str, Path]  # process → its output


def _vetgate() -> list[str]:
    script = Path(sys.executable).with_name("vetgate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _port_block(count: int) -> int:
    """A port such that it and the ``count - 1`` after it are all free (``vetgate run all``)."""
    for _ in range(200):
        port = free_port()
        if port + count <= 65536 and all(_port_free(port + i) for i in range(count)):
            return port
    raise RuntimeError(f"no block of {count} free ports")


def _ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@contextlib.asynccontextmanager
async def _platform(dsn: str, copies: int, folder: Path) -> AsyncIterator[Platform]:
    """The topology's processes, ready; stopped all at once afterwards, and the run's broker
    objects removed."""
    run_id = secrets.token_hex(3)
    exchange, prefix = f"vetgate.bench.{run_id}", f"vetgate-bench-{run_id}"
    if copies == 0:
        gateway_port = _port_block(len(SERVICE_NAMES) + 1)
        urls = {
            name: [f"http://127.0.0.1:{gateway_port + 1 + n}"]
            for n, name in enumerate(SERVICE_NAMES)
        }
    else:
        ports = _ports(copies * len(SERVICE_NAMES) + 1)
        gateway_port = ports.pop()
        urls = {
            name: [f"http://127.0.0.1:{ports[i * len(SERVICE_NAMES) + n]}" for i in range(copies)]
            for n, name in enumerate(SERVICE_NAMES)
        }
    base = f"http://127.0.0.1:{gateway_port}"
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "VETGATE_HOST": "127.0.0.1",
        "VETGATE_ISSUER": base,
        "VETGATE_LOG_LEVEL": "WARNING",
        "VETGATE_EVENTS_EXCHANGE": exchange,
        "VETGATE_QUEUE_PREFIX": prefix,
        "VETGATE_DB_POOL_MIN": "1",
        "VETGATE_DB_POOL_MAX": str(POOL_MAX),
        "VETGATE_TIER_RATES": "[1e9, 1e9, 1e9]",
        "VETGATE_TIER_BURSTS": "[1000000000, 1000000000, 1000000000]",
        "VETGATE_WEBHOOK_ALLOWED_HOSTS": '["127.0.0.1"]',
        # One ping per endpoint when it is made, none during the measurement.
        "VETGATE_PING_INTERVAL_SECONDS": "3600",
        "PYTHONUNBUFFERED": "1",
    }
    procs: list[subprocess.Popen[bytes]] = []
    groups: dict[str, list[int]] = {}
    logs: dict[str, Path] = {}

    def start(label: str, group: str, args: list[str], extra: dict[str, str]) -> None:
        logs[label] = folder / f"{label}.log"
        with logs[label].open("wb") as out:
            proc = subprocess.Popen(
                [*_vetgate(), *args],
                env={**env, **extra},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        groups.setdefault(group, []).append(proc.pid)

    try:
        if copies == 0:
            start("all", "one process", ["run", "all", "--port", str(gateway_port)], {})
        else:
            for i in range(copies):
                for name in SERVICE_NAMES:
                    port = urls[name][i].rsplit(":", 1)[1]
                    extra = {"VETGATE_AUTH_URL": urls["auth"][i]}
                    start(f"{name}-{i + 1}", name, ["run", name, "--port", port], extra)
            upstreams = [f"--upstream={name}={','.join(urls[name])}" for name in SERVICE_NAMES]
            args = ["run", "gateway", "--port", str(gateway_port), *upstreams]
            start("gateway", "gateway", args, {})
        ready = [base + "/healthz"] + [f"{u}/readyz" for us in urls.values() for u in us]
        await asyncio.gather(*(wait_http(url, START_SECONDS) for url in ready))
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        yield Platform(base, exchange, groups, logs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                await asyncio.to_thread(proc.wait, 15)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        await _remove_broker_objects(exchange, [f"{prefix}.{q}" for q in QUEUES])


def _log_sizes(logs: dict[str, Path]) -> dict[str, int]:
    return {label: path.stat().st_size for label, path in logs.items()}


def _log_problems(
    logs: dict[str, Path], start: dict[str, int] | None = None, end: dict[str, int] | None = None
) -> list[str]:
    """Warnings and worse each process logged between two sizes of its output, counted by
    message (its first 160 characters)."""
    found: list[str] = []
    for label, path in logs.items():
        data = path.read_bytes()
        text = data[(start or {}).get(label, 0) : (end or {}).get(label, len(data))].decode(
            errors="replace"
        )
        counts: Counter[str] = Counter()
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                if "Traceback" in line or "Error" in line:
                    counts[line.strip()[:160]] += 1
                continue
            if isinstance(record, dict) and record.get("level") in ("warning", "error", "critical"):
                counts[f"{record['level']}: {str(record.get('msg', ''))[:160]}"] += 1
        found += [f"{label}: {n} × {msg}" for msg, n in counts.most_common(5)]
    return found


# --- the clinic, the partner's endpoint, the slots ----------------------------------------------


async def _endpoint(
    session: aiohttp.ClientSession, base: str, tenant: BenchTenant, dsn: str, url: str
) -> None:
    """The partner's webhook endpoint for the clinic's booking.created events, once the callbacks
    service lets the application see them."""
    token = await app_token(session, base, tenant)
    pool = await create_pool(dsn, schema="callbacks", min_size=1, max_size=1)
    try:
        await _projected(pool, _app_id(token), [tenant.clinic_id])
    finally:
        await pool.close()
    await _call(
        session,
        "POST",
        f"{base}/v1/webhooks/endpoints",
        {"Authorization": f"Bearer {token}"},
        {"url": url, "event_types": ["booking.created"], "clinic_ids": [str(tenant.clinic_id)]},
        201,
    )


def _slots(practitioners: Sequence[uuid.UUID], count: int, skip: int) -> list[Slot]:
    """``count`` distinct half hours after the first ``skip``, from the day after tomorrow on:
    day by day, each half hour of the day for every practitioner in turn (so sessions in flight
    at once spread over the practitioners)."""
    per_day = len(practitioners) * POSITIONS
    first = datetime.now(LONDON).date() + timedelta(days=2)
    workdays = math.ceil((skip + count) / per_day)
    days = _workdays(first, workdays * 7 // len(WORKDAYS) + 7)[:workdays]
    return [
        Slot(
            practitioners[k % len(practitioners)],
            _start(days[k // per_day], k % per_day // len(practitioners)),
        )
        for k in range(skip, skip + count)
    ]


def _slot_lines(clinic: Clinic, slots: Sequence[Slot]) -> str:
    """One line per session: the availability path (its practitioner, 3 days from its slot's
    day) and the booking's JSON body, tab-separated."""
    path = f"/v1/clinics/{clinic.clinic_id}/availability"
    lines = []
    for slot in slots:
        day = datetime.combine(slot.start.date(), wall_time(0), LONDON)
        query = urlencode(
            {
                "service_id": str(clinic.service_id),
                "practitioner_id": str(slot.practitioner_id),
                "from": day.isoformat(),
                "to": (day + timedelta(days=SEARCH_DAYS)).isoformat(),
            }
        )
        lines.append(f"{path}?{query}\t{_booking_body(clinic, slot).decode()}\n")
    return "".join(lines)


# --- the load: wrk, one session after another on each connection --------------------------------

# Sessions rather than connections carry the state: every request names its session and step in
# its X-Request-Id, the services echo it, and the answer puts the session's next step in a queue
# from which the next request of any of the thread's connections is taken (a new session when
# the queue is empty). So CONNECTIONS sessions are always in flight, whatever wrk's threads.
# wrk asks thread 0 for one request before the run, to check it parses: that session is never
# sent, and simply never answered. Arguments: the sessions file (availability path, booking
# body), the thread count, the token request's body, its Authorization header, a tag for the
# request ids and Idempotency-Keys, and the bookings path.
WRK_SCRIPT = (
    WRK_PRELUDE
    + r"""
local KINDS = {"token", "search", "book"}
local slots, sessions, pending = {}, {}, {}
local queue, first, last = {}, 1, 0
local counter, taken = 0, 0
local token_body, basic, tag, bookings
lat_token, lat_search, lat_book = {}, {}, {}
st_token, st_search, st_book = {}, {}, {}
unplaced, wrapped = 0, 0

function init(args)
  local total, line_no = tonumber(args[2]), 0
  token_body, basic, tag, bookings = args[3], args[4], args[5], args[6]
  for line in io.lines(args[1]) do
    if line_no % total == index then
      local search, body = line:match("^([^\t]+)\t(.*)$")
      table.insert(slots, {search, body})
    end
    line_no = line_no + 1
  end
end

local function push(sid, step)
  last = last + 1
  queue[last] = {sid, step}
end

function request()
  local sid, step
  if first <= last then
    sid, step = queue[first][1], queue[first][2]
    queue[first] = nil
    first = first + 1
  else
    counter = counter + 1
    taken = taken + 1
    if taken > #slots then
      taken = 1
      wrapped = wrapped + 1
    end
    sid, step = counter, 1
    sessions[sid] = {slot = slots[taken]}
  end
  local session = sessions[sid]
  local id = tag .. "-" .. index .. "-" .. sid .. "-" .. step
  pending[id] = {step, now(), sid}
  local headers = {["Host"] = wrk.headers["Host"], ["X-Request-Id"] = id}
  if step == 1 then
    headers["Authorization"] = basic
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    return wrk.format("POST", "/oauth/token", headers, token_body)
  end
  headers["Authorization"] = "Bearer " .. session.token
  if step == 2 then
    return wrk.format("GET", session.slot[1], headers)
  end
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = tag .. "-" .. index .. "-" .. sid
  return wrk.format("POST", bookings, headers, session.slot[2])
end

local function record(latencies, statuses, latency, status)
  table.insert(latencies, latency)
  local code = tostring(status)
  statuses[code] = (statuses[code] or 0) + 1
end

function response(status, headers, body)
  local t = now()
  -- The gateway passes the services' header on as "X-Request-ID".
  local id = headers["X-Request-ID"] or headers["X-Request-Id"] or headers["x-request-id"]
  local sent = id and pending[id]
  if not sent then
    unplaced = unplaced + 1
    return
  end
  pending[id] = nil
  local step, started, sid = sent[1], sent[2], sent[3]
  if step == 1 then
    record(lat_token, st_token, t - started, status)
    local token = status == 200 and body:match('"access_token"%s*:%s*"([^"]+)"')
    if token then
      sessions[sid].token = token
      push(sid, 2)
      return
    end
  elseif step == 2 then
    record(lat_search, st_search, t - started, status)
    if status == 200 then
      push(sid, 3)
      return
    end
  else
    record(lat_book, st_book, t - started, status)
  end
  sessions[sid] = nil
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("duration %.6f\n", summary.duration / 1e6))
  io.write(string.format("socket %d %d %d %d\n", e.connect, e.read, e.write, e.timeout))
  for _, t in ipairs(threads) do
    for _, kind in ipairs(KINDS) do
      for code, n in pairs(t:get("st_" .. kind)) do
        io.write(string.format("status %s %s %d\n", kind, code, n))
      end
      io.write("latency " .. kind)
      for _, v in ipairs(t:get("lat_" .. kind)) do io.write(string.format(" %.6f", v)) end
      io.write("\n")
    end
    io.write(string.format("unplaced %d\n", t:get("unplaced")))
    io.write(string.format("wrapped %d\n", t:get("wrapped")))
  end
end
"""
)


@dataclass
class Kind:
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies)

    def pct(self, share: float) -> float:
        return _percentile(sorted(self.latencies), share) * 1000


@dataclass
class Load:
    seconds: float
    kinds: dict[str, Kind]
    socket_errors: Counter[str]
    unplaced: int
    wrapped: int

    @property
    def sessions(self) -> int:
        """Sessions completed: bookings made (201)."""
        return self.kinds["book"].statuses["201"]

    def unexpected(self, kind: str) -> int:
        return sum(n for code, n in self.kinds[kind].statuses.items() if code != EXPECTED[kind])


def _write_files(folder: str, clinic: Clinic, slots: Sequence[Slot]) -> tuple[Path, Path]:
    script, data = Path(folder, "mixed.lua"), Path(folder, "sessions.tsv")
    script.write_text(WRK_SCRIPT)
    data.write_text(_slot_lines(clinic, slots))
    return script, data


async def _wrk(
    base: str, clinic: Clinic, tenant: BenchTenant, slots: Sequence[Slot], seconds: float, tag: str
) -> Load:
    """``CONNECTIONS`` sessions in flight through the gateway at ``base`` for ``seconds``."""
    credentials = base64.b64encode(f"{tenant.client_id}:{tenant.secret}".encode()).decode()
    token_body = urlencode({"grant_type": "client_credentials", "clinic_id": str(clinic.clinic_id)})
    with tempfile.TemporaryDirectory() as folder:
        script, data = _write_files(folder, clinic, slots)
        proc = await asyncio.create_subprocess_exec(
            "wrk",
            f"-t{WRK_THREADS}",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            base,
            "--",
            str(data),
            str(WRK_THREADS),
            token_body,
            f"Basic {credentials}",
            tag,
            f"/v1/clinics/{clinic.clinic_id}/bookings",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), seconds + 60)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            out, err = await proc.communicate()
    return _parse(out.decode(), err.decode())


def _parse(out: str, err: str) -> Load:
    kinds = {kind: Kind() for kind in KINDS}
    socket_errors: Counter[str] = Counter()
    seconds = float("nan")
    unplaced = wrapped = 0
    for line in out.splitlines():
        key, _, rest = line.partition(" ")
        if key == "duration":
            seconds = float(rest)
        elif key == "socket":
            for name, n in zip(("connect", "read", "write", "timeout"), rest.split(), strict=True):
                socket_errors[name] += int(n)
        elif key == "status":
            kind, code, n = rest.split()
            kinds[kind].statuses[code] += int(n)
        elif key == "latency":
            kind, *values = rest.split()
            kinds[kind].latencies += [float(v) for v in values]
        elif key == "unplaced":
            unplaced += int(rest)
        elif key == "wrapped":
            wrapped += int(rest)
    if math.isnan(seconds):
        raise RuntimeError(f"wrk said nothing of use:\n{out}\n{err}")
    return Load(seconds, kinds, socket_errors, unplaced, wrapped)


# --- CPU -----------------------------------------------------------------------------------------

CPU_GROUPS = ("one process", *SERVICE_NAMES, "gateway")
CPU_OTHERS = ("wrk", "receiver", "postgres", "rabbitmq", "bench")


def _machine() -> tuple[float, float]:
    """CPU seconds the whole machine has spent busy (all cores), and of them in interrupts
    (loopback networking's softirqs, which no process is charged with), from /proc/stat."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return _machine_busy(), (fields[5] + fields[6]) / tick


def _processes() -> dict[int, tuple[str, float]]:
    """Every process's name and CPU seconds so far, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat.rsplit(")", 1)[1].split()
        found[int(entry.name)] = (name, (int(rest[11]) + int(rest[12])) / tick)
    return found


def _command(pid: int, name: str) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return name
    return " ".join(a.decode(errors="replace").rsplit("/", 1)[-1] for a in args[:4] if a) or name


class Cpu:
    """Cores each process group used between ``start`` and ``stop``, from /proc; and which
    processes outside the bench kept the machine busy meanwhile."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self._groups = groups
        self._start: dict[str, float] = {}
        self._wall = 0.0
        self._processes: dict[int, tuple[str, float]] = {}
        self.outsiders: list[tuple[str, float]] = []  # command, cores; the busiest first

    def _read(self) -> dict[str, float]:
        now = {name: sum(_cpu(pid) for pid in pids) for name, pids in self._groups.items()}
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it is waited for
        now["wrk"] = children.ru_utime + children.ru_stime
        now["postgres"] = _cpu_named(("postgres",))
        now["rabbitmq"] = _cpu_named(("beam.smp",))
        now["bench"] = time.process_time()
        now["machine"], now["irq"] = _machine()
        return now

    def start(self) -> None:
        self._processes = _processes()
        self._start, self._wall = self._read(), time.perf_counter()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._wall
        end = self._read()
        # Backends that exit meanwhile take their CPU with them: never below nothing.
        cores = {k: max(0.0, end[k] - self._start[k]) / wall for k in end}
        known = sum(v for k, v in cores.items() if k not in ("machine", "irq"))
        cores["other"] = max(0.0, cores["machine"] - cores["irq"] - known)
        ours = {pid for pids in self._groups.values() for pid in pids} | {os.getpid()}
        outside: dict[str, float] = {}
        for pid, (name, used) in _processes().items():
            if pid in ours or name in ("postgres", "beam.smp"):
                continue
            share = (used - self._processes.get(pid, (name, 0.0))[1]) / wall
            if share >= 0.01:
                command = _command(pid, name)
                outside[command] = outside.get(command, 0.0) + share
        self.outsiders = sorted(outside.items(), key=lambda item: -item[1])[:4]
        return cores


# --- one topology --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    topology: Topology
    load: Load
    created: int  # bookings the database gained during the measured run
    webhooks: int  # received, deduplicated by webhook-id
    duplicates: int
    lag_ms: list[float]  # receipt − the event's occurred_at
    last_after: float  # the last webhook's receipt, seconds after the load ended
    cpu: dict[str, float]
    outsiders: list[tuple[str, float]]  # the busiest processes outside the bench, in cores
    startup: list[str]  # what the processes logged (warnings and worse) before the load
    problems: list[str]  # and from the warm-up on

    @property
    def sessions_per_second(self) -> float:
        return self.load.sessions / self.load.seconds

    def lag(self, share: float) -> float:
        return _percentile(sorted(self.lag_ms), share)


async def _bookings(pool: asyncpg.Pool, clinic: Clinic) -> int:
    """The clinic's bookings once the requests still in flight when wrk stopped are done: the
    count unchanged for half a second."""
    query = "SELECT count(*) FROM bookings WHERE clinic_id = $1"
    count: int = await pool.fetchval(query, clinic.clinic_id)
    while True:
        await asyncio.sleep(0.5)
        again: int = await pool.fetchval(query, clinic.clinic_id)
        if again == count:
            return count
        count = again


async def _webhooks(receiver: Receiver, path: str, expected: int) -> int:
    """Until ``expected`` webhooks arrived at ``path``, or none came for ``STALL_SECONDS``."""
    last, changed = -1, time.monotonic()
    while True:
        got = await receiver.count(path)
        if got >= expected:
            return got
        if got != last:
            last, changed = got, time.monotonic()
        elif time.monotonic() - changed > STALL_SECONDS:
            return got
        await asyncio.sleep(0.1)


async def _measure(
    topology: Topology,
    session: aiohttp.ClientSession,
    receiver: Receiver,
    receiver_pid: int,
    folder: Path,
) -> Row:
    today = datetime.now(LONDON).date()
    tag = f"c{topology.copies}"
    path = f"/mixed/{tag}"
    async with bench_database() as dsn:
        tenant = await bench_tenant(dsn, scopes=SCOPES)
        logs_folder = folder / tag
        logs_folder.mkdir()
        async with _platform(dsn, topology.copies, logs_folder) as platform:
            triple = (tenant.client_id, tenant.secret, str(tenant.clinic_id))
            token = await _token(session, platform.base, triple)
            clinic = await partner_clinic(
                session,
                platform.base,
                tenant.clinic_id,
                token,
                today,
                practitioners_count=PRACTITIONERS,
            )
            await _endpoint(session, platform.base, tenant, dsn, receiver.url + path)
            pool = await create_pool(dsn, schema="bookings", min_size=1, max_size=1)
            try:
                warm = round(WARM_UP_SECONDS * SLOTS_PER_SECOND)
                warm_slots = _slots(clinic.practitioners, warm, 0)
                slots = _slots(clinic.practitioners, round(SECONDS * SLOTS_PER_SECOND), warm)
                sizes = _log_sizes(platform.logs)
                await _wrk(platform.base, clinic, tenant, warm_slots, WARM_UP_SECONDS, f"{tag}w")
                await _webhooks(receiver, path, await _bookings(pool, clinic))
                await receiver.reset()
                before = await _bookings(pool, clinic)
                cpu = Cpu({**platform.groups, "receiver": [receiver_pid]})
                cpu.start()
                load = await _wrk(platform.base, clinic, tenant, slots, SECONDS, f"{tag}m")
                cores = cpu.stop()
                ended = time.time()
                created = await _bookings(pool, clinic) - before
                await _webhooks(receiver, path, created)
                summary = await receiver.summary(path, latency=True)
                startup = _log_problems(platform.logs, end=sizes)
                problems = _log_problems(platform.logs, start=sizes)
            finally:
                await pool.close()
    return Row(
        topology,
        load,
        created,
        summary["count"],
        summary["duplicates"],
        [s * 1000 for s in summary["latencies"]],
        (summary["last"] or ended) - ended,
        cores,
        cpu.outsiders,
        startup,
        problems,
    )


# --- tables --------------------------------------------------------------------------------------


def _sessions_table(rows: Sequence[Row]) -> str:
    base = next(r for r in rows if r.topology == ONE_COPY).sessions_per_second

    def row(r: Row) -> list[str]:
        requests = sum(k.count for k in r.load.kinds.values())
        errors = sum(r.load.unexpected(k) for k in KINDS) + sum(r.load.socket_errors.values())
        return [
            r.topology.name,
            str(r.topology.processes),
            str(r.load.sessions),
            f"{r.sessions_per_second:.1f}",
            f"{r.sessions_per_second / base:.2f}",
            f"{requests / r.load.seconds:.0f}",
            str(errors),
            str(r.created),
            f"{r.webhooks} (+{r.duplicates} dup)",
            f"{r.lag(0.5):.0f}",
            f"{r.lag(0.99):.0f}",
            f"{r.last_after:.1f}",
        ]

    return _markdown(
        f"Mixed workload through the gateway — {SECONDS:.0f} s per topology, {CONNECTIONS} "
        f"partner sessions in flight (token → availability → booking)",
        [
            "topology",
            "processes",
            "sessions",
            "sessions/s",
            "vs 1 copy",
            "requests/s",
            "errors",
            "bookings made",
            "webhooks received",
            "lag p50 ms",
            "lag p99 ms",
            "last webhook s",
        ],
        [row(r) for r in rows],
        "sessions: bookings answered 201 within the run; errors: answers other than the "
        "expected 200/200/201, and socket errors; bookings made: rows the database gained "
        "during the run (a session cut off by the end may have made one unanswered); webhooks: "
        "booking.created deliveries received, deduplicated by webhook-id; lag: the event's "
        "occurred_at (the booking's commit) to receipt; last webhook: seconds after the load "
        "ended. Load generator: wrk (2 threads, Lua, each request timed by its X-Request-Id); "
        "the topologies ran one after another, every row measured in this run",
    )


def _kinds_table(rows: Sequence[Row]) -> str:
    lines = []
    for r in rows:
        for kind in KINDS:
            k = r.load.kinds[kind]
            others = {c: n for c, n in sorted(k.statuses.items()) if c != EXPECTED[kind]}
            lines.append(
                [
                    r.topology.name,
                    KIND_LABELS[kind],
                    str(k.count),
                    f"{k.count / r.load.seconds:.1f}",
                    f"{k.pct(0.5):.1f}",
                    f"{k.pct(0.99):.1f}",
                    ", ".join(f"{n} × {c}" for c, n in others.items()) or "0",
                ]
            )
    return _markdown(
        "Per request kind",
        ["topology", "request", "answered", "req/s", "p50 ms", "p99 ms", "unexpected"],
        lines,
        "latency: from the request's making in wrk to its whole answer, through the gateway",
    )


def _cpu_table(rows: Sequence[Row]) -> str:
    names = [*CPU_GROUPS, *CPU_OTHERS, "irq", "other", "machine"]

    def cell(r: Row, name: str) -> str:
        return f"{r.cpu[name]:.2f}" if name in r.cpu else "–"

    return _markdown(
        f"CPU during the measured run, in cores ({os.cpu_count()} on this machine)",
        ["topology", *names, "CPU ms/session"],
        [
            [
                r.topology.name,
                *(cell(r, n) for n in names),
                f"{r.cpu['machine'] * 1000 / r.sessions_per_second:.1f}",
            ]
            for r in rows
        ],
        "each service's column adds up its copies; one process: `vetgate run all` (the four "
        "services and the gateway); postgres and rabbitmq: every live process of theirs, other "
        "users' load included; irq: interrupts and softirqs (loopback networking, charged to no "
        "process); other: the machine's busy time that none of the columns before it accounts "
        "for (other processes on the machine, kernel threads); machine: all busy CPU time, from "
        "/proc/stat; CPU ms/session: the machine's busy time per session completed",
    )


def _busiest(row: Row) -> str:
    """The Vetgate process group using the most CPU, per process."""
    copies = max(1, row.topology.copies)
    per_process = {
        name: row.cpu[name] / (1 if name == "gateway" else copies)
        for name in (*SERVICE_NAMES, "gateway")
        if name in row.cpu
    }
    name = max(per_process, key=lambda n: per_process[n])
    return f"{name} ({per_process[name]:.2f} cores per process)"


def _notes(rows: Sequence[Row]) -> list[str]:
    one = next(r for r in rows if r.topology == ONE_COPY)
    two = next(r for r in rows if r.topology == TWO_COPIES)
    every = next(r for r in rows if r.topology == ALL_IN_ONE)
    cores = os.cpu_count() or 1
    factor = two.sessions_per_second / one.sessions_per_second
    notes = [
        f"scaling factor, 2 copies / 1 copy: {two.sessions_per_second:.1f} / "
        f"{one.sessions_per_second:.1f} sessions/s = {factor:.2f} (baseline: the 1-copy row of "
        f"this run; `vetgate run all` in one process: {every.sessions_per_second:.1f} "
        f"sessions/s, {one.sessions_per_second / every.sessions_per_second:.2f}× of it for one "
        "copy per process)",
        f"this machine has {cores} cores, shared by Postgres, RabbitMQ, wrk, the receiver and "
        f"every Vetgate process; busy during the run: "
        + ", ".join(f"{r.topology.name} {r.cpu['machine']:.2f}" for r in rows)
        + " cores. "
        + (
            f"With {one.cpu['machine']:.2f} of {cores} cores busy already with one copy, a second "
            "copy of each service has no idle core to run on, so a scaling factor near (or "
            "below) 1 here reflects the CPU count, not a limit of the services; it says nothing "
            "of a machine with a core per copy"
            if one.cpu["machine"] >= 0.9 * cores
            else f"With one copy the machine still had {cores - one.cpu['machine']:.2f} cores "
            "idle: what held the 1-copy row back was not the CPU count"
        ),
        "CPU per session (ms of CPU per completed session), 1 copy → 2 copies: "
        + ", ".join(
            f"{name} {one.cpu[name] * 1000 / one.sessions_per_second:.2f} → "
            f"{two.cpu[name] * 1000 / two.sessions_per_second:.2f}"
            for name in (*SERVICE_NAMES, "gateway", "postgres", "rabbitmq", "machine")
        )
        + ": the same work spread over twice the processes and database connections costs "
        "more CPU per session, and on a full machine that comes out of the requests",
        f"the gateway, one process in both copy topologies: {one.cpu.get('gateway', 0):.2f} "
        f"cores with 1 copy, {two.cpu.get('gateway', 0):.2f} with 2; the busiest process with 1 "
        f"copy: {_busiest(one)}, with 2: {_busiest(two)}",
    ]
    for r in rows:
        missing = r.created - r.webhooks
        notes.append(
            f"{r.topology.name}: {r.created} bookings made, {r.webhooks} webhooks received"
            + (f" ({missing} missing after {STALL_SECONDS:.0f} s without one)" if missing else "")
            + f", lag max {max(r.lag_ms, default=float('nan')):.0f} ms; "
            f"{r.load.kinds['book'].statuses['201']} bookings answered 201 within the run"
            + (f"; socket errors {dict(r.load.socket_errors)}" if +r.load.socket_errors else "")
            + (
                f"; {r.load.unplaced} answers without a known X-Request-Id"
                if r.load.unplaced
                else ""
            )
            + (f"; the sessions file ran out {r.load.wrapped} times" if r.load.wrapped else "")
        )
        if r.cpu["other"] >= 0.1:
            busiest = ", ".join(f"{c} {n:.2f}" for c, n in r.outsiders) or "none found"
            notes.append(
                f"{r.topology.name}: the machine was not quiet ({r.cpu['other']:.2f} cores "
                f"outside the bench; the busiest processes outside it: {busiest}); rerun on a "
                "quiet machine to compare this row"
            )
        if r.problems:
            notes.append(f"{r.topology.name}, logged under load: " + "; ".join(r.problems))
        else:
            notes.append(f"{r.topology.name}: no process logged a warning or an error under load")
        if r.startup:
            notes.append(f"{r.topology.name}, logged at start-up: " + "; ".join(r.startup))
    return notes


# --- the run -------------------------------------------------------------------------------------


async def run() -> tuple[str, list[Row]]:
    port = free_port()
    receiver_url = f"http://127.0.0.1:{port}"
    rows: list[Row] = []
    with (
        server_process(["-m", "bench.receiver", str(port)], {}) as receiver_proc,
        tempfile.TemporaryDirectory() as folder,
    ):
        await wait_http(receiver_url + "/")
        async with aiohttp.ClientSession() as session:
            receiver = Receiver(session, receiver_url)
            for topology in TOPOLOGIES:
                rows.append(
                    await _measure(topology, session, receiver, receiver_proc.pid, Path(folder))
                )
    report = "\n\n".join(
        [
            _sessions_table(rows),
            _kinds_table(rows),
            _cpu_table(rows),
            "\n".join(f"- {n}" for n in _notes(rows)),
        ]
    )
    return report, rows
