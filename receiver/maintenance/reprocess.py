"""Re-reading history (`python -m receiver reprocess`): stored request bodies through today's
parsers and mappings, with what changed applied to the past.

Each receipt's body is parsed again. A report nothing was stored for (an older parser could
not read it) becomes a new event; a report whose status today's mapping reads differently (a
code that was `unknown` and is mapped now) gets a correcting event. Events stay append-only: a
correction names the dedup key it corrects, the status rules use the newest correction in its
place, and the timeline shows both. What changed goes into the journal, like every report, so
the projector moves message statuses and subscribers are told. Running it again changes
nothing more: today's reading then matches what is stored.
"""

import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from receiver.db import connection
from receiver.ingest.journal import Journal, Position
from receiver.providers import PROVIDERS
from receiver.reports import InvalidReport, Parsed, Receipt, StatusUpdate

BATCH = 200


@dataclass
class Reprocessed:
    receipts: int = 0
    # Reports stored for the first time, and reports whose status changed, per
    # (provider, old status, new status); old is None for a new one.
    changes: Counter[tuple[str, str | None, str]] = field(default_factory=Counter)
    # Receipts that still hold something today's parser cannot read.
    still_problems: int = 0
    # The last journal row written, for waiting until it is projected.
    last: Position | None = None

    @property
    def new_events(self) -> int:
        return sum(n for (_, old, _), n in self.changes.items() if old is None)

    @property
    def corrected(self) -> int:
        return sum(n for (_, old, _), n in self.changes.items() if old is not None)


_KEPT = """
    select id, receipt_id, provider, source, content_type, body, received_at, problem, account
    from journal
    where id > $1 and replays is null
      -- Polled receipts hold reports only when drained from a queue (whole report bodies).
      and (source = 'webhook' or (provider = any($2::text[]) and source = 'poll'))
      and ($3 or problem is not null)
      and ($4::timestamptz is null or received_at >= $4)
      and ($5::timestamptz is null or received_at < $5)
      and ($6::text is null or provider = $6)
    order by id
    limit $7
"""

_COUNT = f"select count(*) from ({_KEPT.replace('limit $7', '')}) kept"  # noqa: S608 - a constant

# For each of these reports, by its dedup key, what it is now (the newest correction of it)
# and how many corrections it has had. Looked up by key, not by receipt: a report that came
# twice is stored with the receipt it came with first.
_STORED = """
    select e.provider, e.message_key, coalesce(e.corrects, e.dedup_key) as root,
           (array_agg(e.status order by e.id desc))[1] as status,
           count(*) - 1 as corrections
    from unnest($1::text[], $2::text[], $3::text[]) as k(provider, message_key, dedup_key)
    join events e on e.provider = k.provider and e.message_key = k.message_key
                 and coalesce(e.corrects, e.dedup_key) = k.dedup_key
    group by 1, 2, 3
"""


async def reprocess(
    pool: asyncpg.Pool,
    journal: Journal | None,
    *,
    everything: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
    provider: str | None = None,
    batch: int = BATCH,
    progress: Callable[[int, int, Reprocessed], None] | None = None,
) -> Reprocessed:
    """Read again the receipts that kept a problem (or, `everything`, all of them) received in
    [since, until), a batch at a time, in the order they came. With no journal it is a dry
    run: it counts what would change and writes nothing."""
    done = Reprocessed()
    after = 0
    drained = [p.name for p in PROVIDERS.values() if p.drain is not None]
    async with connection(pool) as conn:
        total: int = await conn.fetchval(_COUNT, after, drained, everything, since, until, provider)
    while True:
        async with connection(pool) as conn:
            rows = await conn.fetch(
                _KEPT, after, drained, everything, since, until, provider, batch
            )
            if not rows:
                return done
            parsed_rows = [(row, _parse(row)) for row in rows]
            keys = [
                (u.provider, u.message_key, u.dedup_key) for _, p in parsed_rows for u in p.updates
            ]
            stored = {
                (r["provider"], r["message_key"], r["root"]): (r["status"], r["corrections"])
                for r in await conn.fetch(
                    _STORED, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]
                )
            }
        for row, parsed in parsed_rows:
            updates = _what_changed(parsed.updates, stored, done)
            done.receipts += 1
            done.still_problems += parsed.problem is not None
            if journal is None:
                continue
            if updates:
                # The receipt's new problem rides with what is recovered: the projector writes
                # it to the receipt in the transaction that stores the recovered reports, so a
                # run cut off in between leaves the receipt listed, to be read again.
                again = Receipt(
                    row["provider"],
                    row["source"],
                    b"",
                    row["content_type"],
                    problem=parsed.problem,
                    replays=row["receipt_id"],
                    account=row["account"],
                )
                done.last = await journal.append(again, updates)
            elif parsed.problem != row["problem"]:
                async with connection(pool) as conn:
                    await conn.execute(
                        "update journal set problem = $2 where receipt_id = $1 and replays is null",
                        row["receipt_id"],
                        parsed.problem,
                    )
        after = rows[-1]["id"]
        if progress is not None:
            progress(done.receipts, total, done)


def _parse(row: asyncpg.Record) -> Parsed:
    provider = PROVIDERS.get(row["provider"])
    parse = provider.report_parser() if provider is not None else None
    if parse is None:
        return Parsed([], ["a provider this version no longer reads"])
    try:
        return parse(row["body"], row["content_type"], row["received_at"])
    except InvalidReport as exc:
        return Parsed([], [str(exc)])


def _what_changed(
    updates: Sequence[StatusUpdate],
    stored: dict[tuple[str, str, str], tuple[str, int]],
    done: Reprocessed,
) -> list[StatusUpdate]:
    changed = []
    for update in updates:
        key = (update.provider, update.message_key, update.dedup_key)
        now = stored.get(key)
        # What this run writes counts as stored for the receipts after it (a retried report).
        if now is None:
            stored[key] = (update.status.value, 0)
            changed.append(update)  # never stored: an older parser could not read it
            done.changes[(update.provider, None, update.status.value)] += 1
            continue
        status, corrections = now
        if status == update.status.value:
            continue
        stored[key] = (update.status.value, corrections + 1)
        # The count in the key keeps a mapping that changes back and forth from colliding
        # with an earlier correction; two runs at once write the same key, so one event.
        changed.append(
            update._replace(
                dedup_key=f"{update.dedup_key}>{corrections + 1}:{update.status.value}",
                corrects=update.dedup_key,
            )
        )
        done.changes[(update.provider, status, update.status.value)] += 1
    return changed


def print_progress(receipts: int, total: int, done: Reprocessed) -> None:
    """A progress line on stderr, rewritten in place on a terminal."""
    end = "\r" if sys.stderr.isatty() else "\n"
    share = receipts / total if total else 1.0
    print(
        f"reprocess: {receipts}/{total} receipts ({share:.0%}), "
        f"{done.new_events} new, {done.corrected} corrected",
        end=end,
        file=sys.stderr,
        flush=True,
    )


def summary(done: Reprocessed) -> list[str]:
    """What changed, a line per provider and status move."""
    return [
        f"{provider}: {old or '(new)'} -> {new}: {count}"
        for (provider, old, new), count in sorted(
            done.changes.items(), key=lambda item: (item[0][0], item[0][1] or "", item[0][2])
        )
    ]
