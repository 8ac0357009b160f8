"""Load generation over real HTTP with keep-alive: wrk when installed, else an aiohttp client.

Both the service and its baseline are driven by the same generator in the same run, so the
ratio between them holds even on a noisy machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


@dataclass
class Block:
    """A fixed set of requests each sent once: how many answered how, latencies, wall time."""

    count: int
    statuses: Counter[str]
    latencies: list[float]
    seconds: float


# One request per pre-generated body: every wrk thread sends its share once (``delay`` holds a
# connection back for good once the share is out), times each request by its X-Request-Id, and
# says "finished" when all of its answers are in. wrk itself would run to -d; the caller
# interrupts it instead. Arguments: the bodies file, the thread count, "keyed" to send each
# body's key as its Idempotency-Key too.
#: What every wrk script here starts with: a monotonic clock for timing requests, and each
#: thread numbered and kept so that ``done`` can read what every thread recorded.
WRK_PRELUDE = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *now);
]]
local clock = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, clock)
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

local threads, created = {}, 0
function setup(thread)
  thread:set("index", created)
  created = created + 1
  table.insert(threads, thread)
end
"""

WRK_SCRIPT = (
    WRK_PRELUDE
    + r"""
local requests, ids, sent = {}, {}, {}
local issued, generated = 0, 0
answered, latencies, statuses = 0, {}, {}

function init(args)
  local total, line_no = tonumber(args[2]), 0
  for line in io.lines(args[1]) do
    if line_no % total == index then
      local key, body = line:match("^([^\t]+)\t(.*)$")
      local headers = {}
      for name, value in pairs(wrk.headers) do headers[name] = value end
      if args[3] == "keyed" then headers["Idempotency-Key"] = key end
      headers["X-Request-Id"] = key
      table.insert(requests, wrk.format("POST", nil, headers, body))
      table.insert(ids, key)
    end
    line_no = line_no + 1
  end
  share = #requests
end

function delay()
  if issued < #requests then
    issued = issued + 1
    return 0
  end
  return 3600000
end

function request()
  -- wrk asks thread 0 for one request before the run, to check it parses: not a request sent.
  if issued == 0 then return requests[1] end
  generated = generated + 1
  local t = now()
  sent[ids[generated]] = t
  if first == nil then first = t end
  return requests[generated]
end

function response(status, headers, body)
  local t = now()
  local started = sent[headers["X-Request-Id"] or headers["x-request-id"] or ""]
  if started ~= nil then table.insert(latencies, t - started) end
  local code = tostring(status)
  if status == 201 and headers["Idempotent-Replayed"] then code = "201 replayed" end
  statuses[code] = (statuses[code] or 0) + 1
  answered = answered + 1
  if answered == #requests then
    last = t
    io.write("finished\n")
    io.flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format("window %.6f %.6f %d %d\n",
      t:get("first") or -1, t:get("last") or -1, t:get("answered"), t:get("share")))
    for code, n in pairs(t:get("statuses")) do
      io.write(string.format("status %d %s\n", n, code))
    end
    io.write("latencies")
    for _, v in ipairs(t:get("latencies")) do io.write(string.format(" %.6f", v)) end
    io.write("\n")
  end
end
"""
)


def _write_each_once_files(folder: str, items: Sequence[tuple[str, str]]) -> tuple[Path, Path]:
    script, data = Path(folder, "each_once.lua"), Path(folder, "bodies.tsv")
    script.write_text(WRK_SCRIPT)
    data.write_text("".join(f"{key}\t{body}\n" for key, body in items))
    return script, data


async def post_each_once(
    url: str,
    headers: dict[str, str],
    items: Sequence[tuple[str, str]],
    *,
    connections: int,
    threads: int,
    keyed: bool,
    within: float = 120.0,
) -> Block:
    """POST every (key, JSON body) once with wrk, from ``connections`` keep-alive connections
    shared by ``threads`` threads; with ``keyed`` the key is the Idempotency-Key too."""
    with tempfile.TemporaryDirectory() as folder:
        script, data = _write_each_once_files(folder, items)
        proc = await asyncio.create_subprocess_exec(
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            "-d600s",
            "--timeout",
            "30s",
            *(a for k, v in headers.items() for a in ("-H", f"{k}: {v}")),
            "-H",
            "Content-Type: application/json",
            "-s",
            str(script),
            url,
            "--",
            str(data),
            str(threads),
            "keyed" if keyed else "plain",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        finished = 0
        deadline = time.monotonic() + within
        with contextlib.suppress(TimeoutError):
            while finished < threads:
                line = await asyncio.wait_for(
                    proc.stdout.readline(), timeout=max(0.1, deadline - time.monotonic())
                )
                if not line:
                    break
                finished += line.strip() == b"finished"
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        out, err = await proc.communicate()
    return _parse_each_once(out.decode(), err.decode(), len(items), threads)


def _parse_each_once(out: str, err: str, count: int, threads: int) -> Block:
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    firsts, lasts = [], []
    answered = 0
    for line in out.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "window":
            first, last, done, _share = rest.split()
            answered += int(done)
            if float(first) >= 0:
                firsts.append(float(first))
            if float(last) >= 0:
                lasts.append(float(last))
        elif kind == "status":
            n, code = rest.split(" ", 1)
            statuses[code] += int(n)
        elif kind == "latencies":
            latencies += [float(v) for v in rest.split()]
    if not firsts or len(lasts) < threads:
        raise RuntimeError(f"wrk did not finish its requests:\n{out}\n{err}")
    if answered < count:
        statuses["no answer"] += count - answered
    return Block(count, statuses, latencies, max(lasts) - min(firsts))
