"""Waiting in background loops without losing a cancellation."""

from __future__ import annotations

import asyncio


async def wait_until_set(event: asyncio.Event, seconds: float) -> bool:
    """Wait for ``event`` at most ``seconds``; True if it was set.

    ``asyncio.wait_for`` on Python 3.11 can swallow a cancellation that arrives just as the
    awaited event is set, and a loop waiting that way then never stops; ``asyncio.timeout``
    keeps it.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
