"""Where a delivery goes: a webhook, a NATS JetStream subject or a RabbitMQ exchange.

The forwarder owns claims, retries, dead letters and settling, one path for every kind of
target; a sink only delivers one message and says how it went. `Sinks` picks the sink for a
subscription's URL and keeps one connection per broker server for the forwarder's lifetime.
"""

import aiohttp

from receiver.forwarding import broker_url
from receiver.forwarding.netguard import IPNetwork
from receiver.forwarding.sinks.base import Outcome, Outgoing, Sink
from receiver.forwarding.sinks.jetstream import JetStreamSink
from receiver.forwarding.sinks.rabbitmq import RabbitSink
from receiver.forwarding.sinks.webhook import WebhookSink

__all__ = ["Outcome", "Outgoing", "Sink", "Sinks"]


class Sinks:
    """The sink for each URL: the shared HTTP client for webhooks, and one connection per
    broker server (the same host, port, credentials and vhost), opened at first use."""

    def __init__(
        self, session: aiohttp.ClientSession, allow: tuple[IPNetwork, ...], timeout: float
    ) -> None:
        self._allow = allow
        self._timeout = timeout
        self._webhook = WebhookSink(session, allow)
        self._brokers: dict[tuple[object, ...], Sink] = {}

    def for_url(self, url: str) -> Sink:
        if not broker_url.is_broker_url(url):
            return self._webhook
        target = broker_url.parse(url)
        sink = self._brokers.get(target.server)
        if sink is None:
            sink = (JetStreamSink if target.scheme == "nats" else RabbitSink)(
                target, self._allow, self._timeout
            )
            self._brokers[target.server] = sink
        return sink

    async def close(self) -> None:
        """Close every broker connection (the HTTP client belongs to whoever opened it)."""
        brokers, self._brokers = list(self._brokers.values()), {}
        for sink in brokers:
            await sink.close()
