"""The provider registry: one module per provider, one line here each."""

from receiver.providers import comapi, infobip, mercury, messente
from receiver.providers.base import Provider

PROVIDERS: dict[str, Provider] = {
    p.name: p for p in (messente.PROVIDER, infobip.PROVIDER, comapi.PROVIDER, mercury.PROVIDER)
}
