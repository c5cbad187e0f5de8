"""The service itself: liveness, readiness (with the projection backlog) and /metrics."""

from aiohttp import web

from receiver.db import connection, is_transient
from receiver.forwarding import queries as forward_queries
from receiver.http import views
from receiver.http.errors import ApiError
from receiver.http.keys import METRICS, POOL
from receiver.http.openapi import Operation, documented
from receiver.ingest import queries as ingest_queries
from receiver.jsonio import model_response


@documented(Operation("The process is up", {200: views.Health}))
async def healthz(request: web.Request) -> web.Response:
    return model_response(views.Health(status="ok"))


@documented(
    Operation(
        "The database answers; how far behind projection is",
        {200: views.Ready},
        {503: "not_ready: the database is unreachable"},
    )
)
async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers; the body says how far behind the projection is."""
    try:
        async with connection(request.app[POOL]) as conn:
            rows, lag = await ingest_queries.backlog(conn)
    except Exception as exc:
        if not is_transient(exc):
            raise
        raise ApiError(503, "not_ready", "database unreachable") from exc
    return model_response(
        views.Ready(
            status="ready",
            projection=views.Backlog(backlog_rows=rows, lag_seconds=round(lag, 3)),
        )
    )


@documented(Operation("Prometheus text: counters, histograms, gauges", {200: "text/plain"}))
async def metrics(request: web.Request) -> web.Response:
    gauges: dict[str, tuple[str, float]] = {}
    try:
        async with connection(request.app[POOL]) as conn:
            pending, dead = await forward_queries.outbox_counts(conn)
            rows, lag = await ingest_queries.backlog(conn)
        gauges["dlr_forward_pending"] = ("Deliveries waiting to be sent or retried.", pending)
        gauges["dlr_forward_dead"] = ("Dead-lettered deliveries (replayable).", dead)
        gauges["dlr_projection_backlog_rows"] = ("Journal rows not yet projected.", rows)
        gauges["dlr_projection_lag_seconds"] = (
            "Age of the oldest journal row not yet projected (0 when caught up).",
            lag,
        )
    except Exception as exc:
        if not is_transient(exc):
            raise
    body = request.app[METRICS].render(gauges)
    return web.Response(text=body, content_type="text/plain", charset="utf-8")
