"""The architecture's dependency direction, checked on the source: tui -> scheduler, agents,
results; scheduler -> agents, results; agents -> results; nothing imports tui; the trainer
and prepare.py import none of the project's packages."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"tui", "scheduler", "agents", "results", "trainer", "prepare"}
ALLOWED = {
    "tui": {"scheduler", "agents", "results"},
    "scheduler": {"agents", "results"},
    "agents": {"results"},
    "results": set(),
    "trainer": {"prepare"},  # the training program reads the fixed harness, nothing else
    "prepare": set(),
}
THIRD_PARTY_OWNERS = {"textual": "tui", "duckdb": "results"}
# The composition root: the entry point starts the TUI when asked for one, with a lazy import
# inside supervise(); --no-ui never reaches it (tests/test_supervisor_cli.py proves it).
COMPOSITION_ROOT = (ROOT / "scheduler" / "startup.py", "tui")


def project_imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def sources():
    yield "prepare", ROOT / "prepare.py"
    for package in sorted(PACKAGES - {"prepare"}):
        for path in sorted((ROOT / package).rglob("*.py")):
            yield package, path


@pytest.mark.parametrize("package,path", list(sources()), ids=lambda v: str(v).replace(str(ROOT) + "/", ""))
def test_imports_follow_the_dependency_direction(package, path):
    for name in project_imports(path):
        if name in PACKAGES and name != package and (path, name) != COMPOSITION_ROOT:
            assert name in ALLOWED[package], f"{path.name}: {package} must not import {name}"
        owner = THIRD_PARTY_OWNERS.get(name)
        assert owner in (None, package), f"{path.name}: only {owner}/ may import {name}"
