"""Provider accounts: several per provider, each with its own webhook credentials, an
optional expiry (rotation with a grace period), an optional URL token, and its own API
credentials, base URL and polling pace."""

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from receiver.providers import PROVIDERS
from receiver.providers.base import Provider, Verification, Verifier, same
from receiver.settings import Account, Settings

DEFAULT = "default"


def accounts(settings: Settings, provider: str) -> dict[str, Account]:
    """The provider's accounts: the default one (today's RECEIVER_<PROVIDER>_* variables,
    if any is set) first, then those of RECEIVER_ACCOUNTS, each completed with what it left
    unset: the default account's base URL and time zone, the RECEIVER_POLL_* pacing."""
    registered = PROVIDERS.get(provider)
    if registered is None:
        return {}
    default = Account()
    if registered.default_account is not None:
        default = registered.default_account(settings)
    found: dict[str, Account] = {}
    if _holds_credentials(default):
        found[DEFAULT] = _complete(default, default, settings)
    for name, account in settings.accounts.get(provider, {}).items():
        found[name] = _complete(account, default, settings)
    return found


def names(settings: Settings) -> dict[str, list[str]]:
    """Every account name each provider may have: the closed set /metrics labels come from."""
    providers = {*PROVIDERS, *settings.accounts}
    return {p: [DEFAULT, *settings.accounts.get(p, {})] for p in providers}


def _holds_credentials(account: Account) -> bool:
    return any(
        value is not None
        for value in (
            account.secret,
            account.url_token,
            account.api_username,
            account.api_password,
            account.api_key,
        )
    )


def _complete(account: Account, default: Account, settings: Settings) -> Account:
    # Built once per settings object (see _prepared and polling/poller.py), never per request.
    return account.model_copy(
        update={
            "base_url": account.base_url or default.base_url,
            "time_zone": account.time_zone or default.time_zone,
            "poll_concurrency": account.poll_concurrency or settings.poll_concurrency,
            "poll_rate": account.poll_rate or settings.poll_rate,
            "poll_interval": account.poll_interval
            or default.poll_interval
            or settings.infobip_poll_interval,
        }
    )


def known(settings: Settings, provider: str, name: str) -> bool:
    """Whether the provider has an account of this name (a registration may name one)."""
    return any(p.name == name for p in _prepared(settings, provider))


def polled(settings: Settings) -> list[tuple[Provider, str, Account]]:
    """Every (provider, account name, account) whose messages are polled one by one."""
    return [
        (provider, name, account)
        for provider in PROVIDERS.values()
        if provider.poll is not None
        for name, account in accounts(settings, provider.name).items()
        if account.poll and provider.poll.ready(account)
    ]


def drained(settings: Settings) -> list[tuple[Provider, str, Account]]:
    """Every (provider, account name, account) whose report queues are drained."""
    return [
        (provider, name, account)
        for provider in PROVIDERS.values()
        if provider.drain is not None
        for name, account in accounts(settings, provider.name).items()
        if account.poll and provider.drain.ready(account)
    ]


@dataclass(frozen=True)
class _Prepared:
    """An account as the request path checks it, built once."""

    name: str
    account: Account


# Per Settings object (they are immutable) and provider: its accounts, prepared. Building
# accounts on every request was a tenth of a webhook's cost.
_PREPARED: dict[tuple[int, str], list[_Prepared]] = {}


def _prepared(settings: Settings, provider: str) -> list[_Prepared]:
    key = (id(settings), provider)
    found = _PREPARED.get(key)
    if found is None:
        found = [_Prepared(name, account) for name, account in accounts(settings, provider).items()]
        if not any(k[0] == key[0] for k in _PREPARED):
            weakref.finalize(settings, _forget, key[0])
        _PREPARED[key] = found
    return found


def _forget(settings_id: int) -> None:
    for key in [k for k in _PREPARED if k[0] == settings_id]:
        del _PREPARED[key]


def by_token(settings: Settings, provider: str, token: str) -> str | None:
    """The account whose URL token this is. Every account's token is compared (in constant
    time), so timing does not tell how many there are or which one nearly matched."""
    match = None
    now = datetime.now(UTC)
    for prepared in _prepared(settings, provider):
        account = prepared.account
        if account.url_token is None:
            continue
        if same(account.url_token.get_secret_value(), token) and _live(account, now):
            match = prepared.name
    return match


def verify(
    settings: Settings, provider: str, check: Verifier, headers: Mapping[str, str], body: bytes
) -> tuple[Verification, str | None]:
    """Verify against each live account of the provider; the first that verifies names the
    account. `check` is the provider's verify(account, headers, body)."""
    now: datetime | None = None
    verdict = Verification.NOT_CONFIGURED
    for prepared in _prepared(settings, provider):
        account = prepared.account
        if account.secret is None:
            continue
        if account.until is not None:
            now = now or datetime.now(UTC)
            if not _live(account, now):
                continue
        result = check(account, headers, body)
        if result is Verification.OK:
            return result, prepared.name
        # MISSING wins over BAD only when nothing was ever presented.
        verdict = result if verdict is Verification.NOT_CONFIGURED else verdict
    return verdict, None


def _live(account: Account, now: datetime) -> bool:
    return account.until is None or now < account.until
