"""The console over real HTTP and a real Postgres: sign-in and its cookie, no page without a
session, CSRF on every button, scopes as the API has them, markup from a report shown as
text, and hostile input answered with a page, never a 500."""

import asyncio
import html
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from receiver.console import session
from tests.conftest import API_TOKEN, AUTH, AiohttpClient, eventually, make_client, projected
from tests.console_support import (
    OMNI,
    READER,
    WRITER,
    Client,
    console_settings,
    csrf_of,
    failover_message,
    messente_report,
    plain_settings,
    sign_in,
)
from tests.integration.test_forwarding import Subscriber, serve_subscriber, subscribe


@pytest.fixture
async def console(database_url: str, aiohttp_client: AiohttpClient) -> Client:
    client: Client = await make_client(aiohttp_client, plain_settings(database_url))
    return client


# Every page and fragment, and every button, of the console.
PAGES = [
    "/console",
    "/console/messages",
    "/console/messages?recipient=%2B37255555555",
    "/console/messages/messente/omni-1",
    "/console/groups/messente/omni-1",
    "/console/receipts/00000000-0000-0000-0000-000000000000",
    "/console/problems",
    "/console/subscriptions",
    "/console/subscriptions/00000000-0000-0000-0000-000000000000",
    "/console/subscriptions/00000000-0000-0000-0000-000000000000/deliveries/"
    "00000000-0000-0000-0000-000000000000",
]
BUTTONS = [
    "/console/logout",
    "/console/subscriptions/00000000-0000-0000-0000-000000000000/enabled",
    "/console/subscriptions/00000000-0000-0000-0000-000000000000/rotate-secret",
    "/console/subscriptions/00000000-0000-0000-0000-000000000000/replay",
    "/console/subscriptions/00000000-0000-0000-0000-000000000000/deliveries/"
    "00000000-0000-0000-0000-000000000000/replay",
]


@pytest.mark.parametrize("path", PAGES)
async def test_no_page_is_reachable_without_a_session(console: Client, path: str) -> None:
    resp = await console.get(path, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"].startswith("/console/login?next=")


@pytest.mark.parametrize("path", BUTTONS)
async def test_no_button_works_without_a_session(console: Client, path: str) -> None:
    resp = await console.post(path, data={"csrf": "x"}, allow_redirects=False)
    assert resp.status == 401


async def test_a_bearer_token_alone_opens_no_console_page(console: Client) -> None:
    resp = await console.get("/console", headers=AUTH, allow_redirects=False)
    assert resp.status == 303


async def test_sign_in_sets_a_strict_http_only_cookie_for_the_console_only(
    console: Client,
) -> None:
    form = await console.get("/console/login")
    resp = await console.post(
        "/console/login",
        data={"csrf": csrf_of(await form.text()), "token": API_TOKEN, "next": "/console"},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert resp.headers["Location"] == "/console"
    cookie = resp.cookies[session.COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Strict"
    assert cookie["path"] == "/console"
    assert not cookie["secure"]  # plain HTTP here: a Secure cookie would never come back
    page = await console.get("/console")
    assert page.status == 200
    assert "Reports per minute" in await page.text()
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]


async def test_behind_a_tls_proxy_the_cookie_is_secure(console: Client) -> None:
    tls = {"X-Forwarded-Proto": "https"}
    form = await console.get("/console/login", headers=tls)
    assert form.cookies[session.LOGIN_COOKIE]["secure"] is True
    # The client keeps a Secure cookie to itself over plain HTTP; the proxy's browser would
    # send it over TLS.
    nonce = form.cookies[session.LOGIN_COOKIE].value
    resp = await console.post(
        "/console/login",
        data={"csrf": csrf_of(await form.text()), "token": API_TOKEN},
        headers={**tls, "Cookie": f"{session.LOGIN_COOKIE}={nonce}"},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert resp.cookies[session.COOKIE]["secure"] is True


@pytest.mark.parametrize(
    ("token", "status"),
    [
        ("not-a-token", 401),  # unknown
        (API_TOKEN + "x", 401),  # a configured token with one character more
        ("", 401),  # empty
        ("x" * 100_000, 401),  # huge: refused without comparing it
        (WRITER, 403),  # configured, but only for registering sends
    ],
)
async def test_sign_in_refuses_what_is_not_a_readable_token(
    console: Client, token: str, status: int
) -> None:
    form = await console.get("/console/login")
    resp = await console.post(
        "/console/login",
        data={"csrf": csrf_of(await form.text()), "token": token},
        allow_redirects=False,
    )
    assert resp.status == status
    assert session.COOKIE not in resp.cookies
    assert (await console.get("/console", allow_redirects=False)).status == 303


async def test_sign_in_without_the_forms_own_token_is_refused(console: Client) -> None:
    # A page elsewhere posting the sign-in form (login CSRF) has neither the cookie nor the
    # token bound to it.
    resp = await console.post(
        "/console/login", data={"csrf": "forged", "token": API_TOKEN}, allow_redirects=False
    )
    assert resp.status == 403
    assert session.COOKIE not in resp.cookies


@pytest.mark.parametrize(
    "next_page",
    ["https://evil.example/", "//evil.example/console", "/console\\@evil.example", "/v1/x"],
)
async def test_after_sign_in_the_redirect_never_leaves_the_console(
    console: Client, next_page: str
) -> None:
    form = await console.get("/console/login")
    resp = await console.post(
        "/console/login",
        data={"csrf": csrf_of(await form.text()), "token": API_TOKEN, "next": next_page},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert resp.headers["Location"] == "/console"


async def test_a_forged_or_expired_or_revoked_session_is_no_session(database_url: str) -> None:
    settings = plain_settings(database_url)
    good = session.issue(settings, API_TOKEN)
    assert session.read(settings, good) is not None
    body, _, mac = good.rpartition(".")
    assert session.read(settings, f"{body}.{mac[:-1]}A" if mac[-1] != "A" else body + ".B") is None
    assert session.read(settings, good.replace(".", "..", 1)) is None
    assert session.read(settings, "\x00" * 50) is None
    assert session.read(settings, "é" * 50) is None
    expired = session.issue(settings, API_TOKEN, now=time.time() - 13 * 3600)
    assert session.read(settings, expired) is None
    # The token taken out of the configuration: its sessions end with it.
    revoked = plain_settings(database_url, api_tokens=(SecretStr(f"{READER}:read"),))
    assert session.read(revoked, good) is None
    # Another worker with the same configuration reads it (nothing kept in memory).
    assert session.read(plain_settings(database_url), good) is not None
    # A console secret set explicitly replaces the derived one.
    other = plain_settings(database_url, console_secret=SecretStr("another secret"))
    assert session.read(other, good) is None


async def test_sign_out_clears_the_session(console: Client) -> None:
    csrf = await sign_in(console)
    resp = await console.post("/console/logout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    assert resp.cookies[session.COOKIE].value == ""
    assert (await console.get("/console", allow_redirects=False)).status == 303


async def test_a_reader_sees_messages_but_not_subscriptions(console: Client) -> None:
    await sign_in(console, READER)
    assert (await console.get("/console/problems")).status == 200
    resp = await console.get("/console/subscriptions")
    assert resp.status == 403
    assert "admin" in await resp.text()
    page = await (await console.get("/console")).text()
    assert 'href="/console/subscriptions"' not in page


async def test_markup_in_a_report_is_shown_as_text(console: Client) -> None:
    await sign_in(console)
    markup = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    answer = await messente_report(
        console, "sms-x", "sms", "DELIVRD", "2024-05-02T10:00:00", omni="omni-x", error=markup
    )
    await messente_report(
        console, "sms-x", "sms", "<b>ODD</b>", "2024-05-02T10:00:01", omni="omni-x"
    )
    await projected(console.app)
    pages = [
        await console.get("/console/messages/messente/omni-x"),
        await console.get(f"/console/receipts/{answer['receipt_id']}"),
        await console.get("/console/problems"),
    ]
    for page in pages:
        assert page.status == 200
        text = await page.text()
        assert "<script>" not in text
        assert "<b>ODD" not in text
        assert "<img src=x" not in text
    message_page, receipt_page, problems_page = [await p.text() for p in pages]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in message_page
    assert "&lt;b&gt;ODD&lt;/b&gt;" in message_page
    assert "&lt;script&gt;" in receipt_page  # the raw body, as text
    assert "&lt;b&gt;ODD&lt;/b&gt;" in problems_page  # an unmapped code


async def test_search_finds_a_number_however_it_is_written(console: Client) -> None:
    await failover_message(console)
    await sign_in(console)
    for spelling in ["+372 5555 5555", "0037255555555", "37255555555", "+372-5555-5555"]:
        resp = await console.get("/console/messages", params={"recipient": spelling})
        assert resp.status == 200
        assert f"/console/messages/messente/{OMNI}" in await resp.text(), spelling
    none = await console.get("/console/messages", params={"recipient": "+372 5555 5556"})
    assert f"/console/messages/messente/{OMNI}" not in await none.text()


async def test_search_by_any_provider_id_opens_the_message(console: Client) -> None:
    await failover_message(console)
    await sign_in(console)
    for given in [OMNI, "viber-1", "sms-1"]:
        resp = await console.get("/console/messages", params={"id": given}, allow_redirects=False)
        assert resp.status == 303
        assert resp.headers["Location"] == f"/console/messages/messente/{OMNI}"


async def test_the_failover_message_page_shows_each_channel_attempt(console: Client) -> None:
    await failover_message(console)
    await sign_in(console)
    page = await (await console.get(f"/console/messages/messente/{OMNI}")).text()
    viber, sms = page.index("viber viber-1"), page.index("sms sms-1")
    assert viber < sms  # the attempt that began first comes first
    assert "Sending message expired" in page
    assert 'class="status s-expired"' in page
    assert 'class="status s-delivered"' in page
    assert "order-4711" in page
    # The registration (an event per channel) and a report of each channel.
    assert page.count("raw receipt") == 4


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ({"recipient": "x" * 5000}, 400),  # longer than the API takes
        ({"status": "delivered,bogus"}, 400),  # not a status
        ({"provider": "nope"}, 400),
        ({"since": "0001-01-01T00:00:00+14:00"}, 400),  # before year 1 in UTC
        ({"since": "yesterday"}, 400),
        ({"cursor": "not-a-cursor"}, 400),
        ({"id": "x" * 5000}, 400),
        ({"id": "no-such-message"}, 200),  # nothing found: an empty list
        ({"recipient": "😀\u202e"}, 200),  # odd, but a valid thing to look for
    ],
)
async def test_bad_search_input_is_a_page_not_a_500(
    console: Client, query: dict[str, str], status: int
) -> None:
    await sign_in(console)
    resp = await console.get("/console/messages", params=query, allow_redirects=False)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "text/html"


async def test_nul_in_a_console_url_is_refused_before_any_handler(console: Client) -> None:
    await sign_in(console)
    resp = await console.get("/console/messages?recipient=%00")
    assert resp.status == 400


@pytest.mark.parametrize(
    "path",
    [
        "/console/messages/nope/x",
        "/console/messages/messente/" + "x" * 3000,
        "/console/receipts/not-a-uuid",
        "/console/groups/messente/none",
        "/console/subscriptions/not-a-uuid",
        "/console/no-such-page",
    ],
)
async def test_what_does_not_exist_is_an_html_404(console: Client, path: str) -> None:
    await sign_in(console)
    resp = await console.get(path)
    assert resp.status == 404
    assert resp.content_type == "text/html"


async def test_the_group_page_counts_its_members(console: Client) -> None:
    await failover_message(console)
    await messente_report(console, "sms-2", "sms", "FAILED", "2024-05-02T10:00:00", omni=OMNI)
    await projected(console.app)
    await sign_in(console)
    resp = await console.get(f"/console/groups/messente/{OMNI}")
    assert resp.status == 200
    page = await resp.text()
    assert "1 messages" in page
    assert "delivered: 1" in page


@pytest.fixture
async def subscriber(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Subscriber:
    return await serve_subscriber(aiohttp_server)


@pytest.fixture
async def admin_console(database_url: str, aiohttp_client: AiohttpClient) -> Client:
    client: Client = await make_client(aiohttp_client, console_settings(database_url))
    return client


async def dead_letter(client: Client, db: asyncpg.Connection, hook: Subscriber) -> dict[str, Any]:
    """A subscription whose one delivery failed every attempt."""
    hook.plan.extend([500] * 4)
    # Only the final change, so the one delivery meets every planned failure.
    sub = await subscribe(client, hook.url, description="CRM", statuses=["delivered"])
    await failover_message(client)

    async def dead() -> bool:
        return bool(await db.fetchval("select count(*) from deliveries where state = 'dead'"))

    await eventually(dead)
    return sub


async def test_buttons_without_the_csrf_token_change_nothing(
    admin_console: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    sub = await subscribe(admin_console, subscriber.url)
    csrf = await sign_in(admin_console)
    base = f"/console/subscriptions/{sub['id']}"
    for given in [{}, {"csrf": ""}, {"csrf": csrf + "x"}, {"csrf": "\x00"}]:
        resp = await admin_console.post(f"{base}/enabled", data={"enabled": "false", **given})
        assert resp.status == 403
    assert await db.fetchval("select enabled from subscriptions")
    # The same button with the session's token does it.
    resp = await admin_console.post(
        f"{base}/enabled", data={"enabled": "false", "csrf": csrf}, allow_redirects=False
    )
    assert resp.status == 303
    assert not await db.fetchval("select enabled from subscriptions")


async def test_a_reader_cannot_press_subscription_buttons(
    admin_console: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    sub = await subscribe(admin_console, subscriber.url)
    csrf = await sign_in(admin_console, READER)
    resp = await admin_console.post(
        f"/console/subscriptions/{sub['id']}/enabled", data={"enabled": "false", "csrf": csrf}
    )
    assert resp.status == 403
    assert await db.fetchval("select enabled from subscriptions")


async def test_subscription_health_and_a_dead_letter_replayed(
    admin_console: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    sub = await dead_letter(admin_console, db, subscriber)
    csrf = await sign_in(admin_console)
    listing = await (await admin_console.get("/console/subscriptions")).text()
    assert "0% of" in listing
    assert "HTTP 500" in listing
    base = f"/console/subscriptions/{sub['id']}"
    page = await (await admin_console.get(f"{base}?state=dead")).text()
    assert 'class="state st-dead"' in page
    delivery_id = await db.fetchval("select id from deliveries where state = 'dead'")
    detail = await (await admin_console.get(f"{base}/deliveries/{delivery_id}")).text()
    assert detail.count("HTTP 500") >= 4  # every attempt, with its answer
    # The subscriber is well again: a replay delivers it.
    resp = await admin_console.post(
        f"{base}/deliveries/{delivery_id}/replay", data={"csrf": csrf}, allow_redirects=False
    )
    assert resp.status == 303
    assert "replayed" in resp.headers["Location"]

    async def delivered() -> bool:
        state = await db.fetchval("select state from deliveries where id = $1", delivery_id)
        return bool(state == "delivered")

    await eventually(delivered)
    # The message page says the CRM was told.
    message = await (await admin_console.get(f"/console/messages/messente/{OMNI}")).text()
    assert "CRM" in message
    assert 'class="state st-delivered"' in message


async def test_replay_of_a_range_and_rotation_from_the_console(
    admin_console: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:
    sub = await dead_letter(admin_console, db, subscriber)
    csrf = await sign_in(admin_console)
    base = f"/console/subscriptions/{sub['id']}"
    for bad in ["yesterday", "0001-01-01T00:00:00+14:00", "\x00"]:
        resp = await admin_console.post(f"{base}/replay", data={"csrf": csrf, "since": bad})
        assert resp.status == 400, bad
    resp = await admin_console.post(
        f"{base}/replay", data={"csrf": csrf, "since": "2000-01-01T00:00"}
    )
    assert resp.status == 200  # after the redirect back to the subscription
    assert "Done: replayed 1 delivery." in await resp.text()
    # The page says only what a button did, not what a link made up.
    forged = await admin_console.get(f"{base}", params={"done": "your account is closed"})
    assert "your account is closed" not in await forged.text()
    old = await db.fetchval("select secret from subscriptions")
    rotated = await admin_console.post(f"{base}/rotate-secret", data={"csrf": csrf})
    assert rotated.status == 200
    new = await db.fetchval("select secret from subscriptions")
    assert new != old
    assert new in await rotated.text()
    assert rotated.headers["Cache-Control"] == "no-store"


async def test_two_replays_of_one_delivery_at_once_queue_it_once(
    admin_console: Client, subscriber: Subscriber, db: asyncpg.Connection
) -> None:

    sub = await dead_letter(admin_console, db, subscriber)
    csrf = await sign_in(admin_console)
    delivery_id = await db.fetchval("select id from deliveries where state = 'dead'")
    path = f"/console/subscriptions/{sub['id']}/deliveries/{delivery_id}/replay"
    answers = await asyncio.gather(
        *(admin_console.post(path, data={"csrf": csrf}, allow_redirects=False) for _ in range(2))
    )
    assert [a.status for a in answers] == [303, 303]

    async def delivered() -> bool:
        return bool(await db.fetchval("select state = 'delivered' from deliveries"))

    await eventually(delivered)
    assert await db.fetchval("select count(*) from deliveries") == 1
    assert subscriber.ok_ids().most_common(1)[0][1] <= 2  # at least once, never a new delivery


async def test_the_dashboard_counts_each_channel_attempt_and_escapes_what_reports_name(
    console: Client,
) -> None:
    await failover_message(console)
    # A channel name is the provider's text too: it reaches the SVG charts.
    await messente_report(
        console, "odd-1", "<i>x</i>", "DELIVRD", "2024-05-02T10:00:00", omni="omni-odd"
    )
    await projected(console.app)
    await sign_in(console)
    page = await (await console.get("/console")).text()
    assert "messente viber" in page
    assert "0.0% of 1" in page  # viber: expired
    assert "100.0% of 1" in page  # sms, after the failover
    assert "<i>x</i>" not in page
    assert "messente &lt;i&gt;x&lt;/i&gt;" in page
    # Three reports in the last hour, in the legend (the registration is not a report).
    assert "messente (3)" in page


async def test_search_results_come_in_pages_each_message_once(console: Client) -> None:
    for n in range(52):
        await messente_report(
            console, f"p-{n}", "sms", "DELIVRD", "2024-05-02T10:00:00", omni=f"page-{n:02d}"
        )
    await projected(console.app)
    await sign_in(console)
    first = await (
        await console.get("/console/messages", params={"recipient": "+37255555555"})
    ).text()
    links = re.findall(r'href="/console/messages/messente/(page-\d+)"', first)
    assert len(links) == 50
    found = re.search(r'href="(/console/messages\?[^"]+)" rel="next"', first)
    assert found is not None
    second = await (await console.get(html.unescape(found[1]))).text()
    rest = re.findall(r'href="/console/messages/messente/(page-\d+)"', second)
    assert len(rest) == 2
    assert 'rel="next"' not in second
    everything = links + rest
    assert sorted(everything) == sorted(f"page-{n:02d}" for n in range(52))  # each once
