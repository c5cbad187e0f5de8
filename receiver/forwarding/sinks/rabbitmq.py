"""RabbitMQ sink: persistent messages, publisher confirms, the mandatory flag.

A message is settled once the broker confirms it; one no queue is bound for comes back
(mandatory) and is a failed delivery, retried and then dead-lettered, never a silent drop.
Each exchange has its own channel on the server's one connection: publishing to an exchange
that does not exist closes the channel, and must not take other exchanges' messages with it.
"""

import asyncio
from contextlib import suppress
from datetime import UTC, datetime
from urllib.parse import quote

import aio_pika
import aio_pika.abc
import aio_pika.exceptions

from receiver.forwarding import broker_url
from receiver.forwarding.netguard import IPNetwork
from receiver.forwarding.sinks.base import Outcome, Outgoing
from receiver.forwarding.sinks.jetstream import HEADER_SAFE
from receiver.forwarding.sinks.link import BrokerDown, Link
from receiver.forwarding.sinks.webhook import describe_error

_Channel = tuple[aio_pika.abc.AbstractChannel, aio_pika.abc.AbstractExchange]


class RabbitSink(Link[aio_pika.abc.AbstractConnection]):
    def __init__(
        self, target: broker_url.BrokerUrl, allow: tuple[IPNetwork, ...], timeout: float
    ) -> None:
        super().__init__(target, allow, timeout)
        self._channels: dict[str, _Channel] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    async def _connect(self, address: str) -> aio_pika.abc.AbstractConnection:
        target = self.target
        self._channels = {}
        return await aio_pika.connect(
            host=address,
            port=target.port,
            login=target.username or "guest",
            password=target.password or "guest",
            virtualhost=target.vhost,
            timeout=self.timeout,
            client_properties={"connection_name": "dlr-receiver"},
        )

    def _alive(self, conn: aio_pika.abc.AbstractConnection) -> bool:
        # aio-pika's own flag lags the wire: after a connection is cut, aiormq's connection
        # underneath is closed (and every publish says so) before aio-pika's is.
        transport = conn.transport
        return not conn.is_closed and transport is not None and not transport.connection.is_closed

    async def _disconnect(self, conn: aio_pika.abc.AbstractConnection) -> None:
        await conn.close()

    async def _channel(self, conn: aio_pika.abc.AbstractConnection, name: str) -> _Channel:
        found = self._channels.get(name)
        if found is not None and not found[0].is_closed:
            return found
        async with self._opening.setdefault(name, asyncio.Lock()):
            found = self._channels.get(name)
            if found is not None and not found[0].is_closed:
                return found
            channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
            # A passive declare: it never creates the exchange (it is the user's), and a
            # missing one closes this fresh channel alone. Publishing to a missing exchange
            # instead would close the channel under the publishes still in flight on it,
            # and frames on a closed channel make the broker close the whole connection.
            try:
                exchange = await channel.get_exchange(name, ensure=True)
            except BaseException:
                with suppress(Exception):
                    await channel.close()
                raise
            self._channels[name] = (channel, exchange)
            return channel, exchange

    async def send(self, out: Outgoing) -> Outcome:
        try:
            conn = await self.connection()
        except BrokerDown as exc:
            return Outcome(ok=False, error=str(exc))
        target = broker_url.parse(out.url)
        routing_key = broker_url.fill(target.routing_key, out.provider, out.status)
        message = aio_pika.Message(
            out.body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=out.event_id,
            timestamp=datetime.now(UTC),
            type="message.status",
            headers={**out.headers, "dlr-message-key": quote(out.message_key, safe=HEADER_SAFE)},
        )
        try:
            _, exchange = await asyncio.wait_for(self._channel(conn, target.exchange), self.timeout)
            await exchange.publish(message, routing_key, mandatory=True, timeout=self.timeout)
        except aio_pika.exceptions.DeliveryError as exc:
            reason = getattr(exc.frame, "reply_text", None)
            if reason is None:  # a nack: the broker took it and could not keep it
                return Outcome(ok=False, error=f"refused by the broker ({exc.frame!r})")
            return Outcome(
                ok=False,
                error=f"not routed: exchange {target.exchange} has no queue for "
                f"routing key {routing_key} ({reason})",
            )
        except (aio_pika.exceptions.AMQPError, TimeoutError, OSError, RuntimeError) as exc:
            if not self._alive(conn):
                await self.lost(conn)
            return Outcome(ok=False, error=self.scrub(describe_error(exc)))
        return Outcome(ok=True)
