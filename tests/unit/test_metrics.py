"""Metrics labels come from closed sets: nothing a request or a stored row holds adds a series."""

from prometheus_client.parser import text_string_to_metric_families

from receiver.metrics import Metrics


def _series(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.render())
        for s in family.samples
        if s.name == name
    }


def test_webhook_labels_outside_their_sets_are_other() -> None:
    metrics = Metrics({"messente": ["default", "brand2"]})
    metrics.webhook("messente", "brand2", 200, 0.001)
    metrics.webhook("messente", "removed-since", 200, 0.001)  # an account no longer configured
    metrics.webhook("messente", None, 401, 0.001)
    metrics.webhook("messente", "default", 418, 0.001)  # a status we never answer
    for i in range(1000):
        metrics.webhook(f"made-up-{i}", None, 404, 0.001)
    assert _series(metrics, "dlr_webhook_requests_total") == {
        (("account", "brand2"), ("provider", "messente"), ("status", "200")): 1,
        (("account", "other"), ("provider", "messente"), ("status", "200")): 1,
        (("account", "none"), ("provider", "messente"), ("status", "401")): 1,
        (("account", "default"), ("provider", "messente"), ("status", "other")): 1,
        (("account", "none"), ("provider", "other"), ("status", "404")): 1000,
    }
    # Only labels already in bounds are remembered as they came (brand2's 200 and the
    # unverified 401): the cache stays as small as the series.
    assert set(metrics._webhook) == {("messente", "brand2", 200), ("messente", None, 401)}


def test_counted_labels_outside_their_sets_are_other() -> None:
    metrics = Metrics({"infobip": ["default"]})
    metrics.inc("dlr_reports_total", 3, provider="infobip", account="gone", outcome="new")
    metrics.inc("dlr_reports_total", 1, provider="nope", account="default", outcome="weird")
    metrics.inc("dlr_retention_deleted_total", 2, kind="made-up")
    assert _series(metrics, "dlr_reports_total") == {
        (("account", "other"), ("outcome", "new"), ("provider", "infobip")): 3,
        (("account", "other"), ("outcome", "other"), ("provider", "other")): 1,
    }
    assert _series(metrics, "dlr_retention_deleted_total") == {(("kind", "other"),): 2}


def test_a_delay_from_a_clock_behind_is_not_negative() -> None:
    metrics = Metrics()
    metrics.observe("dlr_projection_delay_seconds", -5.0)
    (total,) = _series(metrics, "dlr_projection_delay_seconds_sum").values()
    assert total == 0


def _histogram(metrics: Metrics, name: str) -> dict[str, float]:
    """le -> cumulative count, plus _sum and _count, of an unlabelled or single series."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.render()):
        for s in family.samples:
            if s.name == f"{name}_bucket":
                found[s.labels["le"]] = s.value
            elif s.name in (f"{name}_sum", f"{name}_count"):
                found[s.name.removeprefix(name)] = s.value
    return found


def _observed_one_by_one(name: str, values: list[float], *labels: str) -> dict[str, float]:
    """prometheus-client's own observe(), one value at a time: what the bulk writes must equal."""
    reference = Metrics()
    histogram = reference._families.histograms[name]
    for value in values:
        (histogram.labels(*labels) if labels else histogram).observe(value)
    return _histogram(reference, name)


# On a bound, just either side of one, below the first, above the last, and zero.
_EDGES = [0.0, 0.001, 0.0010001, 0.00099, 0.25, 0.2500001, 86400.0, 86400.5, 1e9, 0.003]


def test_webhook_counts_written_at_once_equal_one_by_one() -> None:
    metrics = Metrics({"infobip": ["default"]})
    for value in _EDGES:
        metrics.webhook("infobip", "default", 200, value)
    # Rendering writes what the process has counted: nothing waits for the next flush.
    got = _histogram(metrics, "dlr_webhook_ack_seconds")
    assert got == _observed_one_by_one("dlr_webhook_ack_seconds", _EDGES, "infobip")
    assert got["_count"] == len(_EDGES)
    (requests,) = _series(metrics, "dlr_webhook_requests_total").values()
    assert requests == len(_EDGES)
    # A second render adds nothing twice.
    assert _histogram(metrics, "dlr_webhook_ack_seconds") == got


def test_many_observations_at_once_equal_one_by_one() -> None:
    metrics = Metrics()
    metrics.observe_many("dlr_projection_delay_seconds", [*_EDGES, -3.0])
    assert _histogram(metrics, "dlr_projection_delay_seconds") == _observed_one_by_one(
        "dlr_projection_delay_seconds", [*_EDGES, 0.0]
    )


class _FullDisk:
    """A counter whose write fails, as a multiprocess file on a full disk would."""

    def inc(self, amount: float = 1) -> None:
        raise OSError(28, "No space left on device")


def test_a_failing_write_of_the_counts_never_fails_the_request_nor_counts_twice() -> None:
    metrics = Metrics({"infobip": ["default"]})
    metrics.webhook("infobip", "default", 200, 0.001)
    tally = metrics._webhook[("infobip", "default", 200)]
    working, tally.counter = tally.counter, _FullDisk()  # type: ignore[assignment]
    metrics._flush_at = 0.0  # due: this request writes
    metrics.webhook("infobip", "default", 200, 0.002)  # no exception reaches the request
    tally.counter = working
    metrics.webhook("infobip", "default", 200, 0.003)
    # The two taken by the failed write are lost, not written again: one counted.
    assert _series(metrics, "dlr_webhook_requests_total") == {
        (("account", "default"), ("provider", "infobip"), ("status", "200")): 1
    }
