"""Reading kept receipts again (`python -m receiver reprocess`): after a parser fix, the
reports an older version could not read are recovered from the raw bodies it kept.

Webhook receipts of every pushing provider, and Infobip's drained batches (the same format),
go through today's parser and then through ingest, like any report. Dedup makes this safe to
run more than once: what was stored already is a duplicate. Each receipt keeps its row and id;
only its problem is written anew (none, once everything in it was read).
"""

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from receiver.db import connection
from receiver.ingest import Ingestor
from receiver.providers import PROVIDERS, infobip
from receiver.reports import InvalidReport, Parsed, Receipt

BATCH = 200


@dataclass
class Reprocessed:
    receipts: int = 0
    new_events: int = 0
    # Receipts that still hold something today's parser cannot read.
    still_problems: int = 0


_KEPT = """
    select id, provider, source, content_type, body, received_at from receipts
    where id > $1
      and (source = 'webhook' or (provider = $2 and source = 'poll'))
      and ($3 or problem is not null)
      and ($4::timestamptz is null or received_at >= $4)
      and ($5::timestamptz is null or received_at < $5)
    order by id
    limit $6
"""


async def reprocess(
    pool: asyncpg.Pool,
    ingestor: Ingestor,
    *,
    everything: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
    batch: int = BATCH,
) -> Reprocessed:
    """Read again the receipts that kept a problem (or, `everything`, all of them) received in
    [since, until), a batch at a time, in the order they came."""
    done = Reprocessed()
    after = uuid.UUID(int=0)
    while True:
        async with connection(pool) as conn:
            rows = await conn.fetch(_KEPT, after, infobip.NAME, everything, since, until, batch)
        if not rows:
            return done
        results = await asyncio.gather(*(_again(ingestor, row) for row in rows))
        for new_events, problem in results:
            done.receipts += 1
            done.new_events += new_events
            done.still_problems += problem
        after = rows[-1]["id"]


async def _again(ingestor: Ingestor, row: asyncpg.Record) -> tuple[int, bool]:
    provider = PROVIDERS.get(row["provider"])
    if provider is None or provider.parse_webhook is None:
        return 0, True  # a provider this version no longer reads
    try:
        parsed = provider.parse_webhook(row["body"], row["content_type"], row["received_at"])
    except InvalidReport as exc:
        parsed = Parsed([], [str(exc)])
    receipt = Receipt(
        row["provider"],
        row["source"],
        row["body"],
        row["content_type"],
        parsed.problem,
        id=row["id"],
        kept=True,
    )
    result = await ingestor.submit(receipt, parsed.updates)
    return result.new_events, (parsed.problem or result.problem) is not None
