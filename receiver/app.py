"""The application factory: the route table, middlewares, and each resource's lifetime."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import Protocol, TypeVar

import asyncpg
from aiohttp import web

from receiver import accounts, api, console, migrate, openapi, subscriptions, webhooks
from receiver.console import subscriptions as console_subs
from receiver.console import views as console_views
from receiver.db import connection, log_loop_failure, open_pool
from receiver.edge import edge_middleware
from receiver.forward import Forwarder, http_client
from receiver.ingest.journal import Journal
from receiver.ingest.projector import Projector
from receiver.ingest.queries import ensure_partitions
from receiver.keys import JOURNAL, METRICS, POOL, PROJECTOR, SETTINGS
from receiver.metrics import Metrics
from receiver.poll import Poller
from receiver.poll import http_client as poll_client
from receiver.retention import Retention
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
            web.get("/healthz", api.healthz),
            web.get("/readyz", api.readyz),
            web.get("/metrics", api.metrics),
            web.get("/openapi.json", openapi.openapi_json),
            web.get("/docs", openapi.docs_page),
            web.post("/webhooks/{provider}", webhooks.receive),
            web.post("/webhooks/{provider}/{token}", webhooks.receive),
            web.post("/v1/messages/{provider}", api.register),
            web.get("/v1/messages", api.search_messages),
            web.get("/v1/messages/{provider}/{id}", api.get_message),
            web.get("/v1/groups/{provider}/{id}", api.get_group),
            web.get("/v1/unmapped", api.list_unmapped),
            web.get("/v1/receipts/problems", api.receipts_with_problems),
            web.get("/v1/receipts/{id}", api.get_receipt),
            web.post("/v1/erasures", api.erase),
            web.post("/v1/subscriptions", subscriptions.create),
            web.get("/v1/subscriptions", subscriptions.list_all),
            web.get("/v1/subscriptions/{id}", subscriptions.read),
            web.patch("/v1/subscriptions/{id}", subscriptions.update),
            web.delete("/v1/subscriptions/{id}", subscriptions.delete),
            web.post("/v1/subscriptions/{id}/rotate-secret", subscriptions.rotate_secret),
            web.post("/v1/subscriptions/{id}/replay", subscriptions.replay_range),
            web.get("/v1/subscriptions/{id}/deliveries", subscriptions.list_deliveries),
            web.get("/v1/subscriptions/{id}/deliveries/{delivery_id}", subscriptions.read_delivery),
            web.post(
                "/v1/subscriptions/{id}/deliveries/{delivery_id}/replay", subscriptions.replay_one
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


def make_journal(pool: asyncpg.Pool, settings: Settings, metrics: Metrics | None = None) -> Journal:
    return Journal(
        pool,
        settings.ingest_max_batch,
        settings.ingest_max_inflight,
        ack_timeout=settings.ack_timeout,
        metrics=metrics,
    )


def make_projector(
    pool: asyncpg.Pool, settings: Settings, metrics: Metrics | None = None
) -> Projector:
    return Projector(
        pool,
        max_updates=settings.project_max_batch,
        idle_poll=settings.project_idle_poll,
        gather=settings.project_gather,
        # Only what a configured account polls is scheduled: a message nobody will poll
        # must not wait in the poll index (and become `stale`) for nothing.
        polled=polled_accounts(settings),
        first_poll_in=settings.poll_min_interval,
        metrics=metrics,
    )


def polled_accounts(settings: Settings) -> set[tuple[str, str | None]]:
    """The (provider, account) pairs whose messages are polled one by one. A message with no
    account (registered without naming one) is the default account's."""
    pairs: set[tuple[str, str | None]] = set()
    for provider, name, _ in accounts.polled(settings):
        pairs.add((provider.name, name))
        if name == accounts.DEFAULT:
            pairs.add((provider.name, None))
    return pairs


@asynccontextmanager
async def journal_running(
    pool: asyncpg.Pool, settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[Journal]:
    """The journal writer, and its day partitions made ahead (at start, then hourly)."""
    journal = make_journal(pool, settings, metrics)
    journal.start()
    partitions = asyncio.create_task(_keep_partitions(pool), name="journal-partitions")
    try:
        yield journal
    finally:
        partitions.cancel()
        with suppress(asyncio.CancelledError):
            await partitions
        await journal.close()


async def _keep_partitions(pool: asyncpg.Pool) -> None:
    while True:
        try:
            async with connection(pool) as conn:
                await ensure_partitions(conn, days_ahead=7)
        except Exception as exc:
            # Not urgent: a week is made ahead, and the default partition takes any overflow.
            log_loop_failure("journal.partitions", exc)
        await asyncio.sleep(3600)


class _Loop(Protocol):
    """A background loop: run() until stop() is called, then finish what it is doing."""

    async def run(self) -> None: ...

    def stop(self) -> None: ...


_L = TypeVar("_L", bound=_Loop)


@asynccontextmanager
async def _looping(loop: _L, name: str) -> AsyncIterator[_L]:
    task = asyncio.create_task(loop.run(), name=name)
    try:
        yield loop
    finally:
        loop.stop()
        await task


@asynccontextmanager
async def projector_running(
    pool: asyncpg.Pool, settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[Projector]:
    async with _looping(make_projector(pool, settings, metrics), "project") as projector:
        yield projector


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    assert settings.database_url is not None
    async with open_pool(settings.database_url.get_secret_value(), settings.db_pool_size) as pool:
        async with pool.acquire() as conn:
            await migrate.apply(conn)
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
async def forwarder_running(
    pool: asyncpg.Pool, settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[Forwarder]:
    async with (
        http_client(settings) as session,
        _looping(Forwarder(pool, session, settings, metrics), "forward") as forwarder,
    ):
        yield forwarder


@asynccontextmanager
async def poller_running(
    pool: asyncpg.Pool, journal: Journal, settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[Poller]:
    async with (
        poll_client(settings) as session,
        _looping(Poller(pool, journal, session, settings, metrics), "poll") as poller,
    ):
        yield poller


@asynccontextmanager
async def retention_running(
    pool: asyncpg.Pool, settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[Retention]:
    async with _looping(Retention(pool, settings, metrics), "retention") as retention:
        yield retention


@asynccontextmanager
async def background_running(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[None]:
    """Everything but HTTP that the settings enable: what `serve` runs in a process of its own
    (python -m receiver background), beside the processes that answer requests."""
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
