"""Baselines: bare aiohttp handlers that read a form and answer JSON of a given size.

``plain`` does only that; ``signed`` also signs a JWT of the same claims with Ed25519, which
shows how much of the gap to ``plain`` the signature alone accounts for.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.auth.crypto import b64url_json, compact_jws


def create_app(size: int, *, signed: bool) -> web.Application:
    payload: dict[str, Any] = {"access_token": "", "token_type": "Bearer", "expires_in": 900}
    key = Ed25519PrivateKey.generate()
    header = b64url_json({"alg": "EdDSA", "kid": "baseline", "typ": "at+jwt"})
    claims = {"iss": "http://127.0.0.1:8000", "aud": "vetgate-api", "iat": 0, "exp": 0}
    # Pad the claims so that the signed token, like the plain one, fills ``size`` bytes of JSON.
    claims["pad"] = "x" * max(0, (size - 200) * 3 // 4 - 120)
    filler = "x" * max(0, size - 100)

    async def handler(request: web.Request) -> web.Response:
        await request.post()
        if signed:
            claims["iat"] = int(time.time())
            token = compact_jws(header, claims, key)
        else:
            token = filler
        return web.json_response({**payload, "access_token": token})

    app = web.Application()
    app.router.add_post("/oauth/token", handler)
    return app


if __name__ == "__main__":
    port, size, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    web.run_app(
        create_app(size, signed=mode == "signed"),
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
    )
