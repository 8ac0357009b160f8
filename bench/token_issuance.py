"""Token issuance (client credentials, hashed secret, EdDSA signing) against a bare handler.

Both servers run as one process each, driven over real HTTP with keep-alive by the same load
generator. Targets: ≥ 2,000 tokens/s and ≥ half of the bare handler's rate.
"""

from __future__ import annotations

import base64
import json
import os

import aiohttp

from bench.harness import (
    bench_database,
    bench_platform,
    bench_tenant,
    free_port,
    server_process,
    table,
    wait_http,
)
from bench.load import LoadResult, run_load

TOKENS = "POST /oauth/token (client credentials)"
BARE = "bare aiohttp handler, same JSON size"
SIGNED = "bare handler + Ed25519 JWT signing only"
SECONDS = float(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))


async def run() -> tuple[str, list[LoadResult]]:
    async with bench_database() as dsn:
        tenant = await bench_tenant(dsn, scopes=["bookings:read", "bookings:write"])
        client_id, secret, clinic_id = tenant.client_id, tenant.secret, str(tenant.clinic_id)
        body = f"grant_type=client_credentials&clinic_id={clinic_id}"
        credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": f"Basic {credentials}",
        }
        async with bench_platform(dsn) as platform:
            token_url = f"{platform.auth_url}/oauth/token"
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
