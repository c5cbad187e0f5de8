"""The application factory: the route table, middlewares, and each resource's lifetime."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from receiver import api, migrate, subscriptions, webhooks
from receiver.auth import bearer_middleware
from receiver.db import open_pool
from receiver.errors import body_limit_middleware, errors_middleware
from receiver.forward import Forwarder, http_client
from receiver.ingest import Ingestor
from receiver.keys import INGESTOR, METRICS, POOL, SETTINGS
from receiver.logs import access_log_middleware
from receiver.metrics import Metrics
from receiver.poll import Poller
from receiver.poll import http_client as poll_client
from receiver.providers import PROVIDERS
from receiver.retention import Retention
from receiver.settings import Settings


def create_app(settings: Settings) -> web.Application:
    """Pure and synchronous: no I/O here; resources open in the cleanup contexts on startup."""
    if settings.database_url is None:
        raise ValueError("create_app needs settings.database_url (start the embedded one first)")
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            access_log_middleware,
            errors_middleware,
            body_limit_middleware,
            bearer_middleware,
        ],
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app.add_routes(
        [
            web.get("/healthz", api.healthz),
            web.get("/readyz", api.readyz),
            web.get("/metrics", api.metrics),
            web.post("/webhooks/{provider}", webhooks.receive),
            web.post("/v1/messages/{provider}", api.register),
            web.get("/v1/messages", api.search_messages),
            web.get("/v1/messages/{provider}/{id}", api.get_message),
            web.get("/v1/groups/{provider}/{id}", api.get_group),
            web.get("/v1/unmapped", api.list_unmapped),
            web.get("/v1/receipts/problems", api.receipts_with_problems),
            web.get("/v1/receipts/{id}", api.get_receipt),
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
        ]
    )
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_ingest)
    if settings.forward_enabled:
        app.cleanup_ctx.append(_forwarding)
    if settings.poll_enabled:
        app.cleanup_ctx.append(_polling)
    if settings.retention_days is not None:
        app.cleanup_ctx.append(_retention)
    return app


def make_ingestor(
    pool: asyncpg.Pool, settings: Settings, metrics: Metrics | None = None
) -> Ingestor:
    return Ingestor(
        pool,
        settings.ingest_max_batch,
        settings.ingest_max_inflight,
        polled_providers=[p.name for p in PROVIDERS.values() if p.poll is not None],
        first_poll_in=settings.poll_min_interval,
        metrics=metrics,
    )


async def _database(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    assert settings.database_url is not None
    async with open_pool(settings.database_url.get_secret_value(), settings.db_pool_size) as pool:
        async with pool.acquire() as conn:
            await migrate.apply(conn)
        app[POOL] = pool
        yield


async def _ingest(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    ingestor = make_ingestor(app[POOL], settings, app[METRICS])
    ingestor.start()
    app[INGESTOR] = ingestor
    yield
    await ingestor.close()


async def _forwarding(app: web.Application) -> AsyncIterator[None]:
    async with http_client(app[SETTINGS]) as session:
        forwarder = Forwarder(app[POOL], session, app[SETTINGS], app[METRICS])
        task = asyncio.create_task(forwarder.run(), name="forward")
        yield
        forwarder.stop()
        await task


async def _retention(app: web.Application) -> AsyncIterator[None]:
    retention = Retention(app[POOL], app[SETTINGS], app[METRICS])
    task = asyncio.create_task(retention.run(), name="retention")
    yield
    retention.stop()
    await task


async def _polling(app: web.Application) -> AsyncIterator[None]:
    async with poll_client(app[SETTINGS]) as session:
        poller = Poller(app[POOL], app[INGESTOR], session, app[SETTINGS], app[METRICS])
        task = asyncio.create_task(poller.run(), name="poll")
        yield
        poller.stop()
        await task
