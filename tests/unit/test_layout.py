"""The folders are the architecture: the shared vocabulary at the bottom of the import graph,
one subpackage per part, HTTP on top, and no module named for what its folder says."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "receiver"
PARTS = {"http", "ingest", "forwarding", "polling", "maintenance", "providers", "console"}
# The command line and serve's supervisor sit above everything; nothing imports them.
COMMANDS = {"receiver.__main__", "receiver.serve"}
MODULES = sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every receiver module this one imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("receiver")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("receiver"):
            assert node.module is not None
            # `from receiver.http import views` names the module receiver.http.views.
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return found


def _part(module: str) -> str | None:
    """The part a module belongs to (its subpackage), or None for the flat vocabulary."""
    segments = module.split(".")
    return segments[1] if len(segments) > 1 and segments[1] in PARTS else None


GRAPH = {_name(p): _imports(p) for p in MODULES}
VOCABULARY = sorted(m for m in GRAPH if _part(m) is None and m not in COMMANDS and m != "receiver")


@pytest.mark.parametrize("module", VOCABULARY)
def test_the_vocabulary_imports_no_part_but_the_provider_registry(module: str) -> None:
    # Providers are the one part below it: settings and accounts follow from what each
    # provider declares (its default account, its capabilities).
    above = sorted(i for i in GRAPH[module] if _part(i) not in (None, "providers"))
    assert above == []


@pytest.mark.parametrize(
    "module", sorted(m for m in GRAPH if _part(m) not in (None, "http", "console"))
)
def test_no_part_below_http_imports_http_or_the_console(module: str) -> None:
    assert sorted(i for i in GRAPH[module] if _part(i) in ("http", "console")) == []


def test_nothing_imports_the_command_line() -> None:
    importers = {m for m, imports in GRAPH.items() if imports & COMMANDS}
    assert importers <= {"receiver.__main__"}


def test_the_providers_import_no_other_part() -> None:
    # Parsing stays pure: a provider module is testable without the app, the database or
    # the forwarder.
    for module, imports in GRAPH.items():
        if _part(module) == "providers":
            assert {_part(i) for i in imports} <= {None, "providers"}, module


def test_no_module_is_named_for_what_its_folder_says() -> None:
    for path in MODULES:
        folder = path.parent.name
        assert not path.stem.endswith("_queries"), path
        # forwarding/forward_*.py, polling/poll_*.py: the folder says it already.
        assert not path.stem.startswith(folder.removesuffix("ing") + "_"), path


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_opens_with_a_docstring(path: Path) -> None:
    assert ast.get_docstring(ast.parse(path.read_text())), path
