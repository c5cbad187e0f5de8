"""The web console at /console: server-rendered pages for people, over the API's queries."""

from datetime import UTC, datetime
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from receiver.console import charts

STATIC = Path(__file__).parent / "static"


def _when(value: object) -> str:
    """A moment as people read it, always in UTC and saying so."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def setup(app: web.Application) -> None:
    """The templates (every value escaped: autoescape on for all of them)."""
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("receiver.console", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        filters={"when": _when, "colour": charts.colour},
    )
