"""What the wheel carries: every subpackage, and the migrations from the top-level sql/."""

import tomllib
from pathlib import Path

from receiver import migrate

ROOT = Path(__file__).resolve().parents[2]


def _setuptools() -> dict[str, object]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    table: dict[str, object] = config["tool"]["setuptools"]
    return table


def test_every_subpackage_of_receiver_is_listed_for_the_wheel() -> None:
    inits = ROOT.glob("receiver/**/__init__.py")
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in inits}
    listed = set(_setuptools()["packages"])  # type: ignore[call-overload]
    # receiver.sql is the top-level sql/ folder, mapped into the package at build time.
    assert listed == on_disk | {"receiver.sql"}
    assert _setuptools()["package-dir"] == {"receiver.sql": "sql"}


def test_migrations_are_read_from_the_package_and_match_the_sql_folder() -> None:
    shipped = {m.name for m in migrate.load()}
    in_tree = {p.stem.split("_", 1)[1] for p in (ROOT / "sql" / "migrations").glob("*.sql")}
    assert shipped == in_tree
    # Every migration matches the package-data pattern that puts it in the wheel.
    (pattern,) = _setuptools()["package-data"]["receiver.sql"]  # type: ignore[index]
    assert all(p.match(pattern) for p in (ROOT / "sql").glob("migrations/*"))
