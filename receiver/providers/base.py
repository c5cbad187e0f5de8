"""What a provider module offers the service, and the small helpers its parsers share."""

import base64
import hmac
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Annotated, Any

import aiohttp
from pydantic import AfterValidator, SecretStr, ValidationError

from receiver.reports import InvalidReport, Parsed, StatusUpdate
from receiver.retry_after import parse_retry_after
from receiver.settings import Account, Settings


class Verification(Enum):
    OK = "ok"
    MISSING = "missing"  # the request carries no credentials or signature
    BAD = "bad"  # it carries them, and they are wrong
    NOT_CONFIGURED = "not_configured"  # we hold no secret to check against


@dataclass(frozen=True)
class Registration:
    """A client's `POST /v1/messages/{provider}` body: the send response, verbatim."""

    response: Any
    request: Any | None
    reference: str | None
    received_at: datetime
    # The channel the client sent it on, when the provider's reports will not say (Infobip's
    # WhatsApp and Viber APIs): the message's channel until a report names one.
    channel: str | None = None


# verify(account, headers, raw body) -> Verification, against that account's secret
Verifier = Callable[[Account, Mapping[str, str], bytes], Verification]
# parse(raw body, content type, arrival time) -> Parsed
WebhookParser = Callable[[bytes, str | None, datetime], Parsed]
# A batch provider's cheap look at a body on the acknowledgement path: InvalidReport for what
# can never be read, else how many reports it holds, or None to have it parsed there and then.
WebhookChecker = Callable[[bytes, str | None], int | None]
RegistrationParser = Callable[[Registration], list[StatusUpdate]]


@dataclass(frozen=True)
class PollTarget:
    """What one poll asks about: a message, or for Mercury a dispatch and its recipients."""

    key: str
    group: str | None = None
    members: Sequence[str] = ()


@dataclass(frozen=True)
class Fetched:
    """A poll's answer: the raw body (kept as a receipt), its updates, and whether polling
    this target can stop although its status is not final (a Mercury dispatch fully queued)."""

    body: bytes
    updates: list[StatusUpdate]
    problems: list[str] = field(default_factory=list)
    done: bool = False


class PollError(Exception):
    """The provider did not answer usefully: 429, 5xx, a timeout, a refused connection."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


# poll(client session, account, target) -> Fetched, for providers polled message by message.
Poller = Callable[[aiohttp.ClientSession, Account, PollTarget], Awaitable[Fetched]]
# fetch(client session, account, queue path) -> the raw body of one batch of a report queue.
QueueFetcher = Callable[[aiohttp.ClientSession, Account, str], Awaitable[bytes]]
# Whether an account holds what a capability needs (credentials, a base URL).
Ready = Callable[[Account], bool]


@dataclass(frozen=True)
class Push:
    """The provider pushes reports to POST /webhooks/{provider}[/{token}]."""

    verify: Verifier
    parse: WebhookParser
    # Given, the webhook's full parse runs in the projector, once, and the request path only
    # checks the body (see receiver/http/webhooks.py); otherwise it parses on the request path.
    check: WebhookChecker | None = None


@dataclass(frozen=True)
class MessagePolling:
    """The provider answers a status request per message (or per group of messages)."""

    fetch: Poller
    ready: Ready
    # One request answers for a whole group (a Mercury dispatch): poll it once for all its
    # members rather than once per member.
    by_group: bool = False


@dataclass(frozen=True)
class QueueDrain:
    """The provider keeps reports in once-only queues that are fetched until empty (Infobip):
    every batch is committed before the next call, one drainer per account at a time."""

    paths: tuple[str, ...]
    fetch: QueueFetcher
    parse: WebhookParser
    ready: Ready


@dataclass(frozen=True)
class Provider:
    """What a provider can do. The webhook route, the poller and the accounts' settings follow
    from these capabilities alone: a capability left None is one the provider has not."""

    name: str
    # Registering a send (POST /v1/messages/{provider}).
    parse_registration: RegistrationParser | None = None
    push: Push | None = None
    poll: MessagePolling | None = None
    drain: QueueDrain | None = None
    # The default account, from the RECEIVER_<PROVIDER>_* variables; also where a named
    # account's unset base URL and time zone come from.
    default_account: Callable[[Settings], Account] | None = None

    def report_parser(self) -> WebhookParser | None:
        """What reads a stored report body again (projector, reprocess), pushed or drained."""
        if self.push is not None:
            return self.push.parse
        return self.drain.parse if self.drain is not None else None


def _to_utc(moment: datetime) -> datetime:
    # Messente sends zone-less timestamps; its docs do not say, and UTC is what it runs on.
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01 east of Greenwich, 9999-12-31 west of it
        raise ValueError("timestamp out of range") from None


# A provider's timestamp, in UTC once validated. One that cannot be (out of range) makes its
# report invalid rather than crashing the request.
Timestamp = Annotated[datetime, AfterValidator(_to_utc)]


def describe(error: ValidationError) -> str:
    """A short, safe summary of what is wrong with a payload (no input values echoed)."""
    parts = []
    for item in error.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(str(p) for p in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']}")
    more = error.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def invalid(error: ValidationError) -> InvalidReport:
    return InvalidReport(describe(error))


def clean(value: str | None, limit: int = 2000) -> str | None:
    """Text fit for a Postgres text column: no NUL bytes, bounded length."""
    if value is None:
        return None
    return value.replace("\x00", "")[:limit]


def verify_hex_hmac(
    secret: SecretStr | None,
    headers: Mapping[str, str],
    header_name: str,
    body: bytes,
    digest: str,
) -> Verification:
    """A hex HMAC of the raw body in one header (Messente: SHA-256, Comapi: SHA-1)."""
    if secret is None:
        return Verification.NOT_CONFIGURED
    given = header(headers, header_name)
    if not given:
        return Verification.MISSING
    expected = sign_hex_hmac(secret.get_secret_value(), body, digest)
    return Verification.OK if same(expected, given.lower()) else Verification.BAD


def sign_hex_hmac(secret: str, body: bytes, digest: str) -> str:
    return hmac.new(secret.encode(), body, digest).hexdigest()


def same(expected: str, given: str) -> bool:
    """Constant-time comparison of a secret with what a request carried. On bytes: given
    text with non-ASCII characters would make compare_digest raise instead of answer."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogateescape"))


def header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return value.strip() if value else None


async def fetch(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: Mapping[str, str],
    params: Mapping[str, str] | None = None,
) -> bytes | None:
    """GET a provider API; the body on 200, None on 404, PollError on anything worth retrying."""
    try:
        async with session.get(
            url, headers=dict(headers), params=params, allow_redirects=False
        ) as resp:
            body = await resp.read()
            if resp.status == 200:
                return body
            if resp.status == 404:
                return None
            raise PollError(
                f"HTTP {resp.status} from {url}",
                status=resp.status,
                retry_after=parse_retry_after(resp.headers.get("Retry-After")),
            )
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise PollError(f"{type(exc).__name__} from {url}: {exc}") from exc


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}", "Accept": "application/json"}
