"""The deployed topology as processes: ``vetgate run all`` and a separate resource service.

The gateway and the four services run in one child process, exactly as a developer starts them;
everything partner-facing is reached through the gateway's port only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import jwt
import pytest

from services import registry, sandbox
from tests.conftest import client_token
from tests.test_cli import ROOT, ok, process_env, vetgate, vetgate_command

STARTUP_SECONDS = 60.0
STOP_SECONDS = 20.0


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_block(count: int) -> int:
    """A port such that it and the ``count - 1`` after it are all free."""
    for _ in range(200):
        base = free_port()
        if base + count - 1 <= 65535 and all(port_is_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no block of {count} free ports")


@dataclass
class Child:
    """A Vetgate process with its output captured to a file."""

    process: asyncio.subprocess.Process
    log_path: Path
    log_file: IO[bytes]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                parsed = json.loads(line)
                if isinstance(parsed, dict):
                    lines.append(parsed)
        return lines


async def spawn(args: list[str], env: Mapping[str, str], log_path: Path) -> Child:
    log_file = log_path.open("wb")
    process = await asyncio.create_subprocess_exec(
        *args,
        env=dict(env),
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=log_file,
        stderr=asyncio.subprocess.STDOUT,
    )
    return Child(process, log_path, log_file)


async def stop(child: Child) -> None:
    """SIGTERM, then SIGKILL if it does not go in time."""
    if child.process.returncode is None:
        child.process.terminate()
        try:
            await asyncio.wait_for(child.process.wait(), STOP_SECONDS)
        except TimeoutError:
            child.process.kill()
            await child.process.wait()
    child.log_file.close()


async def wait_until_ready(child: Child, urls: list[str]) -> None:
    """Poll every URL until it answers 200 with a ready status; fail early if the child died."""
    timeout = aiohttp.ClientTimeout(total=3)
    pending = list(urls)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(int(STARTUP_SECONDS / 0.2)):
            if child.process.returncode is not None:
                pytest.fail(f"the process exited ({child.process.returncode}):\n{child.log_text()}")
            for url in list(pending):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as r:
                        body = await r.json(content_type=None)
                        if r.status == 200 and body.get("status") in ("ok", "ready"):
                            pending.remove(url)
            if not pending:
                return
            await asyncio.sleep(0.2)
    pytest.fail(f"not ready in {STARTUP_SECONDS} s: {pending}\n{child.log_text()}")


@dataclass
class Topology:
    base: str
    port: int
    env: dict[str, str]
    child: Child

    def service_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port + 1 + registry.SERVICE_NAMES.index(name)}"


@pytest.fixture(scope="module")
async def topology(
    overrides: dict[str, Any], database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Topology]:
    port = free_port_block(5)
    base = f"http://127.0.0.1:{port}"
    env = process_env(
        overrides,
        database_url,
        VETGATE_ISSUER=base,
        VETGATE_HOST="127.0.0.1",
        VETGATE_LOG_LEVEL="INFO",
        VETGATE_OUTBOX_POLL_SECONDS="0.2",
        # The demo's webhook receiver listens on this machine; "localhost" stands for the name
        # a callbacks container reaches the host by (host.docker.internal under compose).
        VETGATE_WEBHOOK_ALLOWED_HOSTS='["127.0.0.1", "localhost"]',
    )
    log_path = tmp_path_factory.mktemp("topology") / "run-all.log"
    child = await spawn([*vetgate_command(), "run", "all", "--port", str(port)], env, log_path)
    topology = Topology(base, port, env, child)
    try:
        await wait_until_ready(
            child,
            [base + "/healthz"]
            + [topology.service_url(name) + "/readyz" for name in registry.SERVICE_NAMES],
        )
        yield topology
    finally:
        await stop(child)


@pytest.fixture(scope="module")
async def sandbox_credentials(topology: Topology) -> dict[str, Any]:
    credentials: dict[str, Any] = await ok("seed-sandbox", "--json", env=topology.env)
    return credentials


async def test_gateway_and_services_listen_on_consecutive_ports(
    http: aiohttp.ClientSession, topology: Topology
) -> None:
    async with http.get(topology.base + "/healthz") as r:
        assert r.status == 200
        assert (await r.json())["service"] == "gateway"
    for name in registry.SERVICE_NAMES:
        async with http.get(topology.service_url(name) + "/healthz") as r:
            assert r.status == 200
            assert (await r.json())["service"] == name
        async with http.get(topology.service_url(name) + "/readyz") as r:
            body = await r.json()
            assert r.status == 200, body
            assert body["status"] == "ready"
    # The services' operational routes are not public.
    async with http.get(topology.base + "/readyz") as r:
        assert r.status == 404


async def test_sandbox_token_through_the_gateway_lists_the_sandbox_clinic(
    http: aiohttp.ClientSession, topology: Topology, sandbox_credentials: dict[str, Any]
) -> None:
    c = sandbox_credentials
    assert c["base_url"] == topology.base
    assert c["token_url"] == topology.base + "/oauth/token"

    token = await client_token(http, topology.base, c)
    claims = jwt.decode(token["access_token"], options={"verify_signature": False})
    assert claims["iss"] == topology.base
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    async with http.get(topology.base + "/v1/clinics", headers=headers) as r:
        page = await r.json()
        assert r.status == 200, page
    assert [item["id"] for item in page["items"]] == [str(sandbox.CLINIC_ID)]
    assert page["items"][0]["sandbox"] is True

    clinic_token = await client_token(http, topology.base, c, clinic_id=c["clinic_id"])
    assert clinic_token["clinic_id"] == c["clinic_id"]
    headers = {"Authorization": f"Bearer {clinic_token['access_token']}"}
    async with http.get(f"{topology.base}/v1/clinics/{c['clinic_id']}", headers=headers) as r:
        clinic = await r.json()
        assert r.status == 200, clinic
    assert clinic["id"] == c["clinic_id"]


async def test_unauthenticated_api_call_is_refused_through_the_gateway(
    http: aiohttp.ClientSession, topology: Topology
) -> None:
    async with http.get(topology.base + "/v1/clinics") as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.content_type == "application/problem+json"


async def test_jwks_and_openapi_documents_through_the_gateway(
    http: aiohttp.ClientSession, topology: Topology
) -> None:
    async with http.get(topology.base + "/.well-known/jwks.json") as r:
        assert r.status == 200
        jwks = await r.json()
    assert jwks["keys"]
    assert all(key["kid"] and key["kty"] == "OKP" for key in jwks["keys"])
    for name in registry.SERVICE_NAMES:
        async with http.get(f"{topology.base}/openapi/{name}.json") as r:
            assert r.status == 200, name
            assert r.content_type == "application/json"
            document = await r.json()
        assert document["openapi"].startswith("3."), name
        assert document["info"]["title"]


async def test_every_service_exposes_request_metrics(
    http: aiohttp.ClientSession, topology: Topology
) -> None:
    for name in registry.SERVICE_NAMES:
        async with http.get(topology.service_url(name) + "/readyz") as r:
            assert r.status == 200
        async with http.get(topology.service_url(name) + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
        assert re.search(r"^http_requests_total\{.*\} \d", text, flags=re.MULTILINE), name


async def test_request_id_is_echoed_and_logged_by_the_service(
    http: aiohttp.ClientSession, topology: Topology, sandbox_credentials: dict[str, Any]
) -> None:
    token = await client_token(http, topology.base, sandbox_credentials)
    request_id = f"topology-{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {token['access_token']}", "X-Request-Id": request_id}
    async with http.get(topology.base + "/v1/clinics", headers=headers) as r:
        assert r.status == 200
        assert r.headers["X-Request-Id"] == request_id
    for _ in range(100):
        logged = [
            line for line in topology.child.log_lines() if line.get("request_id") == request_id
        ]
        if logged:
            break
        await asyncio.sleep(0.1)
    assert logged, topology.child.log_text()[-2000:]
    assert logged[0]["service"] == "auth"
    assert logged[0]["status"] == 200
    assert "/v1/clinics" in logged[0]["msg"]


def revocation_snapshot_requests(metrics: str) -> float:
    """How many times the auth service served the revocation snapshot."""
    total = 0.0
    for match in re.finditer(
        r"^http_requests_total\{([^}]*)\} (\S+)$", metrics, flags=re.MULTILINE
    ):
        labels, value = match.groups()
        if 'route="/internal/v1/revocations"' in labels and 'status="200"' in labels:
            total += float(value)
    return total


async def test_a_separate_bookings_process_uses_the_topology_auth_service(
    http: aiohttp.ClientSession, topology: Topology, tmp_path: Path
) -> None:
    auth_url = topology.service_url("auth")
    async with http.get(auth_url + "/metrics") as r:
        before = revocation_snapshot_requests(await r.text())
    port = free_port()
    env = {
        **topology.env,
        "VETGATE_PORT": str(port),
        "VETGATE_AUTH_URL": auth_url,
    }
    child = await spawn([sys.executable, "-m", "services.bookings"], env, tmp_path / "bookings.log")
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_until_ready(child, [url + "/readyz"])
        async with http.get(url + "/healthz") as r:
            assert (await r.json())["service"] == "bookings"
        # At start it loaded the revocations in force from the other process's auth service.
        for _ in range(100):
            async with http.get(auth_url + "/metrics") as r:
                after = revocation_snapshot_requests(await r.text())
            if after > before:
                break
            await asyncio.sleep(0.1)
        assert after > before
    finally:
        await stop(child)
    assert child.process.returncode is not None


async def test_the_demo_plays_a_partner_through_the_gateway(
    topology: Topology, sandbox_credentials: dict[str, Any]
) -> None:
    run = await vetgate("demo", "--base-url", topology.base, env=topology.env)
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    transcript = run.stdout
    # Every step shows its call, and the webhook's signature was checked by hand.
    for step in range(1, 12):
        assert f"\n{step}. " in "\n" + transcript, (step, transcript)
    assert "→ POST /v1/webhooks/endpoints" in transcript
    assert "signature verified" in transcript
    assert "booking.created #1, booking.rescheduled #2, booking.cancelled #3" in transcript
    assert sandbox_credentials["client_secret"] not in transcript


async def test_the_demo_receives_its_webhook_by_the_name_given_for_this_machine(
    topology: Topology, sandbox_credentials: dict[str, Any]
) -> None:
    """As against the compose stack: the receiver listens on every interface, and the endpoint
    it subscribes names this machine as the callbacks service reaches it."""
    run = await vetgate(
        "demo", "--base-url", topology.base, "--receiver-host", "localhost", env=topology.env
    )
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert re.search(r'"url": "http://localhost:\d+/webhooks"', run.stdout), run.stdout
    assert "signature verified" in run.stdout
