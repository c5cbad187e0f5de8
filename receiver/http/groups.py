"""Groups sent together: an Infobip bulk, a Messente omnimessage, a Mercury dispatch."""

from collections.abc import Mapping

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from receiver.db import Conn, connection
from receiver.http import cursors, queries, views
from receiver.http.errors import ApiError
from receiver.http.keys import POOL
from receiver.http.messages import listed
from receiver.http.openapi import Operation, documented
from receiver.http.params import provider_of, validated
from receiver.jsonio import model_response


class _GroupQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cursor: str | None = Field(default=None, max_length=1000)
    limit: int = Field(default=100, ge=1, le=1000)


@documented(
    Operation(
        "A group sent together (Infobip bulkId, Messente omnimessage, Mercury dispatch)",
        {200: views.Group},
        {400: "invalid_query, invalid_cursor", 404: "unknown_provider, group_not_found"},
        query=_GroupQuery,
    )
)
async def get_group(request: web.Request) -> web.Response:
    provider = provider_of(request)
    group = request.match_info["id"]
    after, limit = group_query(request.query)
    async with connection(request.app[POOL]) as conn:
        view = await group_view(conn, provider.name, group, after, limit)
    if view is None:
        raise ApiError(404, "group_not_found", "no messages in this group")
    return model_response(view)


def group_query(params: Mapping[str, str]) -> tuple[str | None, int]:
    """GET /v1/groups/...'s `cursor` (decoded: the last key seen) and `limit`, checked."""
    query = validated(params, _GroupQuery)
    return (_group_cursor(query.cursor) if query.cursor else None), query.limit


async def group_view(
    conn: Conn, provider: str, group: str, after: str | None, limit: int
) -> views.Group | None:
    """A group's counts per status and a page of its members; None when it has none."""
    counts = await queries.group_counts(conn, provider, group)
    if not counts:
        return None
    rows = await queries.group_members(conn, provider, group, after, limit)
    next_cursor = cursors.encode(rows[-1]["key"]) if len(rows) == limit else None
    return views.Group(
        provider=provider,
        id=group,
        total=sum(counts.values()),
        counts=counts,
        members=[listed(r) for r in rows],
        next_cursor=next_cursor,
    )


def _group_cursor(cursor: str) -> str:
    value = cursors.decode(cursor)
    # The array every cursor is now; a bare string is the form given out before that.
    key = value[0] if isinstance(value, list) and len(value) == 1 else value
    try:
        return cursors.text(key)
    except ValueError as exc:
        raise cursors.invalid() from exc
