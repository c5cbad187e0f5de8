"""The deploy files, checked as far as this machine can without a container engine: the
compose file validates, every RECEIVER_ name in them is a setting, every probe path is a
route, the image's build context leaves out what must not go in, the systemd unit verifies."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from receiver.http.app import create_app
from receiver.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file())
SETTINGS = {f"RECEIVER_{name.upper()}" for name in Settings.model_fields}


def test_the_deploy_folder_has_what_it_promises() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in FILES}
    assert {
        "Dockerfile",
        "compose.yaml",
        "dlr-receiver.service",
        "kubernetes/deployment.yaml",
        "kubernetes/service.yaml",
        "kubernetes/migrate-job.yaml",
        "kubernetes/secret.example.yaml",
    } <= names


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_receiver_variable_in_the_deploy_files_is_a_setting(path: Path) -> None:
    named = set(re.findall(r"RECEIVER_[A-Z0-9_]+", path.read_text()))
    assert named - SETTINGS == set()


def test_every_probe_and_healthcheck_path_is_a_get_route() -> None:
    app = create_app(Settings(database_url=SecretStr("postgresql://unused/db")))
    routes = {r.resource.canonical for r in app.router.routes() if r.method == "GET" and r.resource}
    probes = re.findall(r"path: (\S+)", (DEPLOY / "kubernetes" / "deployment.yaml").read_text())
    assert set(probes) == {"/healthz", "/readyz"}
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    (healthcheck,) = re.findall(r"HEALTHCHECK.*?\n.*?(/[a-z]+)\\?\"", dockerfile, re.S)
    assert {*probes, healthcheck} <= routes


def test_the_image_runs_as_a_user_under_an_init_and_its_context_is_an_allowlist() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root|0\b)\S+", dockerfile, re.M)
    assert 'ENTRYPOINT ["/usr/bin/tini", "--"' in dockerfile
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line]
    ignore = [line for line in ignore if not line.startswith("#")]
    assert ignore[0] == "*"  # nothing goes in unless named: no .venv, no receiver-data, no .git
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = set(re.findall(r"^COPY (?!--)(.+) \S+$", dockerfile, re.M))
    sources = {part for line in copied for part in line.split()}
    assert sources <= allowed
    assert not allowed & {".venv", "receiver-data", ".git", "tests"}


def test_the_compose_file_validates() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's package)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECEIVER_", "POSTGRES_"))}
    done = subprocess.run(  # noqa: S603 - a fixed command on our own file
        [compose, "-f", str(DEPLOY / "compose.yaml"), "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=DEPLOY,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # The service waits for the one-shot migrate, which waits for a healthy Postgres.
    assert "service_completed_successfully" in done.stdout
    assert "service_healthy" in done.stdout


def test_the_systemd_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # The unit names where a release is installed; here that is this environment's script.
    here = str(Path(sys.executable).parent / "dlr-receiver")
    unit = (DEPLOY / "dlr-receiver.service").read_text()
    assert "/opt/dlr-receiver/.venv/bin/dlr-receiver serve" in unit
    (tmp_path / "dlr-receiver.service").write_text(
        unit.replace("/opt/dlr-receiver/.venv/bin/dlr-receiver", here)
    )
    done = subprocess.run(  # noqa: S603
        [analyze, "verify", str(tmp_path / "dlr-receiver.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # verify passes units with unknown keys or bad values (it ignores them): a warning fails.
    assert done.stderr == ""
    for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet="):
        assert hardening in unit
