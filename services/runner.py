"""Running services: one per process (``python -m services.<name>``) or all in one process, and
the gateway alone in front of services that run elsewhere (several copies each, if wanted)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence

from aiohttp import web

from services import registry
from services.gateway import create_gateway
from shared import logs
from shared.settings import ServiceSettings


def serve(name: str, *, port: int | None = None) -> None:
    """Run one service in the foreground until SIGINT/SIGTERM; ``port`` over ``VETGATE_PORT``."""
    spec = registry.get(name)
    settings = spec.settings(**({"port": port} if port is not None else {}))
    logs.configure(settings.service_name, settings.log_level)
    web.run_app(spec.create_app(settings), host=settings.host, port=settings.port, print=None)


def serve_gateway(upstreams: Mapping[str, Sequence[str]], *, host: str, port: int) -> None:
    """Run the gateway alone in the foreground until SIGINT/SIGTERM, in front of each service's
    copies (base URLs)."""
    logs.configure("gateway", os.environ.get("VETGATE_LOG_LEVEL", "INFO"))
    web.run_app(create_gateway(upstreams), host=host, port=port, print=None)


async def start_site(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, reuse_address=True).start()
    return runner


async def run_all(*, gateway_port: int = 8000, ready: asyncio.Event | None = None) -> None:
    """All four services and the gateway in one process, as a load balancer would see them.

    The gateway listens on ``gateway_port`` and the services on the four ports after it
    (8000 → auth 8001, bookings 8002, registrations 8003, callbacks 8004).
    """
    runners: list[web.AppRunner] = []
    upstreams: dict[str, str] = {}
    host = os.environ.get("VETGATE_HOST", "127.0.0.1")
    auth_url = f"http://{host}:{gateway_port + 1}"
    try:
        for offset, spec in enumerate(registry.all_specs(), start=1):
            overrides: dict[str, object] = {"port": gateway_port + offset, "auth_url": auth_url}
            if not os.environ.get("VETGATE_ISSUER"):
                # Tokens and metadata must name the gateway this process actually serves.
                overrides["issuer"] = f"http://{host}:{gateway_port}"
            settings: ServiceSettings = spec.settings(**overrides)
            runners.append(
                await start_site(spec.create_app(settings), settings.host, settings.port)
            )
            upstreams[spec.name] = f"http://{settings.host}:{settings.port}"
        runners.append(await start_site(create_gateway(upstreams), host, gateway_port))
        if ready is not None:
            ready.set()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
