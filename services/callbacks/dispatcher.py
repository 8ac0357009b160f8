"""The delivery loop: lease due deliveries, attempt them concurrently, record the outcomes.

Postgres decides what is due. Every copy of the service runs this loop; a lease (with a token
only its holder can record under) keeps two workers from sending the same attempt, and a lease
left by a worker that died simply runs out, so the delivery is picked up again. Outcomes are
written in batches, with the endpoint bookkeeping (failure clock, 410, auto-disable) beside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Callable

import asyncpg

from services.callbacks import store
from services.callbacks.mail import endpoint_disabled, queue_mail
from services.callbacks.retries import RetryPolicy
from services.callbacks.sender import Outcome, Sender
from services.callbacks.settings import CallbacksSettings
from services.callbacks.signing import SecretBox, secret_key
from services.callbacks.ssrf import redact_url
from shared.db import Connection, Record
from shared.ratelimit import TokenBuckets
from shared.waiting import wait_until_set

log = logging.getLogger("vetgate.callbacks.dispatch")

_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

GONE_REASON = "it answered 410 Gone"
SILENT_REASON = "no delivery succeeded for {days:g} days"


def next_state(
    policy: RetryPolicy, *, attempts_before: int, replay: bool, outcome: Outcome
) -> tuple[str, float]:
    """What a delivery becomes after this attempt, and in how many seconds it is due again."""
    if outcome.succeeded:
        return "succeeded", 0.0
    if outcome.gone or replay:
        return "failed", 0.0
    delay = policy.next_delay(attempts_before + 1, retry_after=outcome.retry_after)
    if delay is None:
        return "failed", 0.0
    return "pending", delay


def attempt_record(
    outcome: Outcome,
    *,
    delivery_id: uuid.UUID,
    endpoint_id: uuid.UUID,
    token: uuid.UUID,
    trigger: str,
    state: str,
    delay: float,
) -> store.AttemptRecord:
    """What is written of one attempt, and what its delivery becomes."""
    return store.AttemptRecord(
        delivery_id=delivery_id,
        endpoint_id=endpoint_id,
        token=token,
        attempted_at=outcome.attempted_at,
        duration_ms=outcome.duration_ms,
        status_code=outcome.status_code,
        excerpt=outcome.excerpt,
        error=outcome.error,
        trigger=trigger,
        outcome=state,
        delay_seconds=delay,
    )


class Keys:
    """Decrypted signing keys by ciphertext: decrypting once per secret, not per attempt."""

    def __init__(self, box: SecretBox) -> None:
        self._box = box
        self._keys: dict[bytes, bytes] = {}

    def __call__(self, sealed: list[bytes]) -> list[bytes]:
        keys = []
        for ciphertext in sealed:
            key = self._keys.get(ciphertext)
            if key is None:
                if len(self._keys) > 10_000:
                    self._keys.clear()
                key = self._keys[ciphertext] = secret_key(self._box.open(ciphertext))
            keys.append(key)
        return keys


class Dispatcher:
    def __init__(
        self,
        pool: asyncpg.Pool,
        sender: Sender,
        keys: Keys,
        settings: CallbacksSettings,
        *,
        on_mail: Callable[[], None] = lambda: None,
        on_attempt: Callable[[Outcome], None] = lambda _: None,
    ) -> None:
        self._pool = pool
        self._sender = sender
        self._keys = keys
        self._settings = settings
        self._policy = RetryPolicy(
            settings.retry_schedule,
            jitter=settings.retry_jitter,
            retry_after_min=settings.retry_after_min_seconds,
            retry_after_max=settings.retry_after_max_seconds,
        )
        self._on_mail = on_mail
        self._on_attempt = on_attempt
        self._wake = asyncio.Event()
        self._written = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._pending: list[store.AttemptRecord] = []
        # Answered attempts whose records are not written yet (delivery id to lease token):
        # they no longer hold a request open, so their endpoints' slots are free.
        self._unrecorded: dict[uuid.UUID, uuid.UUID] = {}
        self._buckets = TokenBuckets()

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        writer = asyncio.create_task(self._write_loop(), name="delivery-writer")
        try:
            await self._claim_loop()
        finally:
            for task in list(self._inflight):
                task.cancel()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            # What finished before the stop is recorded now rather than sent again after the
            # leases run out.
            if self._pending:
                with contextlib.suppress(*_DB_ERRORS):
                    await asyncio.wait_for(self.write(self._pending), timeout=5.0)

    async def _claim_loop(self) -> None:
        backoff = self._settings.dispatch_poll_seconds
        while True:
            self._wake.clear()
            free = self._settings.delivery_concurrency - len(self._inflight)
            asked = min(free, self._settings.claim_batch)
            got = 0
            if asked > 0:
                try:
                    got = await self._claim(asked)
                    backoff = self._settings.dispatch_poll_seconds
                except _DB_ERRORS as exc:
                    log.warning("delivery loop paused: %s", type(exc).__name__)
                    backoff = min(backoff * 2, 10.0)
            if got and got == asked:
                continue
            if await wait_until_set(self._wake, backoff):
                # Let the completions and arrivals of the next moment share one claim
                # instead of paying a query each.
                await asyncio.sleep(self._settings.dispatch_coalesce_seconds)

    async def _claim(self, limit: int) -> int:
        token = uuid.uuid4()
        async with self._pool.acquire() as conn:
            rows = await store.claim_deliveries(
                conn,
                limit=limit,
                endpoint_cap=self._settings.endpoint_concurrency,
                lease_seconds=self._settings.delivery_lease_seconds,
                gap_seconds=self._settings.ordering_gap_seconds,
                token=token,
                finished=self._unrecorded,
            )
        deferred: dict[float, list[uuid.UUID]] = {}
        for row in rows:
            rate = row["rate_limit"]
            if rate is not None:
                wait = self._buckets.take(str(row["endpoint_id"]), rate=rate, burst=rate)
                if wait > 0:
                    deferred.setdefault(round(wait, 2), []).append(row["id"])
                    continue
            task = asyncio.create_task(self._attempt(row, token))
            self._inflight.add(task)
            task.add_done_callback(self._attempt_done)
        if deferred:
            async with self._pool.acquire() as conn:
                for wait, ids in deferred.items():
                    await store.defer_deliveries(conn, ids, token, wait)
        return len(rows)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()

    async def _attempt(self, row: Record, token: uuid.UUID) -> None:
        outcome = await self._sender.send(
            row["url"], str(row["event_id"]), row["body"].encode(), self._keys(row["secrets"])
        )
        self._on_attempt(outcome)
        state, delay = next_state(
            self._policy, attempts_before=row["attempts"], replay=row["replay"], outcome=outcome
        )
        if not outcome.succeeded:
            log.info(
                "delivery %s to %s failed (%s): %s",
                row["id"],
                redact_url(row["url"]),
                outcome.status_code or outcome.error,
                state,
            )
        self._unrecorded[row["id"]] = token
        self._pending.append(
            attempt_record(
                outcome,
                delivery_id=row["id"],
                endpoint_id=row["endpoint_id"],
                token=token,
                trigger="replay" if row["replay"] else "scheduled",
                state=state,
                delay=delay,
            )
        )
        self._written.set()

    async def _write_loop(self) -> None:
        while True:
            await self._written.wait()
            self._written.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                try:
                    await self.write(batch)
                except asyncpg.DataError:
                    await self._write_each(batch)
            except _DB_ERRORS as exc:
                # Kept for the next round; if the database stays away the leases run out and
                # the deliveries are attempted again (receivers dedupe by webhook-id).
                log.warning("recording %d attempts failed: %s", len(batch), type(exc).__name__)
                self._pending[:0] = batch
                await asyncio.sleep(1.0)
                self._written.set()
                continue
            for record in batch:
                self._unrecorded.pop(record.delivery_id, None)
            # A recorded outcome can let an ordered endpoint's next event go.
            self._wake.set()

    async def _write_each(self, batch: list[store.AttemptRecord]) -> None:
        """A batch the database refused for what it holds: each attempt alone, and one still
        refused without the text it brought back, so that one attempt never holds back the
        others. (Writing an attempt twice records it once: its lease token is gone after.)"""
        for record in batch:
            try:
                await self.write([record])
            except asyncpg.DataError as exc:
                log.error(
                    "attempt at delivery %s recorded without its answer: %s",
                    record.delivery_id,
                    type(exc).__name__,
                )
                await self.write(
                    [dataclasses.replace(record, excerpt=None, error="unrecordable answer")]
                )

    async def write(self, batch: list[store.AttemptRecord]) -> None:
        """Record a batch of attempts and what they mean for their endpoints."""
        async with self._pool.acquire() as conn:
            if all(r.outcome == "succeeded" for r in batch):
                # The common case: one statement, no transaction to open and commit.
                await store.record_attempts(conn, batch)
                return
            async with conn.transaction():
                mailed = await self._record_with_failures(conn, batch)
        if mailed:
            self._on_mail()

    async def _record_with_failures(
        self, conn: Connection, batch: list[store.AttemptRecord]
    ) -> bool:
        """Record a batch with failures in it and disable the endpoints they condemn: at once
        on a 410, else once failing for longer than allowed. True if a mail was queued."""
        mailed = False
        recorded = set(await store.record_attempts(conn, batch))
        mine = [r for r in batch if r.delivery_id in recorded]
        succeeded = {r.endpoint_id for r in mine if r.outcome == "succeeded"}
        failed = {r.endpoint_id for r in mine if r.outcome != "succeeded"} - succeeded
        gone = {r.endpoint_id for r in mine if r.status_code == 410}
        if gone:
            for row in await store.disable_endpoints(conn, list(gone), reason=GONE_REASON):
                mailed |= await queue_mail(
                    conn,
                    row["contact_email"],
                    endpoint_disabled(row["url"], GONE_REASON),
                    endpoint_id=row["id"],
                )
        silent = failed - gone
        if silent:
            limit = self._settings.auto_disable_after_seconds
            reason = SILENT_REASON.format(days=limit / 86400)
            for row in await store.disable_endpoints(
                conn, list(silent), reason=reason, failing_longer_than=limit
            ):
                mailed |= await queue_mail(
                    conn,
                    row["contact_email"],
                    endpoint_disabled(row["url"], reason),
                    endpoint_id=row["id"],
                )
        return mailed
