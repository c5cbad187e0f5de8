"""Provider side: `POST /webhooks/{provider}`. Verify the raw bytes, parse, journal, answer."""

from datetime import UTC, datetime

import pydantic_core
import structlog
from aiohttp import hdrs, web

from receiver import accounts
from receiver.http import views
from receiver.http.edge import LOG_FACTS
from receiver.http.errors import ApiError, read_body
from receiver.http.keys import JOURNAL, SETTINGS
from receiver.http.openapi import Operation, documented
from receiver.providers import PROVIDERS
from receiver.providers.base import Provider, Push, Verification
from receiver.reports import InvalidReport, Receipt

log = structlog.get_logger()


def _pushing_provider(request: web.Request) -> tuple[Provider, Push]:
    provider = PROVIDERS.get(request.match_info["provider"])
    if provider is None or provider.push is None:
        raise ApiError(404, "unknown_provider", "no webhook for this provider")
    return provider, provider.push


@documented(
    Operation(
        "A provider's delivery reports, verified its own way (no bearer token)",
        {200: views.WebhookAccepted},
        {
            400: "invalid_report: unreadable, the raw body kept (see receipt_id)",
            401: "invalid_signature, invalid_token, webhook_not_configured",
            404: "unknown_provider",
        },
        raw_body=("application/json", "application/xml"),
        description="Messente: X-Messente-Signature; Infobip: HTTP Basic; Comapi: "
        "X-Comapi-Signature; or a URL token at /webhooks/{provider}/{token}. 200 once "
        "journaled: the reports show in lookups a moment later.",
    )
)
async def receive(request: web.Request) -> web.Response:
    provider, push = _pushing_provider(request)
    settings = request.app[SETTINGS]
    body = await read_body(request)

    token = request.match_info.get("token")
    if token is not None:
        # A per-request URL (Infobip notifyUrl, Messente dlr_url) carries no credentials: the
        # unguessable token in the path is the authentication. Never logged (edge.py).
        account = accounts.by_token(settings, provider.name, token)
        if account is None:
            log.warning("webhook.unverified", provider=provider.name, verdict="bad_token")
            raise ApiError(401, "invalid_token", "unknown webhook URL token")
        verdict = Verification.OK
    else:
        verdict, account = accounts.verify(
            settings, provider.name, push.verify, request.headers, body
        )
    if verdict is Verification.NOT_CONFIGURED and provider.name not in settings.insecure_webhooks:
        log.warning("webhook.not_configured", provider=provider.name)
        raise ApiError(
            401,
            "webhook_not_configured",
            f"no verification secret is configured for {provider.name}",
        )
    if verdict in (Verification.MISSING, Verification.BAD):
        log.warning("webhook.unverified", provider=provider.name, verdict=verdict.value)
        raise ApiError(401, "invalid_signature", f"signature {verdict.value}")

    content_type = request.headers.get(hdrs.CONTENT_TYPE)
    journal = request.app[JOURNAL]
    try:
        # A batch provider's body is only checked here and parsed in the projector, once:
        # what it costs to validate every report of a batch waits until after the answer.
        count = push.check(body, content_type) if push.check else None
        parsed = None if count is not None else push.parse(body, content_type, now())
    except InvalidReport as exc:
        # Authenticated but unreadable: keep the raw body, so a parser fix can still recover it.
        receipt = Receipt(
            provider.name, "webhook", body, content_type, problem=str(exc), account=account
        )
        await journal.append(receipt, [])
        request[LOG_FACTS] = {"provider": provider.name, "account": account}
        log.warning("webhook.invalid", provider=provider.name, problem=str(exc))
        raise ApiError(
            400, "invalid_report", str(exc), extra={"receipt_id": str(receipt.id)}
        ) from exc

    # Committed to the journal is acknowledged: the timeline follows a moment later.
    if parsed is None:
        assert count is not None
        receipt = Receipt(provider.name, "webhook", body, content_type, account=account)
        await journal.append_unparsed(receipt, count)
        problems: list[str] = []  # found by the projector, kept on the receipt
    else:
        receipt = Receipt(
            provider.name, "webhook", body, content_type, problem=parsed.problem, account=account
        )
        await journal.append(receipt, parsed.updates)
        count, problems = len(parsed.updates), parsed.problems
    # Facts for the request's one log line (written by the edge middleware).
    request[LOG_FACTS] = {
        "provider": provider.name,
        "account": account,
        "reports": count,
        "problems": len(problems),
    }
    # Strings and numbers only: encoded in one pass by pydantic-core, not json.dumps. The
    # shape is views.WebhookAccepted (the document's); a model per request would cost the
    # acknowledgement path, so tests hold the two together.
    answer = {"receipt_id": str(receipt.id), "reports": count, "problems": problems}
    return web.Response(
        body=pydantic_core.to_json(answer), content_type="application/json", charset="utf-8"
    )


def now() -> datetime:
    return datetime.now(UTC)
