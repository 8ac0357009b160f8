"""``python -m bench.receiver PORT``: the partner side of the callbacks bench, a process of its own.

Every POST is answered ``200 ok`` at once and remembered by path and ``webhook-id`` (the first
receipt only; repeats are counted as duplicates), with the wall-clock time it arrived and its
body; a POST to a path under ``/hang/`` is never answered. The hot path does no more than that,
so the service and its bare baseline meet the same receiver; the bodies are read only when the
bench asks for the summary.

Control (GET, for the bench): ``/_summary?prefix=/fan/`` — count, duplicates, first and last
receipt, count per path and, with ``latency=1``, receipt minus the event's ``occurred_at`` for
every event; ``/_count?prefix=…`` — the count alone. POST ``/_reset``: forget all. The
monitor's pings are answered and only counted.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime
from typing import Any

from aiohttp import web

HANG = "/hang/"
# The envelope's ``type`` comes second, so the monitor's pings show in the body's first bytes.
PING = b'"type":"ping"'


class Store:
    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], tuple[float, bytes]] = {}
        self.duplicates: dict[str, int] = {}
        self.hanging = 0
        self.pings = 0

    def reset(self) -> None:
        self.seen.clear()
        self.duplicates.clear()
        self.hanging = 0
        self.pings = 0


def create_app() -> web.Application:
    store = Store()

    async def receive(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        at = time.time()
        path = request.path
        if path.startswith(HANG):
            store.hanging += 1
            await asyncio.sleep(3600)
        if PING in body[:120]:
            store.pings += 1
            return web.Response(text="ok")
        key = (path, request.headers.get("webhook-id", ""))
        if key in store.seen:
            store.duplicates[path] = store.duplicates.get(path, 0) + 1
        else:
            store.seen[key] = (at, body)
        return web.Response(text="ok")

    async def count(request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "/")
        return web.json_response({"count": sum(1 for p, _ in store.seen if p.startswith(prefix))})

    async def summary(request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "/")
        with_latency = request.query.get("latency") == "1"
        per_path: dict[str, int] = {}
        first, last = float("inf"), 0.0
        latencies: list[float] = []
        for (path, _), (at, body) in store.seen.items():
            if not path.startswith(prefix):
                continue
            per_path[path] = per_path.get(path, 0) + 1
            first, last = min(first, at), max(last, at)
            if with_latency:
                event: dict[str, Any] = json.loads(body)
                occurred = datetime.fromisoformat(event["occurred_at"]).timestamp()
                latencies.append(at - occurred)
        duplicates = sum(n for p, n in store.duplicates.items() if p.startswith(prefix))
        return web.json_response(
            {
                "count": sum(per_path.values()),
                "duplicates": duplicates,
                "first": first if per_path else None,
                "last": last if per_path else None,
                "per_path": per_path,
                "latencies": latencies,
                "hanging": store.hanging,
                "pings": store.pings,
            }
        )

    async def reset(request: web.Request) -> web.Response:
        store.reset()
        return web.json_response({"reset": True})

    async def root(request: web.Request) -> web.Response:
        return web.Response(text="receiver")

    app = web.Application(client_max_size=1024**2)
    app.router.add_get("/", root)
    app.router.add_get("/_count", count)
    app.router.add_get("/_summary", summary)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/{tail:.*}", receive)
    return app


if __name__ == "__main__":
    web.run_app(
        create_app(),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        print=None,
        access_log=None,
        shutdown_timeout=1.0,  # the hanging requests are not waited for
    )
