"""NATS JetStream sink: publish with Nats-Msg-Id = the event id and wait for the stream's ack.

The stream's duplicate window drops a repeat of an id (a retry after a lost ack, a replay
within the window), so a reader sees each status change once. A subject no stream takes has
no responder: a failed delivery, retried and then dead-lettered, never a silent drop.
"""

import asyncio
from contextlib import suppress
from urllib.parse import quote

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from receiver.forwarding import broker_url
from receiver.forwarding.sinks.base import Outcome, Outgoing
from receiver.forwarding.sinks.link import BrokerDown, Link
from receiver.forwarding.sinks.webhook import describe_error

# Printable ASCII but '%' stays as it is in the message-key header; anything else (a CR or LF
# would end the header line) is percent-encoded.
HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")


class JetStreamSink(Link[tuple[NatsClient, JetStreamContext]]):
    async def _connect(self, address: str) -> tuple[NatsClient, JetStreamContext]:
        host = f"[{address}]" if ":" in address else address
        target = self.target
        token = target.username if target.password is None else None
        nc = NatsClient()
        connecting = nc.connect(
            servers=[f"nats://{host}:{target.port}"],
            user=None if token else target.username,
            password=target.password,
            token=token,
            name="dlr-receiver",
            allow_reconnect=False,
            connect_timeout=max(1, round(self.timeout)),
            # A peer that vanishes without closing is noticed within a few pings.
            ping_interval=max(1, round(self.timeout)),
            max_outstanding_pings=2,
            error_cb=self._error,
        )
        try:
            await asyncio.wait_for(connecting, self.timeout)
        except BaseException:
            # A connect cut short (timeout, cancellation) leaves its socket open otherwise.
            with suppress(Exception):
                await nc.close()
            raise
        return nc, nc.jetstream(timeout=self.timeout)

    async def _error(self, exc: Exception) -> None:
        pass  # every failure reaches the delivery it breaks; the client's own log is noise

    def _alive(self, conn: tuple[NatsClient, JetStreamContext]) -> bool:
        return conn[0].is_connected

    async def _disconnect(self, conn: tuple[NatsClient, JetStreamContext]) -> None:
        await conn[0].close()

    async def send(self, out: Outgoing) -> Outcome:
        try:
            conn = await self.connection()
        except BrokerDown as exc:
            return Outcome(ok=False, error=str(exc))
        subject = broker_url.fill(broker_url.parse(out.url).subject, out.provider, out.status)
        headers = {
            **out.headers,
            "Content-Type": "application/json",
            "Nats-Msg-Id": out.event_id,
            "Dlr-Message-Key": quote(out.message_key, safe=HEADER_SAFE),
        }
        try:
            await conn[1].publish(subject, out.body, timeout=self.timeout, headers=headers)
        except nats.js.errors.NoStreamResponseError:
            return Outcome(ok=False, error=f"no JetStream stream takes subject {subject}")
        except nats.js.errors.APIError as exc:
            return Outcome(ok=False, error=f"JetStream refused: {self.scrub(str(exc))}")
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            if not conn[0].is_connected:
                await self.lost(conn)
            return Outcome(ok=False, error=self.scrub(describe_error(exc)))
        return Outcome(ok=True)
