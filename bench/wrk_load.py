"""wrk as the load generator for the ingest workloads: the requests it cannot make itself, the
command line, and its one JSON line of results.

wrk (Debian package `wrk`, 4.1.0; `bench/setup.sh` installs it) runs the Lua scripts in
bench/wrk/: Infobip bodies are built there (HTTP Basic is a static header), while Messente's
requests carry an HMAC of the body, which wrk cannot compute, so they are signed here beforehand
and written to a file the script reads.
"""

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.load import infobip_report, messente_report

WRK_DIR = Path(__file__).resolve().parent / "wrk"
SETUP = Path(__file__).resolve().parent / "setup.sh"


@dataclass(frozen=True)
class Workload:
    name: str
    provider: str  # the webhook: /webhooks/{provider}
    reports_per_request: int
    single: bool  # one report per request


WORKLOADS = {
    w.name: w
    for w in (
        Workload("messente", "messente", 1, single=True),
        Workload("infobip1", "infobip", 1, single=True),
        Workload("infobip100", "infobip", 100, single=False),
    )
}


def wrk_binary() -> str:
    """The wrk executable, or an exit that says how to install it."""
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit(
            "bench: wrk is not installed; it is the benchmark's load generator.\n"
            f"Install it, as root, with: {SETUP} (apt-get install wrk: Debian's wrk 4.1.0)"
        )
    return found


def messente_requests_needed(duration: int, threads: int) -> int:
    """Enough signed requests that no run sends one twice, at up to 20,000 requests/s (the
    no-op server on this machine does less), up to 600,000 (about 300 MB in wrk's LuaJIT heap,
    which is limited). A run that does wrap around is reported."""
    return max(150_000, min(duration * 20_000, 600_000), threads)


def write_messente_requests(path: Path, count: int) -> None:
    """One signed request a line: hex signature, tab, body (JSON has no raw tab or newline)."""
    with path.open("wb") as f:
        for _ in range(count):
            body, headers, _ = messente_report()
            f.write(headers["X-Messente-Signature"].encode() + b"\t" + body + b"\n")


def infobip_template() -> str:
    """One report as JSON, the shape of bench.load's, with @BULK@ and @ID@ for the script."""
    template = json.dumps(infobip_report("@BULK@", "@ID@"))
    assert template.index("@BULK@") < template.index("@ID@")
    return template


def command(
    workload: Workload,
    url: str,
    *,
    duration: int,
    connections: int,
    threads: int,
    messente_file: Path | None,
    nonce: str,
) -> tuple[list[str], dict[str, str]]:
    """The wrk command line for one workload against `url`, and its environment."""
    cmd = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_DIR / f"{workload.provider}.lua"),
        f"{url}/webhooks/{workload.provider}",
        "--",
    ]
    if workload.provider == "messente":
        assert messente_file is not None
        cmd += [str(messente_file), str(threads)]
    else:
        cmd += [nonce, str(workload.reports_per_request), infobip_template()]
    env = dict(os.environ, LUA_PATH=f"{WRK_DIR}/?.lua;;")
    return cmd, env


def parse(stdout: str) -> dict[str, Any]:
    """The JSON line bench/wrk/common.lua's done() prints, with what follows from it."""
    for line in reversed(stdout.splitlines()):
        if line.startswith('{"wrk"'):
            result: dict[str, Any] = json.loads(line)
            break
    else:
        raise RuntimeError(f"no result line in wrk's output:\n{stdout}")
    del result["wrk"]
    result["acked_requests"] = result["requests"] - result["non_2xx"]
    result["acked_reports"] = result["acked_requests"] * result["reports_per_request"]
    result["reports_per_s"] = result["acked_reports"] / result["duration_s"]
    return result


def new_nonce() -> str:
    return uuid.uuid4().hex[:12]
