"""Webhook sink: one signed POST per delivery, through the forwarder's shared HTTP client."""

import aiohttp
import yarl

from receiver.forwarding.netguard import BlockedAddress, IPNetwork, check_literal
from receiver.forwarding.sinks.base import Outcome, Outgoing

_RESPONSE_PEEK = 4096  # bytes of a subscriber's answer worth keeping in the error text


class WebhookSink:
    def __init__(self, session: aiohttp.ClientSession, allow: tuple[IPNetwork, ...]) -> None:
        self._session = session
        self._allow = allow

    async def send(self, out: Outgoing) -> Outcome:
        # The session's own timeout (RECEIVER_FORWARD_TIMEOUT) bounds the request.
        headers = {"Content-Type": "application/json", **out.headers}
        try:
            check_literal(yarl.URL(out.url).host or "", self._allow)
            async with self._session.post(
                out.url, data=out.body, headers=headers, allow_redirects=False
            ) as resp:
                peek = await resp.content.read(_RESPONSE_PEEK)
                ok = 200 <= resp.status < 300
                return Outcome(
                    ok=ok,
                    status=resp.status,
                    retry_after=resp.headers.get("Retry-After"),
                    error=None if ok else _describe(resp.status, peek),
                )
        except BlockedAddress as exc:
            return Outcome(ok=False, error=f"refused: {exc}")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return Outcome(ok=False, error=describe_error(exc))

    async def close(self) -> None:
        pass  # the session belongs to whoever opened it


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _describe(status: int, peek: bytes) -> str:
    text = peek.decode("utf-8", errors="replace").strip().replace("\x00", "")
    return f"HTTP {status}" + (f": {text[:500]}" if text else "")
