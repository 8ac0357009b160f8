"""Token issuance (client credentials, hashed secret, EdDSA signing) against a bare handler.

Both servers run as one process each, driven over real HTTP with keep-alive by the same load
generator. Targets: ≥ 2,000 tokens/s and ≥ half of the bare handler's rate.
"""

from __future__ import annotations

import base64
import json
import os
import uuid

import aiohttp

from bench.harness import bench_database, free_port, server_process, table, wait_http
from bench.load import LoadResult, run_load
from services.auth import service
from services.auth.schemas import (
    ApplicationCreate,
    ClinicCreate,
    GrantCreate,
    GroupCreate,
    PartnerCreate,
)
from services.auth.settings import AuthSettings
from shared.db import create_pool

TOKENS = "POST /oauth/token (client credentials)"
BARE = "bare aiohttp handler, same JSON size"
SIGNED = "bare handler + Ed25519 JWT signing only"
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))


async def _tenant(dsn: str) -> tuple[str, str, str]:
    """An approved tier-2 application granted one clinic: (client_id, secret, clinic_id)."""
    settings = AuthSettings(database_url=dsn)
    pool = await create_pool(dsn, schema="auth", min_size=1, max_size=2)
    try:
        group = await service.create_group(pool, GroupCreate(name="Bench group"))
        clinic = await service.create_clinic(
            pool,
            ClinicCreate(
                group_id=group.id, name="Bench clinic", time_zone="Europe/London", sandbox=True
            ),
        )
        partner = await service.create_partner(
            pool, PartnerCreate(name="Bench", contact_email="b@example.com")
        )
        app = await service.create_application(
            pool,
            partner.id,
            ApplicationCreate(name="Bench app", contact_email="b@example.com", tier=2),
        )
        await service.set_application_status(pool, app.id, "approved")
        await service.create_grant(
            pool,
            GrantCreate(
                application_id=app.id,
                clinic_id=clinic.id,
                scopes=["bookings:read", "bookings:write"],
            ),
        )
        await service.ensure_signing_key(pool, settings)
    finally:
        await pool.close()
    return app.client_id, app.client_secret, str(clinic.id)


async def run() -> tuple[str, list[LoadResult]]:
    async with bench_database() as dsn:
        client_id, secret, clinic_id = await _tenant(dsn)
        auth_port = free_port()
        env = {
            "DATABASE_URL": dsn,
            "VETGATE_PORT": str(auth_port),
            "VETGATE_LOG_LEVEL": "WARNING",
            "VETGATE_EVENTS_EXCHANGE": f"vetgate.bench.{uuid.uuid4().hex[:6]}",
            # The bench measures issuance, not the tier limits.
            "VETGATE_TIER_RATES": "[1e9, 1e9, 1e9]",
            "VETGATE_TIER_BURSTS": "[1000000000, 1000000000, 1000000000]",
        }
        body = f"grant_type=client_credentials&clinic_id={clinic_id}"
        credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": f"Basic {credentials}",
        }
        token_url = f"http://127.0.0.1:{auth_port}/oauth/token"
        with server_process(["-m", "services.auth"], env):
            await wait_http(f"http://127.0.0.1:{auth_port}/healthz")
            async with aiohttp.ClientSession() as session:
                async with session.post(token_url, data=body, headers=headers) as response:
                    sample = await response.read()
                    assert response.status == 200, sample
            size = len(json.dumps(json.loads(sample)))
            base_port, signed_port = free_port(), free_port()
            with (
                server_process(["-m", "bench.baseline", str(base_port), str(size), "plain"], {}),
                server_process(["-m", "bench.baseline", str(signed_port), str(size), "signed"], {}),
            ):
                base_url = f"http://127.0.0.1:{base_port}/oauth/token"
                signed_url = f"http://127.0.0.1:{signed_port}/oauth/token"
                await wait_http(f"http://127.0.0.1:{base_port}/")
                await wait_http(f"http://127.0.0.1:{signed_port}/")

                async def measure(name: str, url: str, seconds: float) -> LoadResult:
                    return await run_load(
                        name,
                        url,
                        body=body,
                        headers=headers,
                        seconds=seconds,
                        connections=CONNECTIONS,
                    )

                for url in (base_url, signed_url, token_url):
                    await measure("warm-up", url, 2)
                baseline = await measure(BARE, base_url, SECONDS)
                signed = await measure(SIGNED, signed_url, SECONDS)
                tokens = await measure(TOKENS, token_url, SECONDS)
    rows = [tokens, baseline, signed]
    return table(
        f"Token issuance — {SECONDS:.0f} s each, {CONNECTIONS} keep-alive connections, "
        f"response {size} bytes",
        rows,
        baseline=BARE,
    ), rows
