"""Provider accounts: several per provider, each with its own webhook credentials, an
optional expiry (rotation with a grace period) and an optional URL token."""

from collections.abc import Mapping
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


def as_settings(settings: Settings, provider: str, account: Account) -> Settings:
    """The settings a provider's verify() reads, holding this account's credentials."""
    secret_field, user_field = _SECRET_FIELDS[provider]
    update: dict[str, object] = {secret_field: account.secret}
    if user_field:
        update[user_field] = account.username
    return settings.model_copy(update=update)


def by_token(settings: Settings, provider: str, token: str) -> str | None:
    """The account whose URL token this is. Every account's token is compared (in constant
    time), so timing does not tell how many there are or which one nearly matched."""
    match = None
    now = datetime.now(UTC)
    for name, account in accounts(settings, provider).items():
        if account.url_token is None:
            continue
        if same(account.url_token.get_secret_value(), token) and _live(account, now):
            match = name
    return match


def verify(
    settings: Settings, provider: str, check: Verifier, headers: Mapping[str, str], body: bytes
) -> tuple[Verification, str | None]:
    """Verify against each live account of the provider; the first that verifies names the
    account. `check` is the provider's verify(settings, headers, body)."""
    if provider not in _SECRET_FIELDS:
        return Verification.NOT_CONFIGURED, None
    now = datetime.now(UTC)
    verdict = Verification.NOT_CONFIGURED
    for name, account in accounts(settings, provider).items():
        if account.secret is None or not _live(account, now):
            continue
        result = check(as_settings(settings, provider, account), headers, body)
        if result is Verification.OK:
            return result, name
        # MISSING wins over BAD only when nothing was ever presented.
        verdict = result if verdict is Verification.NOT_CONFIGURED else verdict
    return verdict, None


def _live(account: Account, now: datetime) -> bool:
    return account.until is None or now < account.until
