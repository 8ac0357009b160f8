"""``python -m bench [tokens|bookings|registrations|callbacks|feed|mixed]``: every benchmark,
or one.

Each prints its tables, every figure next to a baseline measured in the same run."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

from bench import bookings, callbacks, feed, mixed, registrations, token_issuance

BENCHES: dict[str, Callable[[], Awaitable[tuple[str, object]]]] = {
    "tokens": token_issuance.run,
    "bookings": bookings.run,
    "registrations": registrations.run,
    "callbacks": callbacks.run,
    "feed": feed.run,
    "mixed": mixed.run,
}


async def main(names: list[str]) -> None:
    for name in names:
        report, _ = await BENCHES[name]()
        print(report, end="\n\n", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("bench", nargs="?", choices=list(BENCHES), help="only this benchmark")
    args = parser.parse_args()
    asyncio.run(main([args.bench] if args.bench else list(BENCHES)))
