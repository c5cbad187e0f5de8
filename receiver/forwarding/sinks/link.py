"""One connection to one broker server, opened when first needed and again after it is lost,
with backoff between failed attempts, and only to addresses the internal-address guard allows.

A broker that is down must cost only its own deliveries: while it is backing off, a delivery
fails at once (and is retried on the forwarder's schedule) instead of waiting for a connect
that will fail; a connect attempt is bounded by the delivery timeout. The clients' own
reconnect logic is off: it would reconnect to addresses the server advertises, past the guard.
"""

import asyncio
import random
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

import structlog

from receiver.forwarding import broker_url
from receiver.forwarding.netguard import GuardedResolver, IPNetwork
from receiver.forwarding.sinks.webhook import describe_error

log = structlog.get_logger()

C = TypeVar("C")

_FIRST_BACKOFF = 0.5  # seconds after the first failed connect, doubling
_MOST_BACKOFF = 30.0


class BrokerDown(Exception):  # noqa: N818 - a state, as BlockedAddress is
    pass


class Link(ABC, Generic[C]):
    def __init__(
        self, target: broker_url.BrokerUrl, allow: tuple[IPNetwork, ...], timeout: float
    ) -> None:
        self.target = target
        self.timeout = timeout  # seconds for a connect, and for a publish to be confirmed
        self._allow = allow
        self._conn: C | None = None
        self._lock = asyncio.Lock()
        self._failures = 0
        self._next_try = 0.0
        self._last_error = ""
        # For logs: never the credentials.
        self.name = f"{target.scheme}://{target.host}:{target.port}"

    @abstractmethod
    async def _connect(self, address: str) -> C: ...

    @abstractmethod
    def _alive(self, conn: C) -> bool: ...

    @abstractmethod
    async def _disconnect(self, conn: C) -> None: ...

    def scrub(self, text: str) -> str:
        for secret in self.target.secrets():
            text = text.replace(secret, "***")
        return text

    async def connection(self) -> C:
        """The open connection, or a new one; BrokerDown (its message safe to store and log)
        if the broker cannot be reached now."""
        conn = self._conn
        if conn is not None and self._alive(conn):
            return conn
        async with self._lock:  # one connect at a time; the others see how it went
            if self._conn is not None and self._alive(self._conn):
                return self._conn
            await self.drop()
            loop = asyncio.get_running_loop()
            wait = self._next_try - loop.time()
            if wait > 0:
                raise BrokerDown(f"{self._last_error} (next connection attempt in {wait:.1f} s)")
            try:
                address = await self._resolve()
                self._conn = await asyncio.wait_for(self._connect(address), self.timeout)
            except Exception as exc:
                self._failures += 1
                # Jitter, so forwarders that lost one broker together do not return together.
                backoff = min(_MOST_BACKOFF, _FIRST_BACKOFF * 2 ** (self._failures - 1))
                backoff *= random.uniform(0.8, 1.2)  # noqa: S311 - not crypto
                self._next_try = loop.time() + backoff
                self._last_error = f"cannot connect to {self.name}: " + self.scrub(
                    describe_error(exc)
                )
                log.warning("forward.broker_down", broker=self.name, error=self._last_error)
                raise BrokerDown(self._last_error) from exc
            if self._failures:
                log.info("forward.broker_reconnected", broker=self.name, failures=self._failures)
            self._failures = 0
            return self._conn

    async def lost(self, conn: C) -> None:
        """The connection failed under a delivery: the next one connects again."""
        if self._conn is conn:
            self._conn = None
            await self._disconnect_quietly(conn)

    async def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._disconnect_quietly(conn)

    async def close(self) -> None:
        async with self._lock:
            await self.drop()

    async def _disconnect_quietly(self, conn: C) -> None:
        try:
            await asyncio.wait_for(self._disconnect(conn), 2)
        except Exception as exc:
            log.info("forward.broker_close_failed", broker=self.name, error=self.scrub(str(exc)))

    async def _resolve(self) -> str:
        # The address is checked here and connected to as it is, so a name that resolves to
        # a public address now and an internal one a moment later cannot slip past.
        resolver = GuardedResolver(self._allow)
        try:
            results = await asyncio.wait_for(
                resolver.resolve(self.target.host, self.target.port), self.timeout
            )
        finally:
            await resolver.close()
        return results[0]["host"]
