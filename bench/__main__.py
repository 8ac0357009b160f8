"""``python -m bench``: run every benchmark and print its table."""

from __future__ import annotations

import asyncio

from bench import token_issuance


async def main() -> None:
    report, _ = await token_issuance.run()
    print(report)


if __name__ == "__main__":
    asyncio.run(main())
