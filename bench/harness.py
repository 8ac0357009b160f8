"""Bench plumbing: a throw-away database, server subprocesses, free ports, the result table."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import aio_pika
import aiohttp

from bench.load import LoadResult
from services.auth import service as auth_service
from services.auth.schemas import (
    ApplicationCreate,
    ClinicCreate,
    GrantCreate,
    GroupCreate,
    PartnerCreate,
)
from services.auth.settings import AuthSettings
from services.scratch import scratch_database
from shared.db import create_pool
from shared.settings import ServiceSettings


@dataclass(frozen=True)
class BenchTenant:
    """An approved tier-2 application and the one clinic it is granted."""

    client_id: str
    secret: str
    clinic_id: uuid.UUID
    group_id: uuid.UUID


async def bench_tenant(dsn: str, *, scopes: list[str], country: str = "GB") -> BenchTenant:
    """Create the tenant with the auth service's own rules, and a signing key."""
    settings = AuthSettings(database_url=dsn)
    pool = await create_pool(dsn, schema="auth", min_size=1, max_size=2)
    try:
        group = await auth_service.create_group(pool, GroupCreate(name="Bench group"))
        clinic = await auth_service.create_clinic(
            pool,
            ClinicCreate(
                group_id=group.id,
                name="Bench clinic",
                time_zone="Europe/London",
                country=country,
                sandbox=True,
            ),
        )
        partner = await auth_service.create_partner(
            pool, PartnerCreate(name="Bench", contact_email="b@example.com")
        )
        app = await auth_service.create_application(
            pool,
            partner.id,
            ApplicationCreate(name="Bench app", contact_email="b@example.com", tier=2),
        )
        await auth_service.set_application_status(pool, app.id, "approved")
        await auth_service.create_grant(
            pool, GrantCreate(application_id=app.id, clinic_id=clinic.id, scopes=scopes)
        )
        await auth_service.ensure_signing_key(pool, settings)
    finally:
        await pool.close()
    return BenchTenant(app.client_id, app.client_secret, clinic.id, group.id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_database() -> contextlib.AbstractAsyncContextManager[str]:
    """A migrated database of its own, dropped afterwards."""
    return scratch_database("vetgate_bench")


@contextlib.contextmanager
def server_process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def wait_http(url: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.2)


def table(title: str, rows: list[LoadResult], *, baseline: str) -> str:
    """A markdown table; every row's rate also as a fraction of the named baseline row's."""
    base = next(r for r in rows if r.name == baseline).requests_per_second
    out = [title, ""]
    out.append(
        f"| {'case':<42} | {'req/s':>8} | {'vs bare':>7} | {'p50 ms':>7} | {'p99 ms':>7} | "
        f"{'errors':>6} |"
    )
    out.append(f"|{'-' * 44}|{'-' * 10}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 8}|")
    for r in rows:
        share = r.requests_per_second / base
        out.append(
            f"| {r.name:<42} | {r.requests_per_second:>8.0f} | {share:>7.2f} "
            f"| {r.p50_ms:>7.2f} | {r.p99_ms:>7.2f} | {r.errors:>6} |"
        )
    out.append("")
    out.append(f"load generator: {rows[0].generator}; every row measured in this run")
    return "\n".join(out)


@dataclass(frozen=True)
class BenchPlatform:
    """The auth service (and one resource service) running as processes for a bench."""

    auth_url: str
    service_url: str | None
    # The private exchange and queue prefix of the run, and the service's process id (py-spy).
    exchange: str = ""
    queue_prefix: str = ""
    service_pid: int | None = None


@contextlib.asynccontextmanager
async def bench_platform(
    dsn: str,
    service: str | None = None,
    *,
    queues: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> AsyncIterator[BenchPlatform]:
    """Start auth and ``service`` on ``dsn`` with a private exchange and queue prefix and the
    tier limits lifted (a bench measures the work, not the limits); remove the broker objects
    (the exchanges and ``queues``, named after the prefix) when done."""
    run_id = secrets.token_hex(3)
    exchange, prefix = f"vetgate.bench.{run_id}", f"vetgate-bench-{run_id}"
    common = {
        "DATABASE_URL": dsn,
        "VETGATE_LOG_LEVEL": "WARNING",
        "VETGATE_EVENTS_EXCHANGE": exchange,
        "VETGATE_QUEUE_PREFIX": prefix,
        "VETGATE_TIER_RATES": "[1e9, 1e9, 1e9]",
        "VETGATE_TIER_BURSTS": "[1000000000, 1000000000, 1000000000]",
        **(env or {}),
    }
    auth_port, service_port = free_port(), free_port()
    auth_url = f"http://127.0.0.1:{auth_port}"
    service_url = f"http://127.0.0.1:{service_port}" if service else None
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(
                server_process(["-m", "services.auth"], {**common, "VETGATE_PORT": str(auth_port)})
            )
            service_pid = None
            if service is not None:
                service_pid = stack.enter_context(
                    server_process(
                        ["-m", f"services.{service}"],
                        {**common, "VETGATE_PORT": str(service_port), "VETGATE_AUTH_URL": auth_url},
                    )
                ).pid
            await wait_http(f"{auth_url}/readyz")
            if service_url is not None:
                await wait_http(f"{service_url}/readyz")
            yield BenchPlatform(auth_url, service_url, exchange, prefix, service_pid)
    finally:
        await _remove_broker_objects(exchange, [f"{prefix}.{q}" for q in queues])


async def _remove_broker_objects(exchange: str, queues: list[str]) -> None:
    try:
        connection = await aio_pika.connect(ServiceSettings().amqp_url)
    except (OSError, aio_pika.exceptions.AMQPError):
        return
    async with connection:
        channel = await connection.channel()
        for name in queues:
            for queue in (name, f"{name}.dead"):
                await channel.queue_delete(queue)
        for name in (exchange, f"{exchange}.dlx"):
            await channel.exchange_delete(name)
