"""Bench plumbing: a throw-away database, server subprocesses, free ports, the result table."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

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
