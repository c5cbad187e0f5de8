"""A client that goes away in the middle of its body: the client's doing, not an outage."""

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from receiver.http.app import create_app
from receiver.settings import Settings
from tests.conftest import AUTH, eventually, free_port


@pytest.fixture
async def port(settings: Settings) -> AsyncIterator[int]:
    """The app served as `serve` serves it (web.run_app's runner: a handler is not cancelled
    when its client goes, it sees the connection reset), not as aiohttp's test server."""
    runner = web.AppRunner(create_app(settings), access_log=None, handler_cancellation=False)
    await runner.setup()
    chosen = free_port()
    await web.TCPSite(runner, "127.0.0.1", chosen).start()
    yield chosen
    await runner.cleanup()


async def send_half_and_close(port: int, path: str, headers: str = "") -> None:
    """Headers promising 2,000 bytes, then 1,000 of them, then the connection closed."""
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"{headers}Content-Length: 2000\r\n\r\n"
    )
    writer.write(head.encode() + b'{"results": [' + b" " * 987)
    await writer.drain()
    await asyncio.sleep(0.1)  # the handler is reading the body by now
    writer.close()
    await writer.wait_closed()


async def test_a_client_that_disconnects_mid_body_is_logged_as_such_not_as_an_outage(
    port: int,
) -> None:
    bearer = f"Authorization: {AUTH['Authorization']}\r\n"
    with capture_logs() as logs:
        await send_half_and_close(port, "/webhooks/infobip")
        await send_half_and_close(port, "/webhooks/messente")
        await send_half_and_close(port, "/v1/messages/infobip", bearer)
        await send_half_and_close(port, "/v1/subscriptions", bearer)

        async def all_logged() -> bool:
            return len([e for e in logs if e["event"] == "http.request"]) == 4

        await eventually(all_logged, within=5)

    assert "database.unavailable" not in [e["event"] for e in logs]
    assert not [e for e in logs if e["log_level"] in ("warning", "error")], logs
    gone = [e for e in logs if e["event"] == "http.client_disconnected"]
    assert len(gone) == 4
    assert {e["log_level"] for e in gone} == {"info"}
    assert {e["status"] for e in logs if e["event"] == "http.request"} == {499}
    # Counted apart from what a provider was answered: no 503 (the outage answer).
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as resp,
    ):
        metrics = await resp.text()
    webhook_lines = [line for line in metrics.splitlines() if "dlr_webhook_requests" in line]
    assert not [line for line in webhook_lines if 'status="503"' in line], webhook_lines
    assert len([line for line in webhook_lines if 'status="499"' in line]) == 2
