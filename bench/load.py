"""Load generation over real HTTP with keep-alive: wrk when installed, else an aiohttp client.

Both the service and its baseline are driven by the same generator in the same run, so the
ratio between them holds even on a noisy machine.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass

import aiohttp


@dataclass(frozen=True)
class LoadResult:
    name: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    generator: str


def generator_name() -> str:
    return "wrk" if shutil.which("wrk") else "aiohttp"


async def run_load(
    name: str,
    url: str,
    *,
    body: str,
    headers: dict[str, str],
    seconds: float,
    connections: int,
) -> LoadResult:
    if shutil.which("wrk"):
        return await asyncio.to_thread(_wrk, name, url, body, headers, seconds, connections)
    return await _aiohttp_load(name, url, body, headers, seconds, connections)


def _wrk(
    name: str, url: str, body: str, headers: dict[str, str], seconds: float, connections: int
) -> LoadResult:
    lines = ['wrk.method = "POST"', f"wrk.body = {_lua(body)}"]
    lines += [f"wrk.headers[{_lua(k)}] = {_lua(v)}" for k, v in headers.items()]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t2",
                f"-c{connections}",
                f"-d{int(seconds)}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    errors = int(non2xx.group(1)) if non2xx else 0
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return LoadResult(name, rps, _wrk_pct(out, "50"), _wrk_pct(out, "99"), errors, "wrk")


def _wrk_pct(out: str, pct: str) -> float:
    match = re.search(rf"^\s+{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if match is None:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _lua(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _aiohttp_load(
    name: str, url: str, body: str, headers: dict[str, str], seconds: float, connections: int
) -> LoadResult:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        if response.status >= 300:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else float("nan")
    return LoadResult(
        name,
        len(latencies) / elapsed,
        statistics.median(latencies) * 1000 if latencies else float("nan"),
        p99 * 1000,
        errors,
        "aiohttp",
    )
