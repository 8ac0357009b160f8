"""Waiting for something that happens asynchronously (an event consumed, a webhook received)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    check: Callable[[], Any | Awaitable[Any]], what: str = "a condition", seconds: float = 10.0
) -> Any:
    """Poll ``check`` until it gives something truthy and return that; fail naming ``what``
    (and the last answer) once ``seconds`` have passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        result = check()
        value = await result if inspect.isawaitable(result) else result
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}")
        await asyncio.sleep(0.02)
