"""Server-rendered SVG charts: no script, no library, nothing fetched, so a page works offline.
Every text that goes into them is escaped here (values from reports included)."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from markupsafe import Markup, escape

# Status colours, chosen for contrast on white (each at least 4.5:1 against it), and always
# beside the status written out: colour is never the only way a status is told.
COLOURS = {
    "delivered": "#1a7f37",
    "read": "#116329",
    "accepted": "#0550ae",
    "sent": "#0969da",
    "failed": "#cf222e",
    "expired": "#a40e26",
    "rejected": "#82071e",
    "cancelled": "#57606a",
    "unknown": "#6e7781",
}
# Line colours for providers, in the order they are drawn.
_SERIES = ("#0969da", "#bc4c00", "#8250df", "#1a7f37", "#cf222e", "#57606a")


def colour(status: str) -> str:
    return COLOURS.get(status, "#6e7781")


def _svg(width: int, height: int, label: str, body: list[str]) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(label)}" class="chart">'
        f"<title>{escape(label)}</title>"
    )
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704 - every part escaped above


def status_bar(counts: Mapping[str, int], label: str) -> Markup:
    """One bar split by status, widths in proportion to the counts."""
    total = sum(counts.values()) or 1
    body, x = [], 0.0
    for status, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        width = 600 * n / total
        body.append(
            f'<rect x="{x:.1f}" y="0" width="{width:.1f}" height="28" '
            f'fill="{colour(status)}"><title>{escape(status)}: {n}</title></rect>'
        )
        x += width
    return _svg(600, 28, label, body)


def hbars(rows: Sequence[tuple[str, float, str]], top: float, label: str) -> Markup:
    """Horizontal bars: (name, value, value as written) each, scaled to `top`."""
    top = top or 1
    height = 26 * len(rows) + 4
    body = []
    for i, (name, value, written) in enumerate(rows):
        y = 26 * i + 2
        width = max(1.0, 360 * value / top) if value else 0
        body.append(
            f'<text x="0" y="{y + 16}" class="label">{escape(name)}</text>'
            f'<rect x="200" y="{y + 2}" width="{width:.1f}" height="18" fill="#0969da"/>'
            f'<text x="{205 + width:.1f}" y="{y + 16}" class="value">{escape(written)}</text>'
        )
    return _svg(640, max(height, 30), label, body)


def lines(series: Mapping[str, Sequence[int]], label: str, unit: str) -> Markup:
    """One line per series over the same x (oldest left), with a legend and the peak value."""
    width, height, left, bottom = 640, 200, 40, 170
    points = max((len(v) for v in series.values()), default=0)
    peak = max((max(v) for v in series.values() if v), default=0) or 1
    body = [
        f'<line x1="{left}" y1="{bottom}" x2="{width - 10}" y2="{bottom}" class="axis"/>',
        f'<text x="0" y="20" class="label">{peak}</text>',
        f'<text x="0" y="{bottom}" class="label">0</text>',
        f'<text x="{left}" y="{bottom + 20}" class="label">{escape(unit)}</text>',
    ]
    step = (width - 10 - left) / max(points - 1, 1)
    for i, (name, values) in enumerate(sorted(series.items())):
        stroke = _SERIES[i % len(_SERIES)]
        coords = " ".join(
            f"{left + j * step:.1f},{bottom - (bottom - 20) * v / peak:.1f}"
            for j, v in enumerate(values)
        )
        body.append(f'<polyline points="{coords}" fill="none" stroke="{stroke}" stroke-width="2"/>')
        body.append(
            f'<rect x="{left + 130 * i}" y="{bottom + 24}" width="12" height="4" fill="{stroke}"/>'
            f'<text x="{left + 16 + 130 * i}" y="{bottom + 30}" class="label">'
            f"{escape(name)} ({sum(values)})</text>"
        )
    return _svg(width, height + 20, label, body)


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True, slots=True)
class Point:
    at: datetime
    status: str
    title: str


def timeline(lanes: Sequence[tuple[str, Sequence[Point]]], label: str) -> Markup:
    """One lane per channel attempt, its events as dots along a shared time axis: a failover
    shows as one lane ending red and the next one green."""
    moments = [p.at for _, points in lanes for p in points]
    if not moments:
        return Markup("")
    first, last = min(moments), max(moments)
    span = (last - first).total_seconds() or 1.0
    width, left = 640, 110
    body = []
    for i, (name, points) in enumerate(lanes):
        y = 30 + 40 * i
        body.append(
            f'<text x="0" y="{y + 5}" class="label">{escape(name)}</text>'
            f'<line x1="{left}" y1="{y}" x2="{width - 20}" y2="{y}" class="lane"/>'
        )
        for p in points:
            x = left + (width - 20 - left) * (p.at - first).total_seconds() / span
            body.append(
                f'<circle cx="{x:.1f}" cy="{y}" r="7" fill="{colour(p.status)}">'
                f"<title>{escape(p.title)}</title></circle>"
            )
        if points:
            final = points[-1]
            x = left + (width - 20 - left) * (final.at - first).total_seconds() / span
            anchor = "end" if x > width - 120 else "start"
            shift = -10 if anchor == "end" else 10
            body.append(
                f'<text x="{x + shift:.1f}" y="{y - 10}" text-anchor="{anchor}" '
                f'class="label">{escape(final.status)}</text>'
            )
    height = 40 * len(lanes) + 40
    body.append(
        f'<text x="{left}" y="{height - 5}" class="label">{escape(_utc(first))}'
        f'</text><text x="{width - 20}" y="{height - 5}" text-anchor="end" class="label">'
        f"{escape(last.isoformat(' ', 'seconds'))}</text>"
    )
    return _svg(width, height, label, body)
