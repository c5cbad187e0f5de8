"""The console end to end in a real headless browser (Debian's chromium, driven by
playwright): sign in, find a message by a number written otherwise than the provider wrote
it, read a failover, replay a dead letter, sign out. Each page is saved as a screenshot under
artifacts/screenshots/ (CI keeps that folder)."""

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import AiohttpClient, eventually, make_client
from tests.console_support import OMNI, Client, console_settings, failover_message
from tests.integration.test_forwarding import Subscriber, serve_subscriber, subscribe

playwright_api = pytest.importorskip("playwright.async_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on this machine (Debian: apt-get install chromium; .ci/run does it)",
)


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    assert CHROMIUM is not None
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = await browser.new_context(viewport={"width": 800, "height": 900})
        yield await context.new_page()
        await browser.close()


@pytest.fixture
async def subscriber(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Subscriber:
    return await serve_subscriber(aiohttp_server)


@pytest.fixture
async def console(database_url: str, aiohttp_client: AiohttpClient) -> Client:
    client: Client = await make_client(aiohttp_client, console_settings(database_url))
    return client


async def shot(page: Any, name: str, full_page: bool = True) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=full_page)


async def test_a_support_person_answers_did_my_sms_arrive_and_was_the_crm_told(
    console: Client, subscriber: Subscriber, db: asyncpg.Connection, page: Any
) -> None:
    # The CRM's endpoint fails every attempt: its one delivery becomes a dead letter.
    subscriber.plan.extend([500] * 4)
    await subscribe(console, subscriber.url, description="CRM", statuses=["delivered"])
    await failover_message(console)

    async def dead() -> bool:
        return bool(await db.fetchval("select count(*) from deliveries where state = 'dead'"))

    await eventually(dead)
    base = str(console.make_url("/console")).rstrip("/")

    # Any page sends a stranger to the sign-in form first.
    await page.goto(f"{base}/messages")
    assert "/console/login" in page.url
    await shot(page, "01-sign-in")
    await page.get_by_label("API token").fill("not-a-token")
    await page.get_by_role("button", name="Sign in").click()
    assert await page.get_by_role("alert").inner_text() == "That token is not one of ours."
    await page.get_by_label("API token").fill("test-token")
    await page.get_by_label("API token").press("Enter")  # the keyboard alone signs in
    await page.wait_for_url(f"{base}/messages")

    # Messente wrote 37255555555; the caller says "+372 5555 5555".
    await page.get_by_label("Phone number or address").fill("+372 5555 5555")
    await page.get_by_role("button", name="Search").click()
    await page.wait_for_url("**/console/messages?**")
    result = page.get_by_role("link", name=f"messente {OMNI}")
    assert await result.count() == 1
    await shot(page, "02-search")
    await result.click()

    # The failover at a glance: viber expired, then sms delivered.
    await page.wait_for_url(f"**/console/messages/messente/{OMNI}")
    lanes = await page.locator("h3.lane-name").all_inner_texts()
    assert lanes == ["viber viber-1: expired", "sms sms-1: delivered"]
    assert await page.locator("svg.chart circle").count() == 4
    assert "Sending message expired" in await page.content()
    # ...and the CRM was not told: its delivery is dead.
    crm = page.get_by_role("row").filter(has_text="CRM")
    assert "dead" in await crm.inner_text()
    await shot(page, "03-message")

    await page.get_by_role("link", name=OMNI).first.click()  # the group
    await page.wait_for_url(f"**/console/groups/messente/{OMNI}")
    assert "delivered: 1" in await page.locator("ul.legend").inner_text()
    await shot(page, "04-group")

    # The CRM is well again: replay its dead letter from the subscription's page.
    await page.goto(f"{base}/subscriptions")
    await shot(page, "05-subscriptions")
    await page.get_by_role("link", name="CRM").click()
    await page.get_by_role("link", name="dead letters").click()
    await page.get_by_role("button", name=f"Replay the delivery of {OMNI} #").first.click()
    assert "replayed 1 delivery" in await page.get_by_role("status").inner_text()

    async def delivered() -> bool:
        return bool(await db.fetchval("select state = 'delivered' from deliveries"))

    await eventually(delivered)
    await page.goto(f"{base}/messages/messente/{OMNI}")
    assert "delivered" in await page.get_by_role("row").filter(has_text="CRM").inner_text()
    await shot(page, "06-message-told")
    await shot(page, "06-message-told-top", full_page=False)  # small enough for the README

    await page.goto(base)
    assert await page.locator("svg.chart").count() >= 3
    await shot(page, "07-dashboard")

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/console/login")
    await page.goto(f"{base}/messages/messente/{OMNI}")
    assert "/console/login" in page.url  # the session is gone


async def test_the_console_fits_a_phone_screen(console: Client, page: Any) -> None:
    await failover_message(console)
    await page.set_viewport_size({"width": 390, "height": 844})
    base = str(console.make_url("/console")).rstrip("/")
    await page.goto(f"{base}/login?next=/console/messages/messente/{OMNI}")
    await page.get_by_label("API token").fill("test-token")
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"**/console/messages/messente/{OMNI}")
    # Nothing wider than the screen: long tables scroll inside their own box.
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    await shot(page, "08-message-phone")
