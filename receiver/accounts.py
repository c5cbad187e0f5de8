"""Provider accounts: several per provider, each with its own webhook credentials, an
optional expiry (rotation with a grace period) and an optional URL token."""

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from receiver.providers.base import Verification, Verifier, same
from receiver.settings import Account, Settings

DEFAULT = "default"


# Which setting of the default account each provider's verification reads.
_SECRET_FIELDS = {
    "messente": ("messente_api_password", None),
    "infobip": ("infobip_webhook_password", "infobip_webhook_username"),
    "comapi": ("comapi_webhook_secret", None),
}


def accounts(settings: Settings, provider: str) -> dict[str, Account]:
    """The provider's accounts: the default one (today's RECEIVER_<PROVIDER>_* variables,
    if set) first, then those of RECEIVER_ACCOUNTS."""
    found: dict[str, Account] = {}
    fields = _SECRET_FIELDS.get(provider)
    if fields is not None:
        secret = getattr(settings, fields[0])
        username = getattr(settings, fields[1]) if fields[1] else None
        if secret is not None:
            found[DEFAULT] = Account(secret=secret, username=username)
    found.update(settings.accounts.get(provider, {}))
    return found


def names(settings: Settings) -> dict[str, list[str]]:
    """Every account name each provider may have: the closed set /metrics labels come from."""
    providers = {*_SECRET_FIELDS, *settings.accounts}
    return {p: [DEFAULT, *settings.accounts.get(p, {})] for p in providers}


def as_settings(settings: Settings, provider: str, account: Account) -> Settings:
    """The settings a provider's verify() reads, holding this account's credentials."""
    secret_field, user_field = _SECRET_FIELDS[provider]
    update: dict[str, object] = {secret_field: account.secret}
    if user_field:
        update[user_field] = account.username
    return settings.model_copy(update=update)


@dataclass(frozen=True)
class _Prepared:
    """An account as the request path checks it: its verify() settings built once."""

    name: str
    account: Account
    settings: Settings  # what the provider's verify() reads, with this account's secret


# Per Settings object (they are immutable) and provider: its accounts, prepared. Building
# accounts and copying the settings on every request was a tenth of a webhook's cost.
_PREPARED: dict[tuple[int, str], list[_Prepared]] = {}


def _prepared(settings: Settings, provider: str) -> list[_Prepared]:
    key = (id(settings), provider)
    found = _PREPARED.get(key)
    if found is None:
        found = [
            _Prepared(
                name,
                account,
                # The default account is the settings themselves: no copy.
                settings
                if name == DEFAULT or provider not in _SECRET_FIELDS
                else as_settings(settings, provider, account),
            )
            for name, account in accounts(settings, provider).items()
        ]
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
    account. `check` is the provider's verify(settings, headers, body)."""
    if provider not in _SECRET_FIELDS:
        return Verification.NOT_CONFIGURED, None
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
        result = check(prepared.settings, headers, body)
        if result is Verification.OK:
            return result, prepared.name
        # MISSING wins over BAD only when nothing was ever presented.
        verdict = result if verdict is Verification.NOT_CONFIGURED else verdict
    return verdict, None


def _live(account: Account, now: datetime) -> bool:
    return account.until is None or now < account.until
