"""Every piece of application state, behind one typed key each."""

import asyncpg
from aiohttp import web

from receiver.ingest import Ingestor
from receiver.metrics import Metrics
from receiver.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
INGESTOR = web.AppKey("ingestor", Ingestor)
METRICS = web.AppKey("metrics", Metrics)
