"""The baseline: a bare aiohttp handler that reads a form and answers JSON of a given size."""

from __future__ import annotations

import sys

from aiohttp import web


def create_app(size: int) -> web.Application:
    payload = {"access_token": "x" * max(0, size - 100), "token_type": "Bearer", "expires_in": 900}

    async def handler(request: web.Request) -> web.Response:
        await request.post()
        return web.json_response(payload)

    app = web.Application()
    app.router.add_post("/oauth/token", handler)
    return app


if __name__ == "__main__":
    port, size = int(sys.argv[1]), int(sys.argv[2])
    web.run_app(create_app(size), host="127.0.0.1", port=port, print=None, access_log=None)
