from typing import Any

from aiohttp.test_utils import TestClient


async def test_health_answers_ok(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok"}
