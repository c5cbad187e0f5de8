"""Every piece of application state, behind one typed key each."""

import asyncpg
from aiohttp import web

from receiver.ingest.journal import Journal
from receiver.ingest.projector import Projector
from receiver.metrics import Metrics
from receiver.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
JOURNAL = web.AppKey("journal", Journal)
# Always present: it runs only where projection is enabled, but every process can wait on it.
PROJECTOR = web.AppKey("projector", Projector)
METRICS = web.AppKey("metrics", Metrics)
