"""One HTTP attempt at a partner endpoint: signed, time-boxed, never following a redirect."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from services.callbacks.retries import parse_retry_after
from services.callbacks.settings import CallbacksSettings
from services.callbacks.signing import webhook_headers
from services.callbacks.ssrf import AddressRefused, CheckedResolver, check_ip_literal, redact_url


@dataclass(frozen=True)
class Outcome:
    attempted_at: datetime
    duration_ms: int
    status_code: int | None
    excerpt: str | None
    error: str | None
    retry_after: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410

    @property
    def answered(self) -> bool:
        """The monitoring rule: any answer below 500 means the endpoint is alive."""
        return self.status_code is not None and self.status_code < 500


class Sender:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        allowed_hosts: Sequence[str],
        excerpt_bytes: int,
    ) -> None:
        self._session = session
        self._allowed = frozenset(allowed_hosts)
        self._excerpt_bytes = excerpt_bytes

    async def send(self, url: str, msg_id: str, body: bytes, keys: Sequence[bytes]) -> Outcome:
        """POST ``body`` signed with ``keys``; whatever happens comes back as an Outcome."""
        attempted_at = datetime.now(UTC)
        started = time.perf_counter()
        headers = webhook_headers(keys, msg_id, int(time.time()), body)

        def done(
            status: int | None = None,
            excerpt: str | None = None,
            error: str | None = None,
            retry_after: float | None = None,
        ) -> Outcome:
            elapsed = int((time.perf_counter() - started) * 1000)
            return Outcome(attempted_at, elapsed, status, excerpt, error, retry_after)

        try:
            check_ip_literal(url, self._allowed)
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                raw = await response.content.read(self._excerpt_bytes)
                # Postgres text cannot hold NUL, and one unrecordable excerpt would hold back
                # every attempt recorded beside it.
                excerpt = raw.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
                retry_after = None
                if response.status in (429, 503):
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                error = None
                if 300 <= response.status < 400:
                    error = "redirects are not followed"
                return done(response.status, excerpt, error, retry_after)
        except AddressRefused as exc:
            return done(error=f"refused: {exc}")
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error
            if isinstance(cause, AddressRefused):
                return done(error=f"refused: {cause}")
            return done(error=f"connection failed: {cause.strerror or type(cause).__name__}")
        except TimeoutError:
            return done(error="timed out")
        except aiohttp.ClientError as exc:
            # Messages can quote the URL, and a query can hold the receiver's own secret.
            message = str(exc).replace(url, redact_url(url))
            return done(error=f"{type(exc).__name__}: {message}"[:500])


@asynccontextmanager
async def delivery_session(settings: CallbacksSettings) -> AsyncIterator[aiohttp.ClientSession]:
    """The process's one session for partner endpoints: checked addresses, no cookies, no proxy
    from the environment, explicit timeouts, and connections kept alive per endpoint."""
    connector = aiohttp.TCPConnector(
        resolver=CheckedResolver(settings.webhook_allowed_hosts),
        limit=settings.delivery_concurrency + 32,
        limit_per_host=0,
        ttl_dns_cache=30,
    )
    timeout = aiohttp.ClientTimeout(
        total=settings.attempt_timeout_seconds,
        connect=settings.connect_timeout_seconds,
        sock_connect=settings.connect_timeout_seconds,
    )
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        # The answer's first bytes are kept as they came, so they are asked for uncompressed.
        auto_decompress=False,
        headers={"Accept-Encoding": "identity"},
    ) as session:
        yield session
