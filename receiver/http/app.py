"""The application factory: the route table, middlewares, and each resource's lifetime."""

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import asyncpg
from aiohttp import web

from receiver import accounts, console
from receiver.console import subscriptions as console_subs
from receiver.console import views as console_views
from receiver.forwarding.forwarder import forwarder_running
from receiver.http import (
    deliveries,
    erasures,
    groups,
    health,
    messages,
    openapi,
    receipts,
    subscriptions,
    webhooks,
)
from receiver.http.edge import edge_middleware
from receiver.http.keys import JOURNAL, METRICS, POOL, PROJECTOR, SETTINGS
from receiver.ingest.journal import journal_running
from receiver.ingest.projector import make_projector, projector_running
from receiver.maintenance.retention import retention_running
from receiver.metrics import Metrics, flushing
from receiver.migrate import migrated_pool
from receiver.polling.poller import poller_running
from receiver.settings import Settings


def create_app(settings: Settings) -> web.Application:
    """Pure and synchronous: no I/O here; resources open in the cleanup contexts on startup."""
    if settings.database_url is None:
        raise ValueError("create_app needs settings.database_url (start the embedded one first)")
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[edge_middleware],
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics(accounts.names(settings))
    app.add_routes(
        [
            web.get("/healthz", health.healthz),
            web.get("/readyz", health.readyz),
            web.get("/metrics", health.metrics),
            web.get("/openapi.json", openapi.openapi_json),
            web.get("/docs", openapi.docs_page),
            web.post("/webhooks/{provider}", webhooks.receive),
            web.post("/webhooks/{provider}/{token}", webhooks.receive),
            web.post("/v1/messages/{provider}", messages.register),
            web.get("/v1/messages", messages.search_messages),
            web.get("/v1/messages/{provider}/{id}", messages.get_message),
            web.get("/v1/groups/{provider}/{id}", groups.get_group),
            web.get("/v1/unmapped", receipts.list_unmapped),
            web.get("/v1/receipts/problems", receipts.receipts_with_problems),
            web.get("/v1/receipts/{id}", receipts.get_receipt),
            web.post("/v1/erasures", erasures.erase),
            web.post("/v1/subscriptions", subscriptions.create),
            web.get("/v1/subscriptions", subscriptions.list_all),
            web.get("/v1/subscriptions/{id}", subscriptions.read),
            web.patch("/v1/subscriptions/{id}", subscriptions.update),
            web.delete("/v1/subscriptions/{id}", subscriptions.delete),
            web.post("/v1/subscriptions/{id}/rotate-secret", subscriptions.rotate_secret),
            web.post("/v1/subscriptions/{id}/replay", deliveries.replay_range),
            web.get("/v1/subscriptions/{id}/deliveries", deliveries.list_deliveries),
            web.get("/v1/subscriptions/{id}/deliveries/{delivery_id}", deliveries.read_delivery),
            web.post(
                "/v1/subscriptions/{id}/deliveries/{delivery_id}/replay", deliveries.replay_one
            ),
            # The console (receiver/console/): a session cookie rather than a bearer token,
            # checked with the scopes and CSRF for every path under /console by the edge.
            web.get("/console/login", console_views.login_form, name="console_login"),
            web.post("/console/login", console_views.login),
            web.post("/console/logout", console_views.logout),
            web.get("/console", console_views.dashboard, name="console_dashboard"),
            web.get("/console/messages", console_views.search, name="console_search"),
            web.get(
                "/console/messages/{provider}/{id}", console_views.message, name="console_message"
            ),
            web.get("/console/groups/{provider}/{id}", console_views.group, name="console_group"),
            web.get("/console/receipts/{id}", console_views.receipt, name="console_receipt"),
            web.get("/console/problems", console_views.problems, name="console_problems"),
            web.get("/console/subscriptions", console_subs.index, name="console_subscriptions"),
            web.get(
                "/console/subscriptions/{id}", console_subs.detail, name="console_subscription"
            ),
            web.get(
                "/console/subscriptions/{id}/deliveries/{delivery_id}",
                console_subs.delivery,
                name="console_delivery",
            ),
            web.post("/console/subscriptions/{id}/enabled", console_subs.set_enabled),
            web.post("/console/subscriptions/{id}/rotate-secret", console_subs.rotate_secret),
            web.post("/console/subscriptions/{id}/replay", console_subs.replay_range),
            web.post(
                "/console/subscriptions/{id}/deliveries/{delivery_id}/replay",
                console_subs.replay_one,
            ),
            web.static("/console/static", console.STATIC, name="console_static"),
        ]
    )
    console.setup(app)
    app.cleanup_ctx.append(_metrics)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_ingest)
    app.cleanup_ctx.append(_projection)
    if settings.forward_enabled:
        app.cleanup_ctx.append(_forwarding)
    if settings.poll_enabled:
        app.cleanup_ctx.append(_polling)
    if settings.retention_days is not None:
        app.cleanup_ctx.append(_retention)
    return app


async def _metrics(app: web.Application) -> AsyncIterator[None]:
    async with flushing(app[METRICS]):
        yield


async def _database(app: web.Application) -> AsyncIterator[None]:
    async with migrated_pool(app[SETTINGS], latency_sensitive=True) as pool:
        app[POOL] = pool
        yield


async def _ingest(app: web.Application) -> AsyncIterator[None]:
    async with journal_running(app[POOL], app[SETTINGS], app[METRICS]) as journal:
        app[JOURNAL] = journal
        yield


async def _projection(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if not settings.project_enabled:
        # Another process projects; registrations here still wait for it to catch up.
        app[PROJECTOR] = make_projector(app[POOL], settings, app[METRICS])
        yield
        return
    async with projector_running(app[POOL], settings, app[METRICS]) as projector:
        app[PROJECTOR] = projector
        app[JOURNAL].on_commit = projector.wake
        yield


async def _forwarding(app: web.Application) -> AsyncIterator[None]:
    async with forwarder_running(app[POOL], app[SETTINGS], app[METRICS]):
        yield


async def _retention(app: web.Application) -> AsyncIterator[None]:
    async with retention_running(app[POOL], app[SETTINGS], app[METRICS]):
        yield


async def _polling(app: web.Application) -> AsyncIterator[None]:
    async with poller_running(app[POOL], app[JOURNAL], app[SETTINGS], app[METRICS]):
        yield


@asynccontextmanager
async def background_running(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[None]:
    """Everything but HTTP that the settings enable: what `serve` runs in a process of its own
    (python -m receiver background), beside the processes that answer requests. The same
    context managers as the cleanup contexts above, kept beside them so both stay in step."""
    metrics = Metrics(accounts.names(settings))
    async with AsyncExitStack() as stack:
        if settings.project_enabled:
            await stack.enter_async_context(projector_running(pool, settings, metrics))
        if settings.forward_enabled:
            await stack.enter_async_context(forwarder_running(pool, settings, metrics))
        if settings.poll_enabled:
            journal = await stack.enter_async_context(journal_running(pool, settings, metrics))
            await stack.enter_async_context(poller_running(pool, journal, settings, metrics))
        if settings.retention_days is not None:
            await stack.enter_async_context(retention_running(pool, settings, metrics))
        yield
