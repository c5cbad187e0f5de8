"""What handlers read from a request beside its body: the provider its path names, and a
query checked against its model."""

from collections.abc import Mapping
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from receiver.http.errors import ApiError
from receiver.providers import PROVIDERS
from receiver.providers.base import Provider, describe

_Q = TypeVar("_Q", bound=BaseModel)


def provider_of(request: web.Request) -> Provider:
    provider = PROVIDERS.get(request.match_info["provider"])
    if provider is None:
        known = ", ".join(sorted(PROVIDERS))
        raise ApiError(404, "unknown_provider", f"unknown provider; known: {known}")
    return provider


UNKNOWN_PROVIDER = {404: "unknown_provider"}


def query(request: web.Request, model: type[_Q]) -> _Q:
    return validated(request.query, model)


def validated(params: Mapping[str, str], model: type[_Q]) -> _Q:
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        raise ApiError(400, "invalid_query", describe(exc)) from exc
