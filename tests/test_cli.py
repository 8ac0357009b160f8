"""The ``vetgate`` console script, run as a real process against the test database."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import jwt
import pytest

from services import registry, sandbox
from shared import migrations
from tests.conftest import ADMIN_TOKEN, RUN_ID, basic_auth

ROOT = Path(__file__).resolve().parents[1]
VERBS = (
    "migrate",
    "run",
    "up",
    "seed-sandbox",
    "create-group",
    "create-clinic",
    "create-partner",
    "create-application",
    "approve-application",
    "suspend-application",
    "rotate-secret",
    "grant",
    "revoke-grant",
    "create-staff-user",
    "rotate-keys",
    "recover-deliveries",
)
CLI_TIMEOUT = 60.0


def vetgate_command() -> list[str]:
    """The installed console script when there is one, else the module."""
    script = Path(sys.executable).with_name("vetgate")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


def process_env(overrides: Mapping[str, Any], database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a Vetgate process of this test run; none of the caller's VETGATE_*."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("VETGATE_") and k not in ("DATABASE_URL", "AMQP_URL")
    }
    env.update(
        DATABASE_URL=database_url,
        AMQP_URL=str(overrides["amqp_url"]),
        VETGATE_ADMIN_TOKEN=ADMIN_TOKEN,
        VETGATE_EVENTS_EXCHANGE=str(overrides["events_exchange"]),
        VETGATE_QUEUE_PREFIX=str(overrides["queue_prefix"]),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


async def start(*args: str, env: Mapping[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *vetgate_command(),
        *args,
        env=dict(env),
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def finish(process: asyncio.subprocess.Process) -> Run:
    try:
        out, err = await asyncio.wait_for(process.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


async def vetgate(*args: str, env: Mapping[str, str]) -> Run:
    return await finish(await start(*args, env=env))


async def ok(*args: str, env: Mapping[str, str]) -> Any:
    """Run a verb that must succeed; its JSON output."""
    run = await vetgate(*args, env=env)
    assert run.returncode == 0, (args, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    return run.json()


@pytest.fixture
def env(overrides: dict[str, Any], database_url: str) -> dict[str, str]:
    return process_env(overrides, database_url)


@pytest.fixture
async def fresh_database_url(database_url: str) -> AsyncIterator[str]:
    """The name of a database that does not exist yet; dropped after the test."""
    name = f"vetgate_test_{RUN_ID}_cli_{uuid.uuid4().hex[:8]}"
    dsn = urlunsplit(urlsplit(database_url)._replace(path="/" + name))
    yield dsn
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def all_migration_names() -> dict[str, list[str]]:
    return {
        spec.name: [m.name for m in migrations.migrations_for(spec.directory)]
        for spec in registry.all_specs()
    }


async def recorded_migrations(dsn: str) -> dict[str, list[str]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            spec.name: [
                r["name"]
                for r in await conn.fetch(
                    f'SELECT name FROM "{spec.schema}".schema_migrations ORDER BY name'
                )
            ]
            for spec in registry.all_specs()
        }
    finally:
        await conn.close()


def assert_clean_failure(run: Run, returncode: int | None = None) -> None:
    assert run.returncode != 0, run.stdout
    if returncode is not None:
        assert run.returncode == returncode, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    assert "Traceback" not in run.stdout, run.stdout
    assert (run.stdout + run.stderr).strip()


# --- help and migrations -----------------------------------------------------------------------


async def test_help_lists_every_verb(env: dict[str, str]) -> None:
    run = await vetgate("--help", env=env)
    assert run.returncode == 0
    for verb in VERBS:
        assert verb in run.stdout


async def test_no_verb_is_a_usage_error(env: dict[str, str]) -> None:
    run = await vetgate(env=env)
    assert_clean_failure(run, 2)
    assert "usage: vetgate" in run.stderr


async def test_migrate_creates_the_database_and_a_second_run_applies_nothing(
    overrides: dict[str, Any], fresh_database_url: str
) -> None:
    env = process_env(overrides, fresh_database_url)
    run = await vetgate("migrate", env=env)
    assert run.returncode == 0, run.stderr
    first = run.json()
    expected = all_migration_names()
    assert first == {"applied": expected}
    # Progress goes to stderr (stdout stays JSON), one plain line per service on a pipe.
    total = len(expected)
    assert run.stderr.splitlines()[-1] == f"[{'#' * 24}] {total}/{total} migrated callbacks"
    assert "0001_directory.sql" in first["applied"]["auth"]

    second = await ok("migrate", env=env)
    assert second == {"applied": {name: [] for name in expected}}
    assert await recorded_migrations(fresh_database_url) == {
        name: sorted(names) for name, names in expected.items()
    }


async def test_two_migrate_processes_started_together_both_succeed(
    overrides: dict[str, Any], fresh_database_url: str
) -> None:
    env = process_env(overrides, fresh_database_url)
    processes = [await start("migrate", env=env), await start("migrate", env=env)]
    runs = await asyncio.gather(*(finish(p) for p in processes))
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
    # Every file was applied by exactly one of the two.
    expected = all_migration_names()
    for name, names in expected.items():
        applied = [m for run in runs for m in run.json()["applied"][name]]
        assert sorted(applied) == sorted(names), (name, runs)
    assert await recorded_migrations(fresh_database_url) == {
        name: sorted(names) for name, names in expected.items()
    }


async def test_migrate_against_an_unreachable_database_fails_cleanly(
    overrides: dict[str, Any],
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = process_env(overrides, f"postgresql://postgres@127.0.0.1:{port}/nothing")
    run = await vetgate("migrate", env=env)
    assert_clean_failure(run, 1)
    assert run.stderr.strip().splitlines()[-1].startswith("vetgate: ")


# --- the sandbox -------------------------------------------------------------------------------


SANDBOX_ROWS = {
    "groups": ("id", sandbox.GROUP_ID),
    "clinics": ("group_id", sandbox.GROUP_ID),
    "partners": ("id", sandbox.PARTNER_ID),
    "applications": ("partner_id", sandbox.PARTNER_ID),
    "grants": ("application_id", sandbox.APPLICATION_ID),
    "staff_users": ("clinic_id", sandbox.CLINIC_ID),
}


async def sandbox_row_counts(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        counts: dict[str, int] = {}
        for table, (column, value) in SANDBOX_ROWS.items():
            counts[table] = await conn.fetchval(
                f"SELECT count(*) FROM auth.{table} WHERE {column} = $1", value
            )
        return counts
    finally:
        await conn.close()


@pytest.fixture
async def sandbox_credentials(env: dict[str, str]) -> dict[str, Any]:
    credentials: dict[str, Any] = await ok("seed-sandbox", "--json", env=env)
    return credentials


async def test_seed_sandbox_twice_prints_the_same_credentials_and_adds_no_rows(
    env: dict[str, str], database_url: str
) -> None:
    run = await vetgate("seed-sandbox", "--json", env=env)
    assert run.returncode == 0, run.stderr
    first = run.json()
    assert run.stderr.splitlines()[-1] == f"[{'#' * 24}] 3/3 sandbox catalogue written"
    counts = await sandbox_row_counts(database_url)
    second = await ok("seed-sandbox", "--json", env=env)
    assert second == first
    for key in ("base_url", "client_id", "client_secret", "clinic_id", "group_id"):
        assert first[key], key
    assert first["client_id"] == sandbox.CLIENT_ID
    assert first["clinic_id"] == str(sandbox.CLINIC_ID)
    assert first["group_id"] == str(sandbox.GROUP_ID)
    assert counts == dict.fromkeys(SANDBOX_ROWS, 1)
    assert await sandbox_row_counts(database_url) == counts


async def test_seed_sandbox_without_json_prints_the_credentials(
    env: dict[str, str], sandbox_credentials: dict[str, Any]
) -> None:
    run = await vetgate("seed-sandbox", env=env)
    assert run.returncode == 0, run.stderr
    for key in ("client_id", "client_secret", "clinic_id", "group_id"):
        assert sandbox_credentials[key] in run.stdout


async def test_sandbox_credentials_get_a_clinic_token(
    http: aiohttp.ClientSession, auth_url: str, sandbox_credentials: dict[str, Any]
) -> None:
    c = sandbox_credentials
    async with http.post(
        auth_url + "/oauth/token",
        data={"grant_type": "client_credentials", "clinic_id": c["clinic_id"]},
        headers=basic_auth(c["client_id"], c["client_secret"]),
    ) as r:
        body = await r.json()
        assert r.status == 200, body
    assert body["clinic_id"] == c["clinic_id"]
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["clinic_id"] == c["clinic_id"]
    assert "group_id" not in claims  # the sandbox grant is a clinic grant
    assert claims["client_id"] == c["client_id"]


async def test_sandbox_staff_user_gets_a_password_token(
    http: aiohttp.ClientSession, auth_url: str, sandbox_credentials: dict[str, Any]
) -> None:
    c = sandbox_credentials
    async with http.post(
        auth_url + "/oauth/token",
        data={
            "grant_type": "password",
            "username": c["staff_username"],
            "password": c["staff_password"],
        },
        headers=basic_auth(c["client_id"], c["client_secret"]),
    ) as r:
        body = await r.json()
        assert r.status == 200, body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["clinic_id"] == c["clinic_id"]
    assert claims["client_id"] == c["client_id"]
    assert claims["sub"] != c["client_id"]


# --- operator verbs ----------------------------------------------------------------------------


async def token_answer(
    http: aiohttp.ClientSession, auth_url: str, client_id: str, secret: str, **form: str
) -> tuple[int, dict[str, Any]]:
    async with http.post(
        auth_url + "/oauth/token",
        data={"grant_type": "client_credentials", **form},
        headers=basic_auth(client_id, secret),
    ) as r:
        return r.status, await r.json(content_type=None)


async def test_operator_verbs_end_to_end(
    env: dict[str, str], http: aiohttp.ClientSession, auth_url: str, database_url: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    group = await ok("create-group", "--name", f"CLI group {tag}", env=env)
    clinic = await ok(
        "create-clinic",
        *("--group-id", group["id"], "--name", f"CLI clinic {tag}"),
        *("--time-zone", "Europe/London", "--sandbox"),
        env=env,
    )
    assert clinic["group_id"] == group["id"]
    assert clinic["sandbox"] is True
    partner = await ok(
        "create-partner", "--name", f"CLI partner {tag}", "--email", f"p{tag}@example.com", env=env
    )
    app = await ok(
        "create-application",
        *("--partner-id", partner["id"], "--name", f"CLI app {tag}"),
        *("--email", f"a{tag}@example.com", "--tier", "1"),
        env=env,
    )
    assert app["partner_id"] == partner["id"]
    assert app["status"] == "pending"
    assert app["client_secret"]
    secret = app["client_secret"]

    approved = await ok("approve-application", app["id"], env=env)
    assert approved["status"] == "approved"
    assert "client_secret" not in approved
    grant = await ok(
        "grant",
        *("--application-id", app["id"], "--clinic-id", clinic["id"]),
        *("--scopes", "bookings:read bookings:write"),
        env=env,
    )
    assert sorted(grant["scopes"]) == ["bookings:read", "bookings:write"]

    status, body = await token_answer(
        http, auth_url, app["client_id"], secret, clinic_id=clinic["id"]
    )
    assert status == 200, body
    assert body["clinic_id"] == clinic["id"]
    assert set(body["scope"].split()) == {"bookings:read", "bookings:write"}

    # A staff user of the clinic, created from the command line, gets a user token.
    staff = await ok(
        "create-staff-user",
        *("--clinic-id", clinic["id"], "--username", f"vet.{tag}"),
        *("--display-name", "Dr CLI", "--role", "vet"),
        env={**env, "VETGATE_STAFF_PASSWORD": "a long enough password"},
    )
    assert staff["clinic_id"] == clinic["id"]
    async with http.post(
        auth_url + "/oauth/token",
        data={
            "grant_type": "password",
            "username": f"vet.{tag}",
            "password": "a long enough password",
        },
        headers=basic_auth(app["client_id"], secret),
    ) as r:
        assert r.status == 200, await r.text()

    # A rotated secret works at once.
    rotated = await ok("rotate-secret", app["id"], env=env)
    assert rotated["client_secret"] != secret
    status, body = await token_answer(http, auth_url, app["client_id"], rotated["client_secret"])
    assert status == 200, body

    revoked = await ok("revoke-grant", grant["id"], env=env)
    assert revoked["revoked_at"] is not None
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT payload FROM auth.outbox WHERE event_type = 'grant.revoked' "
            "AND payload->'data'->>'grant_id' = $1",
            grant["id"],
        )
    finally:
        await conn.close()
    assert len(rows) == 1
    event = json.loads(rows[0]["payload"])
    assert event["data"]["clinic_id"] == clinic["id"]
    assert event["data"]["client_id"] == app["client_id"]

    # The auth server hears of the revocation over the bus and stops issuing clinic tokens.
    for _ in range(100):
        status, body = await token_answer(
            http, auth_url, app["client_id"], rotated["client_secret"], clinic_id=clinic["id"]
        )
        if status != 200:
            break
        await asyncio.sleep(0.1)
    assert status == 400, body
    assert body["error"] == "invalid_grant"


async def test_suspend_application_stops_tokens(
    env: dict[str, str], http: aiohttp.ClientSession, auth_url: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    partner = await ok(
        "create-partner", "--name", f"CLI partner {tag}", "--email", f"p{tag}@example.com", env=env
    )
    app = await ok(
        "create-application",
        *("--partner-id", partner["id"], "--name", f"CLI app {tag}"),
        *("--email", f"a{tag}@example.com"),
        env=env,
    )
    await ok("approve-application", app["id"], env=env)
    status, body = await token_answer(http, auth_url, app["client_id"], app["client_secret"])
    assert status == 200, body
    suspended = await ok("suspend-application", app["id"], env=env)
    assert suspended["status"] == "suspended"
    for _ in range(100):
        status, body = await token_answer(http, auth_url, app["client_id"], app["client_secret"])
        if status != 200:
            break
        await asyncio.sleep(0.1)
    assert status in (400, 401), body
    assert body["error"] in ("unauthorized_client", "invalid_client")


async def test_rotate_keys_prints_the_new_kid(
    overrides: dict[str, Any], fresh_database_url: str
) -> None:
    # A database of its own: a new signing key in the shared one would change which key signs
    # the other tests' tokens.
    env = process_env(overrides, fresh_database_url)
    await ok("migrate", env=env)
    key = await ok("rotate-keys", "--publish-delay", "0", env=env)
    assert key["kid"]
    assert key["retires_at"] is None
    conn = await asyncpg.connect(fresh_database_url)
    try:
        kids = [r["kid"] for r in await conn.fetch("SELECT kid FROM auth.signing_keys")]
    finally:
        await conn.close()
    assert key["kid"] in kids
    again = await ok("rotate-keys", "--publish-delay", "0", env=env)
    assert again["kid"] != key["kid"]


# --- bad input ---------------------------------------------------------------------------------

MISSING = "00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize(
    ("args", "returncode", "expected"),
    [
        pytest.param(
            ["create-clinic", "--group-id", MISSING, "--name", "X", "--time-zone", "Mars/Base"],
            1,
            "time_zone",
            id="bad-time-zone",
        ),
        pytest.param(
            ["create-clinic", "--group-id", MISSING, "--name", "X", "--time-zone", "UTC"],
            1,
            "No such group",
            id="missing-group",
        ),
        pytest.param(
            ["create-clinic", "--group-id", "nope", "--name", "X", "--time-zone", "UTC"],
            2,
            "not a valid id",
            id="malformed-group-id",
        ),
        pytest.param(
            ["create-application", "--partner-id", MISSING, "--name", "X", "--email", "a@b.co"],
            1,
            "No such partner",
            id="missing-partner",
        ),
        pytest.param(
            ["create-application", "--partner-id", "42", "--name", "X", "--email", "a@b.co"],
            2,
            "not a valid id",
            id="malformed-partner-id",
        ),
        pytest.param(
            ["create-partner", "--name", "X", "--email", "not-an-email"],
            1,
            "contact_email",
            id="bad-email",
        ),
        pytest.param(["create-group", "--name", ""], 1, "name", id="empty-name"),
        pytest.param(["approve-application", MISSING], 1, "No such application", id="no-app"),
        pytest.param(["approve-application", "x"], 2, "not a valid id", id="malformed-app-id"),
        pytest.param(["rotate-secret", "x"], 2, "not a valid id", id="malformed-rotate"),
        pytest.param(["revoke-grant", MISSING], 1, "No such grant", id="no-grant"),
        pytest.param(["revoke-grant", "x"], 2, "not a valid id", id="malformed-grant-id"),
        pytest.param(
            ["grant", "--application-id", MISSING, "--clinic-id", MISSING, "--scopes", "nope"],
            1,
            "scopes",
            id="unknown-scope",
        ),
        pytest.param(
            ["grant", "--application-id", MISSING, "--clinic-id", "x", "--scopes", "nope"],
            2,
            "not a valid id",
            id="malformed-clinic-id",
        ),
        pytest.param(
            [
                *("create-staff-user", "--clinic-id", MISSING),
                *("--username", "someone", "--display-name", "S", "--password", "short"),
            ],
            1,
            "password",
            id="short-password",
        ),
        pytest.param(
            ["create-staff-user", "--clinic-id", MISSING, "--username", "u", "--display-name", "S"],
            1,
            "VETGATE_STAFF_PASSWORD",
            id="no-password",
        ),
        pytest.param(["rotate-keys", "--publish-delay", "soon"], 2, "invalid float", id="delay"),
        pytest.param(["create-group"], 2, "--name", id="missing-argument"),
        pytest.param(["frobnicate"], 2, "invalid choice", id="unknown-verb"),
    ],
)
async def test_bad_input_fails_with_a_message_and_no_traceback(
    env: dict[str, str], args: list[str], returncode: int, expected: str
) -> None:
    run = await vetgate(*args, env=env)
    assert_clean_failure(run, returncode)
    assert expected in run.stdout + run.stderr


async def test_validation_failure_is_a_problem_naming_the_field(env: dict[str, str]) -> None:
    run = await vetgate(
        "create-clinic",
        *("--group-id", MISSING, "--name", "X", "--time-zone", "Mars/Base"),
        env=env,
    )
    assert_clean_failure(run, 1)
    problem = run.json()
    assert problem["status"] == 422
    assert [e["field"] for e in problem["errors"]] == ["time_zone"]
