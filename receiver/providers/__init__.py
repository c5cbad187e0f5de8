"""The provider registry: one module per provider, one line here each."""

import re

from receiver.providers import comapi, infobip, mercury, messente
from receiver.providers.base import Provider

PROVIDERS: dict[str, Provider] = {}

# A provider's name is a path segment (/webhooks/{provider}) and a key in RECEIVER_ACCOUNTS.
_NAME = re.compile(r"[a-z][a-z0-9_]{0,49}")


def register(provider: Provider) -> None:
    """Make a provider known to the routes, the poller and the settings. Everything else
    follows from its capabilities: nothing else names it."""
    if not _NAME.fullmatch(provider.name):
        raise ValueError(f"a provider name must match {_NAME.pattern}: {provider.name!r}")
    if provider.name in PROVIDERS:
        raise ValueError(f"provider {provider.name!r} is registered already")
    PROVIDERS[provider.name] = provider


for _provider in (messente.PROVIDER, infobip.PROVIDER, comapi.PROVIDER, mercury.PROVIDER):
    register(_provider)
