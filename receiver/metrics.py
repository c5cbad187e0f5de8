"""Counters and histograms for `GET /metrics` (prometheus-client). With PROMETHEUS_MULTIPROC_DIR
set (serve sets it for the processes it starts) every process writes its values there, and a
scrape of any worker adds up all of them."""

import asyncio
import bisect
import contextlib
import os
import time
from collections.abc import AsyncIterator, Collection, Iterable, Mapping

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from receiver.providers import PROVIDERS

log = structlog.get_logger()

# The _created series double every counter and mean nothing for a service restarted whole;
# multiprocess mode does not have them either, so one process and many read the same.
disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Every label comes from a closed set: a value outside it is counted under OTHER, so no
# request, however crafted, adds a series.
OTHER = "other"
# A webhook request no account verified (refused, or a provider in RECEIVER_INSECURE_WEBHOOKS).
NO_ACCOUNT = "none"
_STATUSES = frozenset(
    str(s) for s in (200, 201, 202, 204, 400, 401, 403, 404, 405, 409, 413, 415, 499, 500, 503)
)
_CLOSED = {
    "outcome": frozenset({"new", "duplicate"}),
    "result": frozenset({"ok", "failed", "delivered"}),
    "kind": frozenset({"messages", "journal_days", "deliveries"}),
}

_COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dlr_webhook_requests_total": (
        "Provider webhook requests by provider, verifying account and HTTP status.",
        ("provider", "account", "status"),
    ),
    "dlr_reports_total": (
        "Status updates projected, by provider, account and outcome (new, duplicate).",
        ("provider", "account", "outcome"),
    ),
    "dlr_ingest_transactions_total": ("Journal group-commit transactions committed.", ()),
    "dlr_projection_batches_total": ("Projection transactions committed.", ()),
    "dlr_projected_rows_total": ("Journal rows projected.", ()),
    "dlr_projection_poisoned_total": (
        "Journal rows with reports that could not be projected.",
        ("provider",),
    ),
    "dlr_forward_attempts_total": ("Delivery attempts to subscribers, by result.", ("result",)),
    "dlr_poll_requests_total": (
        "Requests to provider status APIs, by provider and result.",
        ("provider", "result"),
    ),
    "dlr_retention_deleted_total": ("Rows deleted by retention, by kind.", ("kind",)),
}

# Seconds, from a millisecond to a day: acknowledgements sit at the low end, a forwarded
# delivery retried over hours at the high end.
_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 1800.0, 7200.0, 86400.0,
)  # fmt: skip

_HISTOGRAMS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dlr_webhook_ack_seconds": (
        "Time from a webhook request reaching the handler to its answer (the journal commit).",
        ("provider",),
    ),
    "dlr_projection_delay_seconds": (
        "Time from a journal row's arrival to its projection (the projection lag per row).",
        (),
    ),
    "dlr_forward_delay_seconds": (
        "Time from a delivery being queued to the subscriber accepting it.",
        (),
    ),
}


class _Families:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.counters = {
            name.removesuffix("_total"): Counter(
                name.removesuffix("_total"), help_text, labels, registry=registry
            )
            for name, (help_text, labels) in _COUNTERS.items()
        }
        self.histograms = {
            name: Histogram(name, help_text, labels, registry=registry, buckets=_BUCKETS)
            for name, (help_text, labels) in _HISTOGRAMS.items()
        }


class _Tally:
    """A webhook series' requests since the last flush: counted here, written to the shared
    files in one go. In multiprocess mode every increment is a locked write to a file, and a
    request's counter and histogram were three of them: a twentieth of the request path."""

    __slots__ = ("buckets", "count", "counter", "histogram", "sum")

    def __init__(self, counter: Counter, histogram: Histogram) -> None:
        self.counter = counter
        self.histogram = histogram
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(_BUCKETS) + 1)  # the last: above every bound (+Inf)

    def flush(self) -> None:
        if self.count:
            # Taken first: a write that fails must not count these requests again next time.
            count, total, buckets = self.count, self.sum, self.buckets
            self.count, self.sum = 0, 0.0
            self.buckets = [0] * (len(_BUCKETS) + 1)
            self.counter.inc(count)
            _add_observations(self.histogram, total, buckets)


def _add_observations(histogram: Histogram, total: float, buckets: list[int]) -> None:
    """Many observations at once: what observe() does for one, per bucket counted (its
    buckets are stored uncumulated, one value per bound, and summed when scraped)."""
    # prometheus-client has no public bulk observe: its own fields, as observe() writes them
    # (tests/unit/test_metrics.py holds the two equal, so an upgrade that changes them fails).
    histogram._sum.inc(total)
    for index, count in enumerate(buckets):
        if count:
            histogram._buckets[index].inc(count)


def _bucket(seconds: float) -> int:
    # observe() counts a value in the first bucket whose bound is at or above it.
    return bisect.bisect_left(_BUCKETS, seconds)


# How long a request's counts may wait in its process before a scrape sees them.
FLUSH_EVERY = 0.5


# In multiprocess mode a process holds each series once: two objects for one series would
# each write their own total over the other's in the shared file.
_shared: _Families | None = None


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The process's counters. `accounts` (provider -> account names) bounds the account label;
    any other name is counted as OTHER."""

    def __init__(self, accounts: Mapping[str, Collection[str]] | None = None) -> None:
        global _shared
        if multiprocess_dir() is not None:
            self._registry = None
            if _shared is None:
                _shared = _Families(None)
            self._families = _shared
        else:
            # One registry per instance: tests build many apps in one process.
            self._registry = CollectorRegistry(auto_describe=True)
            self._families = _Families(self._registry)
        self._accounts = {p: frozenset(names) for p, names in (accounts or {}).items()}
        # The webhook path's series, by the labels as they came: one dict lookup per request.
        self._webhook: dict[tuple[str, str | None, int], _Tally] = {}
        # And by their bounded labels: every label set that counts into one series shares it.
        self._tallies: dict[tuple[str, str, str], _Tally] = {}
        self._flush_at = time.monotonic() + FLUSH_EVERY

    def webhook(self, provider: str, account: str | None, status: int, seconds: float) -> None:
        """One webhook request answered: counted in this process, written out with the others
        of the last FLUSH_EVERY seconds (at the latest by the next request, scrape or flush)."""
        tally = self._webhook.get((provider, account, status))
        if tally is None:
            tally = self._webhook_series(provider, account, status)
        tally.count += 1
        tally.sum += seconds
        tally.buckets[_bucket(seconds)] += 1
        if time.monotonic() >= self._flush_at:
            try:
                self.flush()
            except Exception:
                # Counting must never cost the request its answer: the counts wait for the
                # next flush (the tallies were taken before the write that failed).
                log.exception("metrics.flush_failed")

    def flush(self) -> None:
        """Write what this process counted and has not written yet."""
        self._flush_at = time.monotonic() + FLUSH_EVERY
        for tally in self._tallies.values():
            tally.flush()

    def _webhook_series(self, provider: str, account: str | None, status: int) -> _Tally:
        bound_provider = self._provider(provider)
        bound_account = NO_ACCOUNT if account is None else self._account(bound_provider, account)
        bound_status = str(status) if str(status) in _STATUSES else OTHER
        bound = (bound_provider, bound_account, bound_status)
        series = self._tallies.get(bound)
        if series is None:
            series = self._tallies[bound] = _Tally(
                self._families.counters["dlr_webhook_requests"].labels(*bound),
                self._families.histograms["dlr_webhook_ack_seconds"].labels(bound_provider),
            )
        # Remembered under the labels as they came only when they were already in bounds, so
        # the cache grows no further than the series do.
        as_came = (provider, NO_ACCOUNT if account is None else account, str(status))
        if bound == as_came:
            self._webhook[(provider, account, status)] = series
        return series

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        counter = self._families.counters[name.removesuffix("_total")]
        if labels:
            counter.labels(**self._bound(labels)).inc(value)
        else:
            counter.inc(value)

    def observe(self, name: str, seconds: float) -> None:
        self._families.histograms[name].observe(max(seconds, 0.0))

    def observe_many(self, name: str, seconds: Iterable[float]) -> None:
        """Several observations of one histogram written at once (a projection batch's rows)."""
        total, buckets = 0.0, [0] * (len(_BUCKETS) + 1)
        for value in seconds:
            value = max(value, 0.0)
            total += value
            buckets[_bucket(value)] += 1
        _add_observations(self._families.histograms[name], total, buckets)

    def _bound(self, labels: dict[str, str]) -> dict[str, str]:
        bound = dict(labels)
        if "provider" in bound:
            bound["provider"] = self._provider(bound["provider"])
        if "account" in bound:
            bound["account"] = self._account(bound.get("provider", OTHER), bound["account"])
        for label, values in _CLOSED.items():
            if label in bound and bound[label] not in values:
                bound[label] = OTHER
        return bound

    def _provider(self, provider: str) -> str:
        return provider if provider in PROVIDERS else OTHER

    def _account(self, provider: str, account: str) -> str:
        return account if account in self._accounts.get(provider, ()) else OTHER

    def render(self, gauges: dict[str, tuple[str, float]] | None = None) -> str:
        """The Prometheus text of this process's registry, or of every process's files in
        multiprocess mode, and the gauges read from the database for this scrape."""
        self.flush()
        if self._registry is None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, multiprocess_dir())  # type: ignore[no-untyped-call]  # unannotated upstream
        else:
            registry = self._registry
        lines = [generate_latest(registry).decode()]
        for name, (help_text, value) in (gauges or {}).items():
            lines.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n{name} {value:g}\n")
        return "".join(lines)


@contextlib.asynccontextmanager
async def flushing(metrics: Metrics) -> AsyncIterator[None]:
    """Counts of a process that has gone quiet still reach a scrape of another worker."""

    async def flush_now_and_then() -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY)
            try:
                metrics.flush()
            except Exception:  # a full or vanished multiprocess folder: say so, go on
                log.exception("metrics.flush_failed")

    task = asyncio.create_task(flush_now_and_then(), name="metrics-flush")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            metrics.flush()
        except Exception:
            log.exception("metrics.flush_failed")
