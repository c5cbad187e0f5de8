"""What every sink shares: the message it sends, how a delivery went, the sink's interface."""

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Outgoing:
    """One delivery as every sink sends it: the Standard Webhooks body and headers, and what a
    broker needs to route it."""

    url: str
    event_id: str
    body: bytes
    headers: dict[str, str]  # webhook-id, webhook-timestamp, webhook-signature
    provider: str
    status: str
    message_key: str


@dataclass(frozen=True)
class Outcome:
    """How one delivery went. `status` is the HTTP status of a webhook's answer (None for a
    broker, or when no answer came); a broker's confirmation is `ok`."""

    ok: bool
    status: int | None = None
    retry_after: str | None = None
    error: str | None = None


class Sink(Protocol):
    async def send(self, out: Outgoing) -> Outcome: ...

    async def close(self) -> None: ...
