"""The poller: asks the providers' status endpoints where pushing is absent or incomplete, and
hands what it learns to the same journal as webhooks (a report both pushed and polled is
one event)."""

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import asyncpg
import structlog

from receiver import accounts
from receiver.db import connection, log_loop_failure
from receiver.ingest.journal import Journal
from receiver.loops import looping
from receiver.metrics import Metrics
from receiver.polling import queries
from receiver.providers import PROVIDERS
from receiver.providers.base import PollError, PollTarget, Provider
from receiver.reports import InvalidReport, Parsed, Receipt, StatusUpdate
from receiver.settings import Account, Settings

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


@dataclass(frozen=True)
class _Polling:
    """One account that polls, with its own pace: its requests in flight and their rate."""

    provider: Provider
    name: str
    account: Account
    slots: asyncio.Semaphore
    spacing: _Spacing
    # Its schedule: first and largest gap between polls, and the age past which it gives up.
    min_interval: float
    max_interval: float
    max_age: float

    @property
    def label(self) -> str:
        """Which account backs off: a 429 is that account's rate limit, not the provider's."""
        return f"{self.provider.name}/{self.name}"


def _polling(provider: Provider, name: str, account: Account, settings: Settings) -> _Polling:
    return _Polling(
        provider,
        name,
        account,
        asyncio.Semaphore(account.poll_concurrency or settings.poll_concurrency),
        _Spacing(account.poll_rate or settings.poll_rate),
        account.poll_min_interval or settings.poll_min_interval,
        account.poll_max_interval or settings.poll_max_interval,
        account.poll_max_age or settings.poll_max_age,
    )


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
        # Keyed by account label, and by label and path for report queues.
        self._paused_until: dict[str, float] = {}
        self._failures: dict[str, int] = defaultdict(int)
        # What polls follows from the providers' capabilities and the accounts that hold
        # what each capability needs.
        self._polled = {
            (provider.name, name): _polling(provider, name, account, settings)
            for provider, name, account in accounts.polled(settings)
        }
        self._drained = [
            _polling(provider, name, account, settings)
            for provider, name, account in accounts.drained(settings)
        ]
        for provider in PROVIDERS.values():
            if provider.poll is not None and not any(
                p.provider is provider for p in self._polled.values()
            ):
                log.info("poll.not_configured", provider=provider.name)
            if provider.drain is not None and not any(
                p.provider is provider for p in self._drained
            ):
                log.info("poll.not_configured", provider=provider.name)

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        loops = [self._messages_loop()]
        loops += [self._drain_loop(drained) for drained in self._drained]
        await asyncio.gather(*loops)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once on stop()."""
        with suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _backoff(self, name: str) -> float:
        """Doubling with each failure in a row, from up to a second, to at most a minute."""
        base = min(1.0, self._settings.poll_min_interval)
        return float(min(base * 2.0 ** self._failures[name], 60.0))

    def _active(self) -> list[_Polling]:
        now = asyncio.get_running_loop().time()
        return [p for p in self._polled.values() if self._paused_until.get(p.label, 0) <= now]

    # Message by message, each through the account it came by

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
        async with connection(self._pool) as conn:
            claimed = await queries.claim_polls(
                conn,
                [
                    queries.Schedule(
                        p.provider.name, p.name, p.min_interval, p.max_interval, p.max_age
                    )
                    for p in active
                ],
                accounts.DEFAULT,
                _CLAIM_BATCH,
            )
        jobs = []
        seen_groups: set[tuple[str, str]] = set()
        for row in claimed:
            if row["stale"]:
                log.info("poll.stale", provider=row["provider"], message=row["key"])
                continue
            # A message without an account was registered without naming one, or came before
            # accounts: the default account's.
            polling = self._polled.get((row["provider"], row["account"] or accounts.DEFAULT))
            if polling is None:
                continue  # claimed for an account this poller does not hold: cannot happen
            group = row["group_key"]
            capability = polling.provider.poll
            if capability is not None and capability.by_group and group:
                # A group is polled once for all its members.
                if (polling.label, group) in seen_groups:
                    continue
                seen_groups.add((polling.label, group))
                jobs.append(
                    self._poll_group(polling, group, row["next_poll_at"], row["poll_attempts"])
                )
            else:
                jobs.append(self._poll_one(polling, PollTarget(row["key"]), [row["key"]]))
        for outcome in await asyncio.gather(*jobs, return_exceptions=True):
            # One target's failure is that target's: the others in the round stand.
            if isinstance(outcome, BaseException):
                log.error("poll.failed", error=f"{type(outcome).__name__}: {outcome}")
        return len(claimed)

    async def _poll_group(
        self, polling: _Polling, group: str, next_poll_at: datetime | None, attempts: int
    ) -> None:
        name = polling.provider.name
        async with connection(self._pool) as conn:
            # One poll answers for every member: the rest wait for the same next one.
            await queries.schedule_group(conn, name, group, next_poll_at, attempts)
            # Members refused at registration (Mercury's invalid recipients) are settled; the
            # rest share the group's fate.
            members = await queries.group_keys(conn, name, group, "rejected")
        await self._poll_one(polling, PollTarget(group, group, members), members)

    async def _poll_one(self, polling: _Polling, target: PollTarget, keys: list[str]) -> None:
        provider = polling.provider
        if provider.poll is None:
            return
        async with polling.slots:
            await polling.spacing.wait()
            try:
                fetched = await provider.poll.fetch(self._session, polling.account, target)
            except PollError as exc:
                await self._provider_failed(polling, exc, keys)
                return
        self._failures[polling.label] = 0
        self._metrics.inc("dlr_poll_requests_total", provider=provider.name, result="ok")
        if fetched.body:
            problem = "; ".join(fetched.problems) or None
            receipt = Receipt(
                provider.name,
                "poll",
                fetched.body,
                "application/json",
                problem,
                account=polling.name,
            )
            await self._journal.append(receipt, fetched.updates)
            log.info(
                "poll.fetched",
                provider=provider.name,
                account=polling.name,
                target=target.key,
                reports=len(fetched.updates),
            )
        elif fetched.problems:
            log.info(
                "poll.nothing",
                provider=provider.name,
                account=polling.name,
                target=target.key,
                problem=fetched.problems[0],
            )
        if fetched.done:
            async with connection(self._pool) as conn:
                await queries.stop_polling(conn, provider.name, keys)

    def _pause_after(self, polling: _Polling, exc: PollError, what: str | None = None) -> float:
        """How long to leave an account (or `what` of it: one report queue) alone after it
        failed us."""
        name = polling.provider.name
        self._metrics.inc("dlr_poll_requests_total", provider=name, result="failed")
        what = what or polling.label
        if exc.status == 429:
            pause = min(max(exc.retry_after or _DEFAULT_PAUSE, 1.0), _MAX_PAUSE)
        else:
            # 5xx, timeouts: back off a little more each time in a row.
            self._failures[what] += 1
            pause = self._backoff(what)
        log.warning(
            "poll.provider_failed",
            provider=name,
            account=polling.name,
            what=what,
            error=str(exc),
            pause=pause,
        )
        return pause

    async def _provider_failed(self, polling: _Polling, exc: PollError, keys: list[str]) -> None:
        pause = self._pause_after(polling, exc)
        self._paused_until[polling.label] = asyncio.get_running_loop().time() + pause
        async with connection(self._pool) as conn:
            await queries.poll_later(conn, polling.provider.name, keys, pause)

    # Report queues (Infobip's), drained per account

    async def _drain_loop(self, polling: _Polling) -> None:
        lock_key = _lock_key(polling)
        interval = polling.account.poll_interval or self._settings.infobip_poll_interval
        while not self._stopping.is_set():
            pause = interval
            try:
                await self._drain(polling, lock_key)
            except PollError as exc:
                # A 429 is the account's rate limit: every queue waits out its Retry-After.
                pause = self._pause_after(polling, exc)
            except Exception as exc:
                log_loop_failure("poll", exc)
                pause = 1.0
            await self._pause(pause)

    async def _drain(self, polling: _Polling, lock_key: int) -> None:
        drain = polling.provider.drain
        if drain is None:
            return
        async with connection(self._pool) as lock_conn:
            # One drainer per account across every instance: two would split the stream, and
            # the lock (a session lock) dies with its connection if this process does.
            if not await lock_conn.fetchval("select pg_try_advisory_lock($1)", lock_key):
                log.debug("poll.drain_busy", provider=polling.provider.name, account=polling.name)
                return
            try:
                for path in drain.paths:
                    queue = polling.label + path
                    if self._paused_until.get(queue, 0.0) > asyncio.get_running_loop().time():
                        continue
                    try:
                        await self._drain_queue(polling, path)
                        self._failures[queue] = 0
                    except PollError as exc:
                        if exc.status == 429:
                            raise
                        # One queue failing (an API the account does not have, an outage of
                        # one of them) backs off alone and does not hold up the others.
                        pause = self._pause_after(polling, exc, queue)
                        self._paused_until[queue] = asyncio.get_running_loop().time() + pause
            finally:
                try:
                    await lock_conn.execute("select pg_advisory_unlock($1)", lock_key)
                except BaseException:
                    # The pool does not unlock on release: a connection that may still hold
                    # the lock must not go back, or no drainer would get it again.
                    lock_conn.terminate()
                    raise

    async def _drain_queue(self, polling: _Polling, path: str) -> None:
        """Fetch one once-only queue until it is empty, committing each batch before the next."""
        drain = polling.provider.drain
        name = polling.provider.name
        while drain is not None and not self._stopping.is_set():
            body = await drain.fetch(self._session, polling.account, path)
            self._metrics.inc("dlr_poll_requests_total", provider=name, result="ok")
            try:
                parsed = drain.parse(body, "application/json", _now())
            except InvalidReport as exc:
                parsed = Parsed([], [str(exc)])
            if not parsed.updates and not parsed.problems:
                return  # drained: an empty answer is nothing to keep (it was a row each time)
            receipt = Receipt(
                name, "poll", body, "application/json", parsed.problem, account=polling.name
            )
            await self._store_until_committed(receipt, parsed.updates)
            if not parsed.updates:
                return  # drained (or unreadable: kept raw, try again next round)
            log.info(
                "poll.drained",
                provider=name,
                account=polling.name,
                path=path,
                reports=len(parsed.updates),
            )

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


def _lock_key(polling: _Polling) -> int:
    """An advisory lock id per drained account (its base URL and credentials), as a signed
    64-bit int. The same account configured twice (under two names, in two instances) is one
    lock: two drainers would split its once-only stream."""
    account = polling.account
    secret = account.api_key or account.api_password
    # For Infobip (an API key, no user) this is the id the lock had before accounts polled,
    # so an instance of the previous version and one of this never drain at once.
    identity = f"{polling.provider.name}-reports|{account.base_url}|"
    identity += secret.get_secret_value() if secret is not None else ""
    if account.api_username:
        identity += f"|{account.api_username}"
    digest = hashlib.sha256(identity.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _now() -> datetime:
    return datetime.now(UTC)


@asynccontextmanager
async def poller_running(
    pool: asyncpg.Pool, journal: Journal, settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[Poller]:
    """The poller on its own HTTP client, from start until the context ends."""
    async with (
        http_client(settings) as session,
        looping(Poller(pool, journal, session, settings, metrics), "poll") as poller,
    ):
        yield poller
