"""The service's configuration: one frozen object read from RECEIVER_* environment variables."""

import ipaddress
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# What an API token may do (receiver/http/auth.py says which routes need which): `read` the
# lookups and receipts, `write` send registrations, `admin` subscriptions and their deliveries.
SCOPES = ("read", "write", "admin")


def split_token(entry: str) -> tuple[str, frozenset[str]]:
    """An RECEIVER_API_TOKENS entry as (token, scopes): `token:read+write`, or a bare `token`,
    which has every scope (as every token had before scopes existed)."""
    token, colon, suffix = entry.rpartition(":")
    if not colon:
        return entry, frozenset(SCOPES)
    scopes = suffix.split("+")
    # A typo must stop the service, not quietly make `abc:reed` a token with every scope.
    unknown = sorted(set(scopes) - set(SCOPES))
    if not token or unknown:
        raise ValueError(
            f"API token scopes must be {'+'.join(SCOPES)} or some of them after the last ':'"
            f" (unknown: {unknown}); the token itself is not shown"
        )
    return token, frozenset(scopes)


def _known_zone(name: str) -> None:
    """A time zone name the service can use, or a clear error at start."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        message = f"unknown time zone {name!r}; use an IANA name like Europe/Athens"
        raise ValueError(message) from None


def _split_commas(value: object) -> object:
    # Lists arrive as "a,b,c" in the environment; pydantic-settings would want JSON.
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


# --- Provider accounts (issue 11) ---------------------------------------------------------


_YEAR = 365 * 86400


class Account(BaseModel):
    """One entry of RECEIVER_ACCOUNTS (JSON): `{"messente": {"brand2": {...}}}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Messente: the API password (the DLR signature key); Comapi: the webhook secret;
    # Infobip: the Basic password, with `username`.
    secret: SecretStr | None = None
    username: str | None = None
    # Accepted until then, refused after: keep the old credentials as an account with an
    # expiry while the provider moves to the new ones.
    until: AwareDatetime | None = None
    # An unguessable path segment (/webhooks/{provider}/{token}) for per-request URLs
    # (Infobip notifyUrl, Messente dlr_url) that arrive with no credentials at all.
    url_token: SecretStr | None = Field(default=None)
    # The account's own API, for polling (each provider's module says which it reads):
    # Basic user and password (Messente, Comapi, Mercury; Messente's password defaults to
    # `secret`, which is the same API password), or an API key (Infobip's `App` key).
    api_username: str | None = None
    api_password: SecretStr | None = None
    api_key: SecretStr | None = None
    # Scheme and host; unset: the provider's RECEIVER_<PROVIDER>_BASE_URL.
    base_url: str | None = Field(default=None, max_length=2000, pattern=r"^https?://[^\s]+$")
    # The IANA zone of the account's zone-less times (Mercury); unset: RECEIVER_MERCURY_TIME_ZONE.
    time_zone: str | None = None
    # false: its messages are never polled (pushed reports are still verified).
    poll: bool = True
    # Unset: RECEIVER_POLL_CONCURRENCY, RECEIVER_POLL_RATE, RECEIVER_INFOBIP_POLL_INTERVAL.
    poll_concurrency: int | None = Field(default=None, gt=0, le=1000)
    poll_rate: float | None = Field(default=None, gt=0)
    # Seconds between drains of the account's report queues once they came back empty.
    poll_interval: float | None = Field(default=None, gt=0)
    # The account's poll schedule, in seconds; unset: RECEIVER_POLL_MIN_INTERVAL,
    # RECEIVER_POLL_MAX_INTERVAL, RECEIVER_POLL_MAX_AGE. Capped at a year (intervals) and ten
    # years (age) so the schedule stays a date Postgres can hold.
    poll_min_interval: float | None = Field(default=None, gt=0, le=_YEAR)
    poll_max_interval: float | None = Field(default=None, gt=0, le=_YEAR)
    poll_max_age: float | None = Field(default=None, gt=0, le=10 * _YEAR)

    @field_validator("time_zone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            _known_zone(value)
        return value


class Settings(BaseSettings):
    # Inputs hidden from validation errors: a bad RECEIVER_API_TOKENS entry is a secret.
    model_config = SettingsConfigDict(
        env_prefix="RECEIVER_", frozen=True, extra="ignore", hide_input_in_errors=True
    )

    database_url: SecretStr | None = None
    # At start, how long to wait for a database that refuses connections (still coming up,
    # as beside it in a compose file or a pod) before giving up with one clear line.
    database_wait: float = Field(default=60.0, ge=0)
    data_dir: Path = Path("receiver-data")
    host: str = "127.0.0.1"
    port: int = 8080
    # HTTP processes serving one port (SO_REUSEPORT).
    workers: int = Field(default=1, ge=1, le=64)
    # serve runs the projector, forwarder, poller and retention in a process of their own, so
    # the HTTP processes keep their cores for answering; false runs them inside each of them.
    background_process: bool = True
    # The background process's niceness: when a burst takes every core, the HTTP processes
    # answering providers get the CPU first and projection falls behind, to catch up after.
    background_nice: int = Field(default=10, ge=0, le=19)
    reuse_port: bool = False
    api_tokens: Annotated[tuple[SecretStr, ...], NoDecode] = ()
    # The console's session cookies are signed with this. Unset: derived from the API tokens,
    # so every worker process (and every instance with the same tokens) agrees on it.
    console_secret: SecretStr | None = None
    console_session_seconds: float = Field(default=12 * 3600, gt=0, le=30 * 86400)
    log_level: str = "info"

    messente_api_username: str | None = None
    messente_api_password: SecretStr | None = None
    infobip_api_key: SecretStr | None = None
    infobip_webhook_username: str | None = None
    infobip_webhook_password: SecretStr | None = None
    comapi_webhook_secret: SecretStr | None = None
    comapi_api_username: str | None = None
    comapi_api_password: SecretStr | None = None
    mercury_username: str | None = None
    mercury_password: SecretStr | None = None

    messente_base_url: str = "https://api.messente.com"
    infobip_base_url: str = "https://api.infobip.com"
    comapi_base_url: str = "https://r1-api.dotdigital.com"
    # Mercury publishes no public API host: each customer gets their own.
    mercury_base_url: str | None = None

    # Polling. Each unfinished message is polled first poll_min_interval after it is first
    # seen, then at doubling intervals up to poll_max_interval, until final or poll_max_age.
    poll_enabled: bool = True
    poll_min_interval: float = Field(default=30.0, gt=0)
    poll_max_interval: float = Field(default=3600.0, gt=0)
    poll_max_age: float = Field(default=2 * 86400, gt=0)
    # Per provider: requests in flight, and requests started per second.
    poll_concurrency: int = Field(default=4, gt=0)
    poll_rate: float = Field(default=10.0, gt=0)
    poll_timeout: float = Field(default=15.0, gt=0)
    infobip_poll_interval: float = Field(default=10.0, gt=0)
    forward_allow_networks: Annotated[tuple[str, ...], NoDecode] = ()
    insecure_webhooks: Annotated[tuple[str, ...], NoDecode] = ()
    # Where a number written without its country code is searched for (ISO 3166 codes, `EE`,
    # `HR`): support staff type the number as the customer says it, `5555 555` or `098 117`.
    phone_regions: Annotated[tuple[str, ...], NoDecode] = ()

    # Largest request body accepted, in bytes. Infobip's default bucket of 100 reports is far
    # below this; the limit exists so a hostile client cannot make us buffer arbitrary amounts.
    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # Group commit of the journal: at most this many requests go into one transaction, and at
    # most this many transactions run at once. Requests arriving meanwhile wait for the next.
    ingest_max_batch: int = Field(default=2000, gt=0)
    ingest_max_inflight: int = Field(default=2, gt=0)
    # The longest a request waits for its journal commit before it is answered 503 (retry):
    # a stalled database must not hold providers until their own timeouts.
    ack_timeout: float = Field(default=5.0, gt=0)
    # The projector inside serve (turn off when running `python -m receiver project` apart),
    # the most status updates it applies in one transaction, and how often an idle projector
    # looks for journal rows written by other processes (its own wake it at once).
    project_enabled: bool = True
    project_max_batch: int = Field(default=5000, gt=0)
    project_idle_poll: float = Field(default=0.05, gt=0)
    # After a batch that did not empty what was waiting of the journal, the projector lets
    # the next one gather for this long: under load, one batch per gathering rather than one
    # per commit (each batch has a fixed cost in statements and its commit).
    project_gather: float = Field(default=0.1, ge=0, le=5)
    # A send registration answers once its messages are visible (201), or after this many
    # seconds with 202 (journaled, durable, not yet projected).
    registration_wait: float = Field(default=10.0, gt=0)
    db_pool_size: int = Field(default=10, gt=1)
    # The scheduler slice, in µs, that the HTTP workers ask for their Postgres backends where
    # Postgres runs on this host and the system allows it (receiver/sched.py); 0 leaves them
    # alone. Linux takes 100-100000.
    db_session_slice_us: int = Field(default=100, ge=0, le=100_000)

    # Retention: messages nobody has touched for this many days are deleted with their events,
    # then receipts and settled deliveries as old. None keeps everything. At least a day: a
    # lower bound against typos (pending deliveries are kept whatever their age).
    retention_days: float | None = Field(default=None, ge=1)

    # Forwarding to subscribers. The schedule is the wait before each retry, in seconds: after
    # the last one fails the delivery is dead-lettered (replayable). About a day in all.
    forward_enabled: bool = True
    forward_retry_schedule: Annotated[tuple[float, ...], NoDecode] = (
        5,
        300,
        1800,
        7200,
        18000,
        36000,
    )
    forward_timeout: float = Field(default=10.0, gt=0)
    # Requests in flight from one forwarder, to all subscriptions (also its connection limit).
    # Well above the per-subscription ceiling, so one subscriber can never take every slot.
    forward_concurrency: int = Field(default=256, gt=0)
    # The most requests in flight from one forwarder to one subscription: the ceiling of its
    # adaptive window, which starts at 16, widens while answers come quick and successful and
    # halves on a timeout, error or slow answer (see forward._Window).
    forward_per_subscription: int = Field(default=64, gt=0)
    # A claimed delivery returns to the queue after this long if its forwarder vanished.
    forward_lease: float = Field(default=300.0, gt=0)
    # LISTEN/NOTIFY wakes the forwarder at once; this is the fallback poll.
    forward_poll_interval: float = Field(default=5.0, gt=0)
    # A subscription failing without a single success for this long is disabled.
    forward_disable_after: float = Field(default=5 * 86400, gt=0)
    # Bounds for an honoured Retry-After (429/503).
    forward_max_retry_after: float = Field(default=6 * 3600, gt=0)

    # --- Provider accounts (issue 11) ---------------------------------------------------
    # The IANA zone Mercury's zone-less times are in (the account's local time).
    mercury_time_zone: str = "UTC"
    # More accounts per provider, as JSON: {"infobip": {"brand2": {"username": ..., "secret":
    # ..., "until": ..., "url_token": ...}}}. Read by receiver/accounts.py.
    accounts: dict[str, dict[str, Account]] = {}

    @field_validator("mercury_time_zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        _known_zone(value)
        return value

    @field_validator("accounts")
    @classmethod
    def _account_providers(cls, value: dict[str, dict[str, Account]]) -> object:
        _known_providers(value)
        for accounts in value.values():
            for account in accounts.values():
                token = account.url_token
                if token is not None and len(token.get_secret_value()) < 32:
                    raise ValueError("a url_token needs at least 32 characters (unguessable)")
        return value

    # --- end of provider accounts --------------------------------------------------------

    @field_validator(
        "api_tokens",
        "forward_allow_networks",
        "insecure_webhooks",
        "forward_retry_schedule",
        "phone_regions",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("api_tokens")
    @classmethod
    def _scoped_tokens(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for entry in value:
            split_token(entry.get_secret_value())  # raises ValueError: a clear config error
        return value

    @field_validator("forward_allow_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)  # raises ValueError: a clear config error
        return value

    @field_validator("insecure_webhooks")
    @classmethod
    def _insecure_providers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        _known_providers(value)
        return value

    @field_validator("phone_regions")
    @classmethod
    def _phone_regions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        regions = tuple(region.upper() for region in value)
        unknown = [r for r in regions if r not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown phone region {unknown[0]!r} (ISO 3166 codes: EE, HR)")
        return regions


def _known_providers(names: Iterable[str]) -> None:
    """Names of providers in the registry, or a clear error at start."""
    # Imported here: the provider modules import this one (Settings is what they read), and
    # settings are only ever built once every module is loaded.
    from receiver.providers import PROVIDERS

    unknown = sorted(set(names) - set(PROVIDERS))
    if unknown:
        raise ValueError(f"unknown providers {unknown}; known: {sorted(PROVIDERS)}")
