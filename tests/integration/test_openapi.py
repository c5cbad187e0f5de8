"""/openapi.json and /docs: every route described, the document valid OpenAPI 3.1, the live app
answering as it says (schemathesis over real HTTP), and the forwarded payload its webhook."""

import asyncio
import json
from typing import Any

import hypothesis
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from standardwebhooks import Webhook

from receiver.http import views
from receiver.http.openapi import in_document, operation_of
from receiver.providers import messente
from tests.conftest import API_TOKEN, AUTH, MESSENTE_PASSWORD, eventually
from tests.integration.test_forwarding import Client, Subscriber, report, subscribe
from tests.integration.test_forwarding import fclient as fclient
from tests.integration.test_forwarding import subscriber as subscriber

# Small on purpose: 25 operations, a few cases each, well under a minute on two cores.
_EXAMPLES = 6
# What the document promises. Not positive_data_acceptance: the API refuses some input the
# schema cannot rule out (a cursor it did not give out, an unknown provider name), with a 400.
_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


async def test_every_route_is_described(client: Client) -> None:
    undescribed = [
        f"{route.method} {route.resource.canonical}"
        for route in client.app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        and in_document(route.resource.canonical)
        and operation_of(route.handler) is None
    ]
    assert undescribed == []
    doc = await (await client.get("/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routes = {
        (r.method, r.resource.canonical)
        for r in client.app.router.routes()
        if r.method != "HEAD" and r.resource is not None and in_document(r.resource.canonical)
    }
    assert described == routes
    # /v1 says what it needs; every error is the one error shape.
    search = doc["paths"]["/v1/messages"]["get"]
    assert search["security"] == [{"bearer": []}]
    assert {"401", "403", "400", "503"} <= set(search["responses"])
    error = search["responses"]["400"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/Error"}
    assert {p["name"] for p in search["parameters"]} >= {"recipient", "cursor", "limit"}
    hook = doc["webhooks"]["message.status"]["post"]["requestBody"]["content"]
    assert hook["application/json"]["schema"] == {"$ref": "#/components/schemas/StatusChange"}


async def test_docs_page_is_self_contained_and_lists_every_endpoint(client: Client) -> None:
    resp = await client.get("/docs")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    doc = await (await client.get("/openapi.json")).json()
    for path in doc["paths"]:
        assert f"<code>{path}</code>" in page
    # Offline and under any content security policy: nothing loaded from anywhere.
    assert "<script" not in page
    assert "src=" not in page
    assert "http://" not in page
    assert "https://" not in page
    assert "id=schema-StatusChange" in page


async def test_a_forwarded_payload_and_a_webhook_answer_match_the_document(
    fclient: Client, subscriber: Subscriber
) -> None:
    sub = await subscribe(fclient, subscriber.url)
    await report(fclient, "omni-doc", "DELIVRD")
    # The webhook answer is built without a model (the acknowledgement path): it must still
    # be the documented one, also for a report that could not be read.
    statuses = []
    for body in (b'{"omnimessage_id": "omni-doc", "status": "DELIVRD"}', b'{"no": "report"}'):
        headers = {"X-Messente-Signature": messente.sign(MESSENTE_PASSWORD, body)}
        resp = await fclient.post("/webhooks/messente", data=body, headers=headers)
        statuses.append(resp.status)
        if resp.status == 200:
            views.WebhookAccepted.model_validate(await resp.json())
        else:
            assert resp.status == 400
            error = views.Error.model_validate(await resp.json())
            assert error.error.receipt_id is not None
    assert statuses == [200, 400]
    await eventually(lambda: _got(subscriber))
    headers, body, _ = subscriber.received[0]
    Webhook(sub["secret"]).verify(body, headers)
    change = views.StatusChange.model_validate_json(body)
    assert change.data.message_id == "omni-doc"
    assert change.data.event is not None
    assert change.data.event.channel_message_id == "omni-doc-sms"
    # The same change as the API keeps it, read through its model (extra fields refused).
    page = await (
        await fclient.get(f"/v1/subscriptions/{sub['id']}/deliveries", headers=AUTH)
    ).json()
    (delivery,) = page["deliveries"]
    resp = await fclient.get(
        f"/v1/subscriptions/{sub['id']}/deliveries/{delivery['id']}", headers=AUTH
    )
    assert resp.status == 200
    detail = views.DeliveryDetail.model_validate(await resp.json())
    assert detail.payload.id == change.id


async def _got(hook: Subscriber) -> bool:
    return bool(hook.received)


def _run_schemathesis(base_url: str, doc: dict[str, Any]) -> list[str]:
    """Every operation, a few generated cases each, over real HTTP: no 5xx, and every answer
    (status, content type, body, headers) as the document says."""
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            failures.append(f"not an operation: {result.err()}")
            continue
        operation = result.ok()

        @hypothesis.settings(
            max_examples=_EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy())
        def check(case: Any) -> None:
            case.call_and_validate(
                base_url=base_url,
                headers={"Authorization": f"Bearer {API_TOKEN}"},
                checks=_CHECKS,
            )

        try:
            check()
        except Exception as exc:
            failures.append(f"{operation.label}: {exc}")
    return failures


async def test_the_live_app_answers_as_its_document_says(
    fclient: Client, subscriber: Subscriber
) -> None:
    # Something to find: a message, a subscription, a delivery.
    await subscribe(fclient, subscriber.url)
    await report(fclient, "omni-st", "DELIVRD")
    doc = await (await fclient.get("/openapi.json")).json()
    base_url = str(fclient.make_url("")).rstrip("/")
    failures = await asyncio.to_thread(_run_schemathesis, base_url, doc)
    assert failures == [], "\n\n".join(failures)


async def test_the_document_is_json_and_stable(client: Client) -> None:
    first = await (await client.get("/openapi.json")).read()
    second = await (await client.get("/openapi.json")).read()
    assert first == second
    assert json.loads(first)["info"]["title"] == "dlr-receiver"
