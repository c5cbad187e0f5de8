"""The OpenAPI 3.1 document at /openapi.json, built from the route table and the pydantic
models each handler is described with (`@documented`), and /docs, the same rendered as HTML.

A route is in the document by being described: a handler carries its query, body and answer
models, and the generator walks the app's routes. A route left undescribed is a failing test
(tests/integration/test_openapi.py), not a silent gap. The console's pages (/console: HTML
for people, a session cookie and CSRF rather than a bearer token) are not the API and not in
the document; they answer from the same view models."""

import json
import re
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from receiver.http import apidocs, views
from receiver.http.auth import needed_scope

_REF = "#/components/schemas/{model}"


@dataclass(frozen=True)
class Operation:
    summary: str
    # Status -> the model answered, or a media type for an answer that is not JSON, or None
    # for no body.
    answers: Mapping[int, type[BaseModel] | str | None]
    # Status -> when that error is answered (each with the Error body).
    errors: Mapping[int, str] = field(default_factory=dict)
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    # A body the provider defines (webhooks): any JSON, or these media types.
    raw_body: tuple[str, ...] = ()
    description: str = ""


_H = TypeVar("_H", bound=Callable[..., Any])
_OPERATIONS: dict[Callable[..., Any], Operation] = {}


def documented(operation: Operation) -> Callable[[_H], _H]:
    def mark(handler: _H) -> _H:
        _OPERATIONS[handler] = operation
        return handler

    return mark


def operation_of(handler: Callable[..., Any]) -> Operation | None:
    return _OPERATIONS.get(handler)


# Paths under these are not the API (see the module's docstring).
_NOT_API = ("/console",)


def in_document(path: str) -> bool:
    """Whether a route of this path belongs in the document (every one but the console's)."""
    return not any(path == p or path.startswith(p + "/") for p in _NOT_API)


# Answered by the edge for any route: NUL in the URL (400), and the database being out (503).
_EVERYWHERE = {
    400: "bad_request: NUL (%00) in the URL, or the route's own input errors",
    503: "database_unavailable: retry later (Retry-After)",
}
_WITH_BODY = {413: "body_too_large: larger than RECEIVER_MAX_BODY_BYTES"}
_V1 = {
    401: "unauthorized: no valid bearer token",
    403: "forbidden: the token lacks the route's scope",
}


def document(app: web.Application) -> dict[str, Any]:
    described = [
        (route.method, route.resource.canonical, op)
        for route in app.router.routes()
        if route.resource is not None
        and route.method != "HEAD"
        and in_document(route.resource.canonical)
        and (op := operation_of(route.handler)) is not None
    ]
    output: set[type[BaseModel]] = {views.Error, views.StatusChange}
    inputs: set[type[BaseModel]] = set()
    for _, _, op in described:
        output |= {m for m in op.answers.values() if isinstance(m, type)}
        if op.body is not None:
            inputs.add(op.body)
    keys, schemas = models_json_schema(
        [(m, "serialization") for m in sorted(output, key=lambda m: m.__name__)]
        + [(m, "validation") for m in sorted(inputs, key=lambda m: m.__name__)],
        ref_template=_REF,
    )
    refs: dict[type[BaseModel], str] = {
        model: schema["$ref"]
        for (model, _), schema in keys.items()
        if isinstance(model, type) and issubclass(model, BaseModel)
    }
    schemas, refs = _public_names(schemas, refs)
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op in described:
        paths.setdefault(path, {})[method.lower()] = _operation(method, path, op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dlr-receiver",
            "version": "1",
            "description": (
                "Delivery reports from messaging providers, one status model, message "
                "timelines, and status changes forwarded to subscribers."
            ),
        },
        "paths": dict(sorted(paths.items())),
        "webhooks": {
            "message.status": {
                "post": {
                    "summary": "A message's status changed (Standard Webhooks signed)",
                    "parameters": [
                        _header(
                            "webhook-id", "the event id, the same on every retry: drop repeats"
                        ),
                        _header("webhook-timestamp", "Unix seconds"),
                        _header("webhook-signature", "v1,<base64 HMAC-SHA256>, space-separated"),
                    ],
                    "requestBody": _json_body(refs[views.StatusChange], required=True),
                    "responses": {
                        "2XX": {"description": "accepted"},
                        "410": {"description": "stop: the subscription is disabled"},
                    },
                }
            }
        },
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _public_names(
    schemas: dict[str, Any], refs: dict[type[BaseModel], str]
) -> tuple[dict[str, Any], dict[type[BaseModel], str]]:
    """Request models are private to their handler module (`_Fields`); the document names
    them without the underscore, where that name is free."""
    defs = schemas.get("$defs", {})
    text = json.dumps(schemas)
    for name in [n for n in defs if n.startswith("_") and n.lstrip("_") not in defs]:
        old, new = _REF.format(model=name), _REF.format(model=name.lstrip("_"))
        text = text.replace(f'"{old}"', f'"{new}"').replace(f'"{name}":', f'"{name.lstrip("_")}":')
        refs = {model: new if ref == old else ref for model, ref in refs.items()}
    return json.loads(text), refs


def _operation(
    method: str, path: str, op: Operation, refs: Mapping[type[BaseModel], str]
) -> dict[str, Any]:
    out: dict[str, Any] = {"summary": op.summary, "operationId": _operation_id(method, path)}
    if op.description:
        out["description"] = op.description
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", path)
    ]
    if op.query is not None:
        schema = op.query.model_json_schema()
        required = set(schema.get("required", ()))
        for name, prop in schema.get("properties", {}).items():
            prop.pop("title", None)
            param = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if "description" in prop:
                param["description"] = prop["description"]
            parameters.append(param)
    if parameters:
        out["parameters"] = parameters
    errors = dict(_EVERYWHERE)
    if op.body is not None or op.raw_body:
        errors |= _WITH_BODY
    if path.startswith("/v1/"):
        errors |= _V1
        scope = needed_scope(method, path)
        out["security"] = [{"bearer": []}]
        out["description"] = f"{op.description}\n\nScope: `{scope}`.".strip()
    if op.body is not None:
        out["requestBody"] = _json_body(refs[op.body], required=method != "PATCH")
    elif op.raw_body:
        out["requestBody"] = {
            "required": True,
            "content": {media: {"schema": {}} for media in op.raw_body},
        }
    responses: dict[str, Any] = {}
    for status, answer in sorted(op.answers.items()):
        responses[str(status)] = _answer(answer, refs)
    for status, when in sorted((errors | dict(op.errors)).items()):
        responses[str(status)] = {
            "description": when,
            "content": {"application/json": {"schema": {"$ref": refs[views.Error]}}},
        }
    out["responses"] = responses
    return out


def _answer(
    answer: type[BaseModel] | str | None, refs: Mapping[type[BaseModel], str]
) -> dict[str, Any]:
    if answer is None:
        return {"description": "no body"}
    if isinstance(answer, str):
        return {"description": answer, "content": {answer: {"schema": {}}}}
    return {
        "description": (answer.__doc__ or answer.__name__).strip().splitlines()[0],
        "content": {"application/json": {"schema": {"$ref": refs[answer]}}},
    }


def _json_body(ref: str, *, required: bool) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": {"$ref": ref}}}}


def _header(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _operation_id(method: str, path: str) -> str:
    words = re.sub(r"[{}]", "", path).strip("/").replace("/", "_").replace("-", "_")
    return f"{method.lower()}_{words or 'root'}"


# Built once per app, on first asked: the route table does not change after start.
_BUILT: "weakref.WeakKeyDictionary[web.Application, tuple[bytes, str]]" = (
    weakref.WeakKeyDictionary()
)


def _built(app: web.Application) -> tuple[bytes, str]:
    built = _BUILT.get(app)
    if built is None:
        doc = document(app)
        built = json.dumps(doc, indent=1).encode(), apidocs.render(doc)
        _BUILT[app] = built
    return built


@documented(Operation("This document (OpenAPI 3.1)", {200: "application/json"}))
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=_built(request.app)[0], content_type="application/json")


@documented(Operation("This document as an HTML page", {200: "text/html"}))
async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=_built(request.app)[1], content_type="text/html", charset="utf-8")
