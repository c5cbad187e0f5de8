"""Counters for `GET /metrics`, in the Prometheus text format (no client library needed)."""

from collections import defaultdict

_HELP = {
    "dlr_webhook_requests_total": "Provider webhook requests by provider and HTTP status.",
    "dlr_reports_total": "Status updates projected, by provider and outcome (new, duplicate).",
    "dlr_ingest_transactions_total": "Journal group-commit transactions committed.",
    "dlr_projection_batches_total": "Projection transactions committed.",
    "dlr_projected_rows_total": "Journal rows projected.",
    "dlr_projection_poisoned_total": "Journal rows with reports that could not be projected.",
    "dlr_forward_attempts_total": "Delivery attempts to subscribers, by result.",
    "dlr_poll_requests_total": "Requests to provider status APIs, by provider and result.",
    "dlr_retention_deleted_total": "Rows deleted by retention, by kind.",
}


class Metrics:
    """Monotonic counters with labels. One per process; handed to whoever counts."""

    def __init__(self) -> None:
        self._values: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(
            lambda: defaultdict(float)
        )

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        assert name in _HELP, name
        self._values[name][tuple(sorted(labels.items()))] += value

    def render(self, gauges: dict[str, tuple[str, float]] | None = None) -> str:
        lines = []
        for name, help_text in _HELP.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} counter"]
            for labels, value in sorted(self._values.get(name, {}).items()):
                lines.append(f"{name}{_labels(labels)} {value:g}")
        for name, (help_text, value) in (gauges or {}).items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    escaped = (
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels
    )
    return "{" + ",".join(escaped) + "}"
