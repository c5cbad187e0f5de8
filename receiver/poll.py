"""The poller: asks the providers' status endpoints where pushing is absent or incomplete, and
hands what it learns to the same journal as webhooks (a report both pushed and polled is
one event)."""

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime

import aiohttp
import asyncpg
import structlog

from receiver import poll_queries
from receiver.db import connection, log_loop_failure
from receiver.ingest.journal import Journal
from receiver.metrics import Metrics
from receiver.providers import PROVIDERS, infobip
from receiver.providers.base import PollError, PollTarget, Provider
from receiver.reports import InvalidReport, Parsed, Receipt, StatusUpdate
from receiver.settings import Settings

log = structlog.get_logger()

_CLAIM_BATCH = 100
_DEFAULT_PAUSE = 30.0  # a 429 without Retry-After
_MAX_PAUSE = 3600.0


@asynccontextmanager
async def http_client(settings: Settings) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        headers={"User-Agent": "dlr-receiver"},
        timeout=aiohttp.ClientTimeout(total=settings.poll_timeout),
    ) as session:
        yield session


class _Spacing:
    """At most `rate` request starts per second."""

    def __init__(self, rate: float) -> None:
        self._gap = 1.0 / rate
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = asyncio.get_running_loop().time()
            delay = self._next - now
            self._next = max(now, self._next) + self._gap
        if delay > 0:
            await asyncio.sleep(delay)


class Poller:
    def __init__(
        self,
        pool: asyncpg.Pool,
        journal: Journal,
        session: aiohttp.ClientSession,
        settings: Settings,
        metrics: Metrics | None = None,
    ) -> None:
        self._pool = pool
        self._metrics = metrics or Metrics()
        self._journal = journal
        self._session = session
        self._settings = settings
        self._stopping = asyncio.Event()
        # Keyed by provider name, and by path for Infobip's queues.
        self._paused_until: dict[str, float] = {}
        self._failures: dict[str, int] = defaultdict(int)
        self._slots = {name: asyncio.Semaphore(settings.poll_concurrency) for name in PROVIDERS}
        self._spacing = {name: _Spacing(settings.poll_rate) for name in PROVIDERS}
        self._polled: list[Provider] = []
        for provider in PROVIDERS.values():
            if provider.poll is None or provider.poll_configured is None:
                continue
            if provider.poll_configured(settings):
                self._polled.append(provider)
            else:
                log.info("poll.not_configured", provider=provider.name)
        self._drain_infobip = infobip.poll_configured(settings)
        if not self._drain_infobip:
            log.info("poll.not_configured", provider=infobip.NAME)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        loops = [self._messages_loop()]
        if self._drain_infobip:
            loops.append(self._infobip_loop())
        await asyncio.gather(*loops)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once on stop()."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _backoff(self, name: str) -> float:
        """Doubling with each failure in a row, from up to a second, to at most a minute."""
        base = min(1.0, self._settings.poll_min_interval)
        return float(min(base * 2.0 ** self._failures[name], 60.0))

    def _active(self) -> list[str]:
        now = asyncio.get_running_loop().time()
        return [p.name for p in self._polled if self._paused_until.get(p.name, 0) <= now]

    # Message by message: Messente, Comapi, Mercury

    async def _messages_loop(self) -> None:
        idle = min(1.0, self._settings.poll_min_interval)
        while not self._stopping.is_set():
            try:
                polled = await self._poll_due()
            except Exception as exc:
                log_loop_failure("poll", exc)
                polled = 0
            if not polled:
                await self._pause(idle)

    async def _poll_due(self) -> int:
        active = self._active()
        if not active:
            return 0
        settings = self._settings
        async with connection(self._pool) as conn:
            claimed = await poll_queries.claim_polls(
                conn,
                active,
                _CLAIM_BATCH,
                min_interval=settings.poll_min_interval,
                max_interval=settings.poll_max_interval,
                max_age=settings.poll_max_age,
            )
        jobs = []
        seen_groups: set[tuple[str, str]] = set()
        for row in claimed:
            if row["stale"]:
                log.info("poll.stale", provider=row["provider"], message=row["key"])
                continue
            provider = PROVIDERS[row["provider"]]
            if provider.name == "mercury" and row["group_key"]:
                # A dispatch is polled once for all its recipients.
                if (provider.name, row["group_key"]) in seen_groups:
                    continue
                seen_groups.add((provider.name, row["group_key"]))
                jobs.append(
                    self._poll_group(
                        provider, row["group_key"], row["next_poll_at"], row["poll_attempts"]
                    )
                )
            else:
                jobs.append(self._poll_one(provider, PollTarget(row["key"]), [row["key"]]))
        for outcome in await asyncio.gather(*jobs, return_exceptions=True):
            # One target's failure is that target's: the others in the round stand.
            if isinstance(outcome, BaseException):
                log.error("poll.failed", error=f"{type(outcome).__name__}: {outcome}")
        return len(claimed)

    async def _poll_group(
        self, provider: Provider, group: str, next_poll_at: datetime | None, attempts: int
    ) -> None:
        async with connection(self._pool) as conn:
            # One poll answers for every recipient: the rest wait for the same next one.
            await poll_queries.schedule_group(conn, provider.name, group, next_poll_at, attempts)
            # Recipients Mercury refused at registration are settled; the rest share its fate.
            members = await poll_queries.group_keys(conn, provider.name, group, "rejected")
        await self._poll_one(provider, PollTarget(group, group, members), members)

    async def _poll_one(self, provider: Provider, target: PollTarget, keys: list[str]) -> None:
        assert provider.poll is not None
        async with self._slots[provider.name]:
            await self._spacing[provider.name].wait()
            try:
                fetched = await provider.poll(self._session, self._settings, target)
            except PollError as exc:
                await self._provider_failed(provider.name, exc, keys)
                return
        self._failures[provider.name] = 0
        self._metrics.inc("dlr_poll_requests_total", provider=provider.name, result="ok")
        if fetched.body:
            problem = "; ".join(fetched.problems) or None
            receipt = Receipt(provider.name, "poll", fetched.body, "application/json", problem)
            await self._journal.append(receipt, fetched.updates)
            log.info(
                "poll.fetched",
                provider=provider.name,
                target=target.key,
                reports=len(fetched.updates),
            )
        elif fetched.problems:
            log.info(
                "poll.nothing",
                provider=provider.name,
                target=target.key,
                problem=fetched.problems[0],
            )
        if fetched.done:
            async with connection(self._pool) as conn:
                await poll_queries.stop_polling(conn, provider.name, keys)

    def _pause_after(self, name: str, exc: PollError, what: str | None = None) -> float:
        """How long to leave a provider (or `what` of it: an Infobip queue) alone after it
        failed us."""
        self._metrics.inc("dlr_poll_requests_total", provider=name, result="failed")
        what = what or name
        if exc.status == 429:
            pause = min(max(exc.retry_after or _DEFAULT_PAUSE, 1.0), _MAX_PAUSE)
        else:
            # 5xx, timeouts: back off a little more each time in a row.
            self._failures[what] += 1
            pause = self._backoff(what)
        log.warning("poll.provider_failed", provider=name, what=what, error=str(exc), pause=pause)
        return pause

    async def _provider_failed(self, name: str, exc: PollError, keys: list[str]) -> None:
        pause = self._pause_after(name, exc)
        self._paused_until[name] = asyncio.get_running_loop().time() + pause
        async with connection(self._pool) as conn:
            await poll_queries.poll_later(conn, name, keys, pause)

    # Infobip: drain the account's report queues

    async def _infobip_loop(self) -> None:
        lock_key = _lock_key(self._settings)
        while not self._stopping.is_set():
            pause = self._settings.infobip_poll_interval
            try:
                await self._drain(lock_key)
            except PollError as exc:
                # A 429 is the account's rate limit: every queue waits out its Retry-After.
                pause = self._pause_after(infobip.NAME, exc)
            except Exception as exc:
                log_loop_failure("poll", exc)
                pause = 1.0
            await self._pause(pause)

    async def _drain(self, lock_key: int) -> None:
        async with connection(self._pool) as lock_conn:
            # One drainer per account across every instance: two would split the stream, and
            # the lock (a session lock) dies with its connection if this process does.
            if not await lock_conn.fetchval("select pg_try_advisory_lock($1)", lock_key):
                log.debug("poll.infobip_busy")
                return
            try:
                for path in infobip.REPORT_PATHS:
                    if self._paused_until.get(path, 0.0) > asyncio.get_running_loop().time():
                        continue
                    try:
                        await self._drain_queue(path)
                        self._failures[path] = 0
                    except PollError as exc:
                        if exc.status == 429:
                            raise
                        # One queue failing (an API the account does not have, an outage of
                        # one of them) backs off alone and does not hold up the others.
                        pause = self._pause_after(infobip.NAME, exc, path)
                        self._paused_until[path] = asyncio.get_running_loop().time() + pause
            finally:
                try:
                    await lock_conn.execute("select pg_advisory_unlock($1)", lock_key)
                except BaseException:
                    # The pool does not unlock on release: a connection that may still hold
                    # the lock must not go back, or no drainer would get it again.
                    lock_conn.terminate()
                    raise

    async def _drain_queue(self, path: str) -> None:
        """Fetch one once-only queue until it is empty, committing each batch before the next."""
        while not self._stopping.is_set():
            body = await infobip.fetch_reports(self._session, self._settings, path)
            self._metrics.inc("dlr_poll_requests_total", provider=infobip.NAME, result="ok")
            try:
                parsed = infobip.parse_webhook(body, "application/json", _now())
            except InvalidReport as exc:
                parsed = Parsed([], [str(exc)])
            if not parsed.updates and not parsed.problems:
                return  # drained: an empty answer is nothing to keep (it was a row each time)
            receipt = Receipt(infobip.NAME, "poll", body, "application/json", parsed.problem)
            await self._store_until_committed(receipt, parsed.updates)
            if not parsed.updates:
                return  # drained (or unreadable: kept raw, try again next round)
            log.info("poll.drained", provider=infobip.NAME, path=path, reports=len(parsed.updates))

    async def _store_until_committed(self, receipt: Receipt, updates: list[StatusUpdate]) -> None:
        """These reports exist nowhere else now: keep trying until they are committed."""
        delay = 0.5
        while True:
            try:
                await self._journal.append(receipt, updates)
                return
            except Exception as exc:
                log.error(
                    "poll.store_failed",
                    provider=receipt.provider,
                    reports=len(updates),
                    error=f"{type(exc).__name__}: {exc}",
                    retry_in=delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)


def _lock_key(settings: Settings) -> int:
    """An advisory lock id per Infobip account (base URL and key), as a signed 64-bit int."""
    assert settings.infobip_api_key is not None
    account = f"infobip-reports|{settings.infobip_base_url}|"
    account += settings.infobip_api_key.get_secret_value()
    digest = hashlib.sha256(account.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _now() -> datetime:
    return datetime.now(UTC)
