"""/metrics as Prometheus reads it: bounded labels, the account label, the latency histograms,
and one scrape covering every worker of `serve` (prometheus-client's multiprocess mode)."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from receiver.metrics import FLUSH_EVERY
from receiver.providers import messente
from tests.conftest import MESSENTE_PASSWORD, clean_env, free_port, projected
from tests.integration.test_cli import wait_ready

Client = TestClient[Any, Any]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def series(text: str, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples(text) if n == name]


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def signed(body: bytes, secret: str = MESSENTE_PASSWORD) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-Messente-Signature": messente.sign(secret, body)}


async def test_webhooks_to_made_up_providers_add_no_series(client: Client) -> None:
    for i in range(50):
        resp = await client.post(f"/webhooks/made-up-{i}", data=b"{}")
        assert resp.status == 404
    # A hostile provider name: quotes, a newline and a long one, all one series.
    for name in ['a"b', "x%0Ay", "z" * 5000]:
        await client.post(f"/webhooks/{name}", data=b"{}")
    text = await (await client.get("/metrics")).text()
    requests = series(text, "dlr_webhook_requests_total")
    assert requests == [{"provider": "other", "account": "none", "status": "404"}]
    assert value(text, "dlr_webhook_requests_total", **requests[0]) == 53
    assert {s["provider"] for s in series(text, "dlr_webhook_ack_seconds_count")} == {"other"}


async def test_acknowledgement_and_projection_are_histograms(client: Client) -> None:
    body = json.dumps({"omnimessage_id": "hist-1", "status": "DELIVRD"}).encode()
    for _ in range(3):
        assert (await client.post("/webhooks/messente", data=body, headers=signed(body))).ok
    await projected(client.app)
    text = await (await client.get("/metrics")).text()
    assert value(text, "dlr_webhook_ack_seconds_count", provider="messente") == 3
    assert value(text, "dlr_webhook_ack_seconds_sum", provider="messente") > 0
    assert value(text, "dlr_projection_delay_seconds_count") == 3
    # Every observation below the last finite bucket's top (a day): the buckets are ordered.
    assert value(text, "dlr_projection_delay_seconds_bucket", le="86400.0") == 3
    assert value(text, "dlr_reports_total", provider="messente", account="default", outcome="new")
    assert value(text, "dlr_forward_delay_seconds_count") == 0


def _post(base: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(f"{base}{path}", data=body, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            return resp.status, resp.headers["X-Request-Id"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["X-Request-Id"]


def test_one_scrape_counts_the_requests_of_both_workers(database_url: str, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    # A previous run's file: unreadable, it would break every scrape if serve did not clear it.
    (metrics_dir / "counter_1.db").write_bytes(b"left over from an earlier run")
    port = free_port()
    env = clean_env(
        RECEIVER_DATABASE_URL=database_url,
        RECEIVER_PORT=str(port),
        RECEIVER_WORKERS="2",
        RECEIVER_MESSENTE_API_PASSWORD=MESSENTE_PASSWORD,
        RECEIVER_ACCOUNTS=json.dumps({"messente": {"brand2": {"secret": "second-secret"}}}),
        RECEIVER_POLL_ENABLED="false",
        RECEIVER_FORWARD_ENABLED="false",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        # Our own request ids start with a random prefix per process: which worker answered.
        workers: set[str] = set()
        sent = 0
        while len(workers) < 2 or sent < 20:
            assert sent < 400, "the kernel never gave a connection to the second worker"
            body = json.dumps({"omnimessage_id": f"mp-{sent}", "status": "DELIVRD"}).encode()
            status, request_id = _post(base, "/webhooks/messente", body, signed(body))
            assert status == 200
            workers.add(request_id[:16])
            sent += 1
        body = json.dumps({"omnimessage_id": "mp-brand2", "status": "DELIVRD"}).encode()
        assert _post(base, "/webhooks/messente", body, signed(body, "second-secret"))[0] == 200
        assert _post(base, "/webhooks/messente", body, signed(body, "wrong"))[0] == 401
        for i in range(5):
            assert _post(base, f"/webhooks/nope-{i}", b"{}", {})[0] == 404

        # The other worker writes its counts at most FLUSH_EVERY seconds after a request, by
        # its own timer: then one scrape of either worker has them all.
        time.sleep(FLUSH_EVERY + 0.3)
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:  # noqa: S310
            text = resp.read().decode()
        ok = {"provider": "messente", "status": "200"}
        assert value(text, "dlr_webhook_requests_total", account="default", **ok) == sent
        assert value(text, "dlr_webhook_requests_total", account="brand2", **ok) == 1
        assert (
            value(
                text,
                "dlr_webhook_requests_total",
                provider="messente",
                account="none",
                status="401",
            )
            == 1
        )
        assert (
            value(
                text, "dlr_webhook_requests_total", provider="other", account="none", status="404"
            )
            == 5
        )
        assert value(text, "dlr_webhook_ack_seconds_count", provider="messente") == sent + 2
        assert not (metrics_dir / "counter_1.db").exists()
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
