"""Fake provider APIs that speak the real wire formats over real HTTP, for the poller's tests:
Messente's omnimessage status, Infobip's once-only report queues, Comapi's message status and
Mercury's dispatches. Failures (429, 5xx, slowness) are queued per provider."""

import asyncio
import base64
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from receiver.providers import infobip
from tests.conftest import MESSENTE_PASSWORD

# Messente signs reports with the API password, so the fake API takes the same one.
MESSENTE_AUTH = ("messente-user", MESSENTE_PASSWORD)
INFOBIP_KEY = "infobip-api-key"
COMAPI_AUTH = ("comapi-user", "comapi-pass")
MERCURY_AUTH = ("mercury-user", "mercury-pass")


@dataclass
class Failure:
    status: int
    retry_after: str | None = None
    delay: float = 0.0


@dataclass
class FakeProviders:
    messente: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    comapi: dict[str, dict[str, Any]] = field(default_factory=dict)
    mercury: dict[str, dict[str, Any]] = field(default_factory=dict)
    infobip: dict[str, deque[dict[str, Any]]] = field(default_factory=lambda: defaultdict(deque))
    failures: dict[str, deque[Failure]] = field(default_factory=lambda: defaultdict(deque))
    delay: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: list[tuple[str, str, float]] = field(default_factory=list)
    failed: list[tuple[str, int, float]] = field(default_factory=list)  # (provider, status, time)
    served: list[str] = field(default_factory=list)  # Infobip messageIds handed out
    refused: set[str] = field(default_factory=set)  # Infobip queues the account may not read
    in_flight: int = 0
    max_in_flight: int = 0
    # The credentials this fake account takes (a second account is a second fake server).
    messente_auth: tuple[str, str] = MESSENTE_AUTH
    infobip_key: str = INFOBIP_KEY
    comapi_auth: tuple[str, str] = COMAPI_AUTH
    mercury_auth: tuple[str, str] = MERCURY_AUTH
    # Requests refused for wrong credentials, as (provider, target).
    unauthorized: list[tuple[str, str]] = field(default_factory=list)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/omnimessage/{id}/status", self._messente)
        for path in infobip.REPORT_PATHS:
            app.router.add_get(path, self._infobip)
        app.router.add_get("/cpaas/messages/{id}", self._comapi)
        app.router.add_get("/api/Dispatches/{id}", self._mercury)
        return app

    def count(self, provider: str, target: str | None = None) -> int:
        return sum(1 for p, t, _ in self.calls if p == provider and target in (None, t))

    async def _enter(self, provider: str, target: str) -> web.Response | None:
        self.calls.append((provider, target, asyncio.get_running_loop().time()))
        if self.delay[provider]:
            await asyncio.sleep(self.delay[provider])
        if self.failures[provider]:
            failure = self.failures[provider].popleft()
            await asyncio.sleep(failure.delay)
            self.failed.append((provider, failure.status, asyncio.get_running_loop().time()))
            headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            return web.json_response(
                {"error": "fake failure"}, status=failure.status, headers=headers
            )
        return None

    @staticmethod
    def _basic_ok(request: web.Request, user: str, password: str) -> bool:
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        return request.headers.get("Authorization") == expected

    async def _messente(self, request: web.Request) -> web.Response:
        if not self._basic_ok(request, *self.messente_auth):
            self.unauthorized.append(("messente", request.match_info["id"]))
            return web.json_response({"errors": [{"code": "103"}]}, status=401)
        omni = request.match_info["id"]
        failed = await self._enter("messente", omni)
        if failed is not None:
            return failed
        if omni not in self.messente:
            return web.json_response(
                {"errors": [{"code": "101", "title": "Not found"}]}, status=404
            )
        return web.json_response(
            {"omnimessage_id": omni, "to": "+3725555555", "statuses": self.messente[omni]}
        )

    async def _infobip(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"App {self.infobip_key}":
            self.unauthorized.append(("infobip", request.path))
            return web.json_response({"requestError": {}}, status=401)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if request.path in self.refused:
                self.calls.append(("infobip", request.path, asyncio.get_running_loop().time()))
                return web.json_response({"requestError": {}}, status=403)
            failed = await self._enter("infobip", request.path)
            if failed is not None:
                return failed
            limit = min(int(request.query.get("limit", "50")), 1000)
            queue = self.infobip[request.path]
            # Once only: what is handed out is gone from the queue.
            batch = [queue.popleft() for _ in range(min(limit, len(queue)))]
            self.served.extend(r["messageId"] for r in batch)
            return web.json_response({"results": batch})
        finally:
            self.in_flight -= 1

    async def _comapi(self, request: web.Request) -> web.Response:
        if not self._basic_ok(request, *self.comapi_auth):
            self.unauthorized.append(("comapi", request.match_info["id"]))
            return web.json_response({}, status=401)
        message_id = request.match_info["id"]
        failed = await self._enter("comapi", message_id)
        if failed is not None:
            return failed
        if message_id not in self.comapi:
            return web.json_response({}, status=404)
        return web.json_response(self.comapi[message_id])

    async def _mercury(self, request: web.Request) -> web.Response:
        if not self._basic_ok(request, *self.mercury_auth):
            self.unauthorized.append(("mercury", request.match_info["id"]))
            return web.json_response({"error": "unauthorized", "errorCode": 401}, status=401)
        dispatch = request.match_info["id"]
        failed = await self._enter("mercury", dispatch)
        if failed is not None:
            return failed
        if dispatch not in self.mercury:
            return web.json_response({"error": "not found", "errorCode": 404}, status=404)
        return web.json_response(self.mercury[dispatch])


def infobip_report(message_id: str, group: int = 3, status_id: int = 5) -> dict[str, Any]:
    return {
        "bulkId": "poll-bulk",
        "messageId": message_id,
        "to": "385981178000",
        "sentAt": "2024-03-01T09:00:01.104+0000",
        "doneAt": "2024-03-01T09:00:07.880+0000",
        "smsCount": 1,
        "status": {"groupId": group, "id": status_id, "name": "DELIVERED_TO_HANDSET"},
        "error": {"groupId": 0, "id": 0, "name": "NO_ERROR", "permanent": False},
    }


def infobip_messages_api_report(message_id: str, channel: str = "WHATSAPP") -> dict[str, Any]:
    """A delivery report as the Messages API queue gives it: destination, not to."""
    return {
        "event": "DELIVERY",
        "channel": channel,
        "sender": "447860099299",
        "destination": "385981178000",
        "sentAt": "2024-03-01T09:00:01.104+0000",
        "doneAt": "2024-03-01T09:00:07.880+0000",
        "bulkId": "poll-bulk",
        "messageId": message_id,
        "messageCount": 1,
        "status": {"groupId": 3, "groupName": "DELIVERED", "id": 5, "name": "DELIVERED_TO_HANDSET"},
        "error": {"groupId": 0, "groupName": "OK", "id": 0, "name": "NO_ERROR", "permanent": False},
    }
