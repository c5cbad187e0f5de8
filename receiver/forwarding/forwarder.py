"""The forwarder: claims due deliveries from the outbox and sends them to subscribers (a signed
POST per the Standard Webhooks spec, or a publish to a broker: sinks/), with retries,
dead-lettering and circuit breaking by 410."""

import asyncio
import dataclasses
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
import structlog

from receiver.db import connection, is_transient, log_loop_failure
from receiver.forwarding import queries as forward_queries
from receiver.forwarding.broker_url import scrub
from receiver.forwarding.netguard import GuardedResolver, parse_networks
from receiver.forwarding.payload import sign
from receiver.forwarding.sinks import Outcome, Outgoing, Sinks
from receiver.loops import looping
from receiver.metrics import Metrics
from receiver.retry_after import parse_retry_after
from receiver.settings import Settings

log = structlog.get_logger()


@asynccontextmanager
async def http_client(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    """The one shared client: internal addresses refused at resolution time."""
    connector = aiohttp.TCPConnector(
        resolver=GuardedResolver(parse_networks(settings.forward_allow_networks)),
        limit=settings.forward_concurrency,
    )
    async with aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": "dlr-receiver"},
        timeout=aiohttp.ClientTimeout(total=settings.forward_timeout),
    ) as session:
        yield session


# A subscription's first window: the fixed limit of old, so a new subscriber starts no slower
# than before, and one that hangs from its first request holds 16 of the forwarder's slots
# for one timeout. Starting from 4 cost a 50 ms subscriber at 500/s a p99 of 220-230 ms
# against 120-160 ms, in the round trips it took to widen.
_FIRST_WINDOW = 16
_LOCKED_PAUSE = 0.05  # seconds; see _idle_for


@dataclass
class _Window:
    """How many requests one subscription may have in flight from this forwarder.

    Additive increase, multiplicative decrease, as TCP paces a connection: a quick 2xx to a
    request sent while at least half the window was in use widens it by one, up to the ceiling
    (RECEIVER_FORWARD_PER_SUBSCRIPTION), so a full window doubles each round trip; a timeout,
    a failed connection, a 429 or 5xx, or a slow answer halves it, down to one. A fast
    subscriber soon has the ceiling, and a hung one keeps a single request open rather than a
    ceiling's worth of the forwarder's slots. Other answers (4xx, redirects) say nothing about
    how loaded the subscriber is; a window that was not in use has not been tried, so it does
    not grow.
    """

    size: int
    inflight: int = 0

    def room(self, ceiling: int) -> int:
        return max(0, min(self.size, ceiling) - self.inflight)

    def answered(self, outcome: Outcome, slow: bool, sent_with: int, ceiling: int) -> None:
        status = outcome.status
        if outcome.ok:
            if slow:
                self.size = max(1, self.size // 2)
            elif sent_with * 2 >= self.size:
                self.size = min(ceiling, self.size + 1)
        elif slow or status is None or status == 429 or status >= 500:
            # No answer (a webhook's timeout or failed connection, a broker's refusal or
            # outage) is taken as load, as a 5xx is.
            self.size = max(1, self.size // 2)


class Forwarder:
    def __init__(
        self,
        pool: asyncpg.Pool,
        session: aiohttp.ClientSession,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics or Metrics()
        self._settings = settings
        allow = parse_networks(settings.forward_allow_networks)
        self._sinks = Sinks(session, allow, settings.forward_timeout)
        self._wake = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._windows: dict[uuid.UUID, _Window] = {}
        # An answer taking half the timeout is close to being a timeout: it counts as one.
        self._slow = settings.forward_timeout / 2
        self._listener: asyncpg.Connection | None = None
        self._stopping = False
        self.delivered = _SettleTogether(pool)

    def stop(self) -> None:
        """Finish the round under way and return from run(); claims not yet delivered go back
        to the queue when their lease runs out."""
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        settler = asyncio.create_task(self.delivered.run(), name="forward-settle")
        try:
            while not self._stopping:
                # Cleared before looking for work, never after: a NOTIFY or a freed slot that
                # arrives while we look leaves it set, so the wait below ends at once instead
                # of at the fallback poll.
                self._wake.clear()
                try:
                    await self._listen()
                    if await self._claim():
                        continue  # there may be more due right now
                    idle = await self._idle_for()
                except Exception as exc:
                    # The forwarder must outlive any one failure: log, back off, go on.
                    log_loop_failure("forward", exc)
                    await self._drop_listener()
                    await asyncio.sleep(1)
                    continue
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), idle)
        finally:
            await self._drop_listener()
            if self._inflight:
                # Deliveries under way get their request timeout to finish and be recorded.
                await asyncio.wait(self._inflight, timeout=self._settings.forward_timeout + 5)
            for task in self._inflight:
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
            self.delivered.close()
            await settler
            await self._sinks.close()

    async def _listen(self) -> None:
        # A connection of its own, held for LISTEN; polling covers the gaps when it is down.
        if self._listener is not None and not self._listener.is_closed():
            return
        url = self._settings.database_url
        assert url is not None
        self._listener = await asyncpg.connect(url.get_secret_value(), timeout=10)
        await self._listener.add_listener(forward_queries.CHANNEL, self._notified)

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def _drop_listener(self) -> None:
        if self._listener is not None:
            with suppress(Exception):
                await self._listener.close(timeout=2)
            self._listener = None

    async def _claim(self) -> int:
        free = self._settings.forward_concurrency - len(self._inflight)
        if free <= 0:
            return 0
        ceiling = self._settings.forward_per_subscription
        async with connection(self._pool) as conn:
            rows = await forward_queries.claim(
                conn,
                room={sub: window.room(ceiling) for sub, window in self._windows.items()},
                room_for_others=min(_FIRST_WINDOW, ceiling),
                limit=free,
                lease_seconds=self._settings.forward_lease,
            )
        windows = []
        for row in rows:
            window = self._windows.setdefault(
                row["subscription_id"], _Window(min(_FIRST_WINDOW, ceiling))
            )
            window.inflight += 1
            windows.append(window)
        for row, window in zip(rows, windows, strict=True):
            # Counted after the whole claim: rows claimed together went out together.
            task = asyncio.create_task(self._deliver(row, window, window.inflight))
            self._inflight.add(task)
            task.add_done_callback(self._finished)
        return len(rows)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        self._wake.set()  # a slot is free
        if not task.cancelled() and task.exception() is not None:
            log.error("forward.crashed", error=repr(task.exception()))

    async def _idle_for(self) -> float:
        """How long to wait for a wake-up before looking again: until the next delivery that
        could be claimed is due, at most the fallback poll interval. With no slot free, only a
        finishing delivery (which wakes us) can change anything."""
        poll = self._settings.forward_poll_interval
        if len(self._inflight) >= self._settings.forward_concurrency:
            return poll
        ceiling = self._settings.forward_per_subscription
        full = [sub for sub, window in self._windows.items() if window.room(ceiling) == 0]
        async with connection(self._pool) as conn:
            due_in = await forward_queries.next_due_in(conn, full)
        # Due now yet not claimed: another transaction holds the row (SKIP LOCKED passed it
        # over), perhaps for long. A short pause keeps that from becoming a busy loop.
        return poll if due_in is None else max(_LOCKED_PAUSE, min(poll, due_in))

    async def _deliver(self, row: asyncpg.Record, window: _Window, sent_with: int) -> None:
        started = time.monotonic()
        try:
            out = _outgoing(row)
            try:
                sink = self._sinks.for_url(out.url)
                outcome = await sink.send(out)
            except Exception as exc:
                # A sink answers every failure it knows; anything else is a bug, logged, and
                # the delivery is retried as a failure rather than left to its lease.
                log.exception("forward.sink_crashed", event_id=row["event_id"])
                outcome = Outcome(ok=False, error=f"internal error: {type(exc).__name__}")
            if outcome.error is not None:
                # A broker's error may quote its URL: its credentials never reach a log line.
                outcome = dataclasses.replace(outcome, error=scrub(outcome.error, out.url))
            seconds = time.monotonic() - started
            window.answered(
                outcome, seconds >= self._slow, sent_with, self._settings.forward_per_subscription
            )
        finally:
            window.inflight -= 1
            self._wake.set()  # the subscription has room again
        result = "delivered" if outcome.ok else "failed"
        self._metrics.inc("dlr_forward_attempts_total", result=result)
        if outcome.ok:
            queued = (datetime.now(UTC) - row["created_at"]).total_seconds()
            self._metrics.observe("dlr_forward_delay_seconds", queued)
        await self._settle(row, outcome, int(seconds * 1000))

    async def _settle(self, row: asyncpg.Record, outcome: Outcome, duration_ms: int) -> None:
        status, retry_after, error = outcome.status, outcome.retry_after, outcome.error
        delivery, subscription = row["id"], row["subscription_id"]
        fields: dict[str, Any] = {"delivery": str(delivery), "event_id": row["event_id"]}
        for attempt in range(3):
            try:
                if outcome.ok:
                    await self.delivered.settle(
                        forward_queries.Delivered(delivery, subscription, status, duration_ms)
                    )
                    log.info("forward.delivered", status=status, ms=duration_ms, **fields)
                    return
                async with connection(self._pool) as conn, conn.transaction():
                    await forward_queries.record_attempt(conn, delivery, duration_ms, status, error)
                    if status == 410:
                        # Gone: the subscriber asked us to stop. Honour it for the subscription.
                        reason = "endpoint answered 410 Gone"
                        await forward_queries.mark_failed(
                            conn,
                            delivery,
                            subscription,
                            status_code=status,
                            error=reason,
                            retry_in=None,
                            disable_after_seconds=self._settings.forward_disable_after,
                        )
                        await forward_queries.disable_subscription(conn, subscription, reason)
                        log.warning("forward.gone", **fields)
                    else:
                        retry_in = self._retry_in(row["attempts"], status, retry_after)
                        disabled = await forward_queries.mark_failed(
                            conn,
                            delivery,
                            subscription,
                            status_code=status,
                            error=error or f"HTTP {status}",
                            retry_in=retry_in,
                            disable_after_seconds=self._settings.forward_disable_after,
                        )
                        event = "forward.dead" if retry_in is None else "forward.retry"
                        log.warning(event, status=status, error=error, retry_in=retry_in, **fields)
                        if disabled:
                            log.warning("forward.subscription_disabled", reason=disabled, **fields)
                return
            except Exception as exc:
                # The lease brings the delivery back if this never lands: at least once holds.
                if not is_transient(exc) or attempt == 2:
                    log.error("forward.settle_failed", error=str(exc), **fields)
                    return
                await asyncio.sleep(0.5 * (attempt + 1))

    def _retry_in(self, attempts: int, status: int | None, retry_after: str | None) -> float | None:
        schedule = self._settings.forward_retry_schedule
        if attempts > len(schedule):
            return None  # that was the last try: dead letter
        # Jitter spreads retries so a recovering subscriber is not hit by all of them at once.
        delay = schedule[attempts - 1] * random.uniform(0.8, 1.2)  # noqa: S311 - not crypto
        if status in (429, 503) and retry_after:
            asked = parse_retry_after(retry_after)
            if asked is not None:
                delay = min(max(asked, 1.0), self._settings.forward_max_retry_after)
        return delay


class _SettleTogether:
    """Successful deliveries are recorded together: whichever finish while one statement runs
    go in the next, so at 1,000 deliveries/s the database sees a few statements, not 1,000.

    One writer task (run) takes everything queued, writes it, and answers each delivery's
    caller; a failure goes to every delivery in that statement, whose caller retries (or
    leaves it to the lease).
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._queued: list[tuple[forward_queries.Delivered, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        # Statements written, for tests that check deliveries are settled together.
        self.statements = 0

    async def settle(self, delivered: forward_queries.Delivered) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((delivered, done))
        self._wake.set()
        await done

    async def run(self) -> None:
        """Write until close(), and then what is still queued."""
        while not self._closing or self._queued:
            await self._wake.wait()
            self._wake.clear()
            while self._queued:
                batch, self._queued = self._queued, []
                await self._write(batch)

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    async def _write(
        self, batch: list[tuple[forward_queries.Delivered, asyncio.Future[None]]]
    ) -> None:
        try:
            async with connection(self._pool) as conn:
                await forward_queries.settle_delivered(conn, [d for d, _ in batch])
            self.statements += 1
        except BaseException as exc:
            for _, done in batch:
                if done.done():
                    continue
                if isinstance(exc, Exception):
                    done.set_exception(exc)
                else:
                    done.cancel()
            if not isinstance(exc, Exception):
                raise
        else:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)


def _outgoing(row: asyncpg.Record) -> Outgoing:
    """The delivery as every sink sends it: the Standard Webhooks envelope, stamped now, and
    its headers, signed with the subscription's secrets (a broker's reader may verify too)."""
    envelope = dict(row["payload"])
    envelope["timestamp"] = datetime.now(UTC).isoformat()
    body = json.dumps(envelope).encode()
    timestamp = int(time.time())
    signatures = [
        sign(secret, row["event_id"], timestamp, body)
        for secret in (row["secret"], *row["previous_secrets"])
    ]
    headers = {
        "webhook-id": row["event_id"],
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signatures),
    }
    return Outgoing(
        url=row["url"],
        event_id=row["event_id"],
        body=body,
        headers=headers,
        provider=row["provider"],
        status=row["status"],
        message_key=row["message_key"],
    )


@asynccontextmanager
async def forwarder_running(
    pool: asyncpg.Pool, settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[Forwarder]:
    """The forwarder on its own guarded HTTP client, from start until the context ends."""
    async with (
        http_client(settings) as session,
        looping(Forwarder(pool, session, settings, metrics), "forward") as forwarder,
    ):
        yield forwarder
