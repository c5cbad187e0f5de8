"""The status model: the nine statuses and the rules that fold a message's events into one status.

Pure functions of the set of events, so any arrival order gives the same answer. The status
vocabulary is mirrored by CHECK constraints in sql/migrations/0001_initial.sql.
"""

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import NamedTuple


class Status(StrEnum):
    ACCEPTED = "accepted"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    EXPIRED = "expired"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


FINAL = frozenset(
    {
        Status.DELIVERED,
        Status.READ,
        Status.FAILED,
        Status.EXPIRED,
        Status.REJECTED,
        Status.CANCELLED,
    }
)
REACHED = frozenset({Status.DELIVERED, Status.READ})

# accepted < sent < {failed, expired, rejected, cancelled} < delivered < read. A delivery after
# a failure wins (operators retry); `unknown` sits below all, so it never replaces a known status.
RANK: dict[Status, int] = {
    Status.UNKNOWN: -1,
    Status.ACCEPTED: 0,
    Status.SENT: 1,
    Status.FAILED: 2,
    Status.EXPIRED: 2,
    Status.REJECTED: 2,
    Status.CANCELLED: 2,
    Status.DELIVERED: 3,
    Status.READ: 4,
}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Observation(NamedTuple):
    """One event as the rules see it: what it says, when it happened, on which channel."""

    status: Status
    occurred_at: datetime | None = None
    channel: str | None = None


class Attempt(NamedTuple):
    channel: str
    status: Status
    occurred_at: datetime | None


class Outcome(NamedTuple):
    status: Status
    occurred_at: datetime | None
    channel: str | None
    attempts: tuple[Attempt, ...]


def _sort_key(obs: Observation) -> tuple[int, datetime, str, str]:
    # Equal rank: the later occurred_at wins; a full tie falls back to names so the result
    # never depends on which event was seen first.
    return (RANK[obs.status], obs.occurred_at or _EPOCH, obs.status.value, obs.channel or "")


def current(observations: Iterable[Observation]) -> Observation | None:
    """Rule 3: the status a set of events gives one attempt (None if there are no events)."""
    return max(observations, key=_sort_key, default=None)


def compose(observations: Iterable[Observation], channel_order: Sequence[str] = ()) -> Outcome:
    """Rule 4: a message's status from the events of all its channel attempts.

    Events without a channel speak for the message as a whole (a send response, an SMS-only
    report); they are folded in with rule 3 after the channels are composed.
    """
    by_channel: dict[str, list[Observation]] = {}
    whole: list[Observation] = []
    for obs in observations:
        if obs.channel is None:
            whole.append(obs)
        else:
            by_channel.setdefault(obs.channel, []).append(obs)

    def position(channel: str) -> tuple[int, int, datetime, str]:
        # Registered order first; channels outside it by when they were first seen.
        if channel in channel_order:
            return (0, channel_order.index(channel), _EPOCH, channel)
        # `unknown` reports do not count as seeing the channel (rule 3 ignores them too).
        known = [o for o in by_channel[channel] if o.status is not Status.UNKNOWN]
        first = min((o.occurred_at or _EPOCH) for o in known or by_channel[channel])
        return (1, 0, first, channel)

    attempts = []
    # Most messages have one channel: nothing to order then.
    for channel in sorted(by_channel, key=position) if len(by_channel) > 1 else by_channel:
        best = current(by_channel[channel])
        assert best is not None  # every channel in by_channel has at least one event
        attempts.append(Attempt(channel, best.status, best.occurred_at))

    composed = _compose_attempts(attempts, channel_order)
    deciding = current([*whole, *([composed] if composed else [])])
    if deciding is None:
        return Outcome(Status.UNKNOWN, None, None, tuple(attempts))
    return Outcome(deciding.status, deciding.occurred_at, deciding.channel, tuple(attempts))


def _compose_attempts(
    all_attempts: list[Attempt], channel_order: Sequence[str]
) -> Observation | None:
    # An attempt we only have `unknown` reports for tells us nothing: it neither keeps the
    # message open nor closes it (rule 3, applied across channels).
    attempts = [a for a in all_attempts if a.status is not Status.UNKNOWN]
    if not attempts:
        return Observation(Status.UNKNOWN) if all_attempts else None
    reached = [a for a in attempts if a.status in REACHED]
    if reached:
        best = max(
            reached, key=lambda a: _sort_key(Observation(a.status, a.occurred_at, a.channel))
        )
        return Observation(best.status, best.occurred_at, best.channel)

    unfinished = [a for a in attempts if a.status not in FINAL]
    attempted = {a.channel for a in attempts}
    furthest = max((channel_order.index(c) for c in attempted if c in channel_order), default=-1)
    next_to_come = any(c not in attempted for c in channel_order[furthest + 1 :])
    if unfinished or next_to_come:
        went_out = any(RANK[a.status] >= RANK[Status.SENT] for a in attempts)
        if unfinished:
            last = unfinished[-1]
            status, at, channel = last.status, last.occurred_at, last.channel
        else:
            status, at, channel = Status.SENT, None, None
        # Once one channel has gone out, a failover in progress is `sent`: the message is on
        # its way, and a subscriber should never see it step back to `accepted`.
        if went_out and RANK[status] < RANK[Status.SENT]:
            status = Status.SENT
        return Observation(status, at, channel)

    last = attempts[-1]
    return Observation(last.status, last.occurred_at, last.channel)
