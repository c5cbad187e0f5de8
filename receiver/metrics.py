"""Counters and histograms for `GET /metrics` (prometheus-client). With PROMETHEUS_MULTIPROC_DIR
set (serve sets it for the processes it starts) every process writes its values there, and a
scrape of any worker adds up all of them."""

import os
from collections.abc import Collection, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from receiver.providers import PROVIDERS

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
        self._webhook: dict[tuple[str, str | None, int], tuple[Counter, Histogram]] = {}

    def webhook(self, provider: str, account: str | None, status: int, seconds: float) -> None:
        """One webhook request answered: one counter and one histogram, found by one lookup."""
        series = self._webhook.get((provider, account, status))
        if series is None:
            series = self._webhook_series(provider, account, status)
        series[0].inc()
        series[1].observe(seconds)

    def _webhook_series(
        self, provider: str, account: str | None, status: int
    ) -> tuple[Counter, Histogram]:
        bound_provider = self._provider(provider)
        bound_account = NO_ACCOUNT if account is None else self._account(bound_provider, account)
        bound_status = str(status) if str(status) in _STATUSES else OTHER
        series = (
            self._families.counters["dlr_webhook_requests"].labels(
                bound_provider, bound_account, bound_status
            ),
            self._families.histograms["dlr_webhook_ack_seconds"].labels(bound_provider),
        )
        # Remembered under the labels as they came only when they were already in bounds, so
        # the cache grows no further than the series do.
        as_came = (provider, NO_ACCOUNT if account is None else account, str(status))
        if (bound_provider, bound_account, bound_status) == as_came:
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
        if self._registry is None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, multiprocess_dir())  # type: ignore[no-untyped-call]  # unannotated upstream
        else:
            registry = self._registry
        lines = [generate_latest(registry).decode()]
        for name, (help_text, value) in (gauges or {}).items():
            lines.append(f"# HELP {name} {help_text}\n# TYPE {name} gauge\n{name} {value:g}\n")
        return "".join(lines)
