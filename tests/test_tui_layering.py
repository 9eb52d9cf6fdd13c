"""Only tui/ imports textual, and nothing imports tui/ but the composition root, lazily: the
engine, the agents, the store, the trainer and the harness load on a box with no terminal UI."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE_TUI = ["autoresearch_tui", "scheduler", "external", "agents", "results", "trainer", "bench", "prepare.py"]
# autoresearch_tui/startup.py builds the app when --no-ui is not given; the import is inside supervise().
ALLOWED = {("autoresearch_tui/startup.py", "tui.launch", "supervise")}
# The TUI's benchmark drives the app, as the tests do; it is no part of the product.
BENCHMARKS_OF_THE_TUI = {"bench/bench_tui.py"}
UI_PACKAGES = ("textual", "textual_plotext", "tui")


def _imports(path: Path):
    """(module imported, the function it is imported in or None) for every import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    scopes = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for child in ast.walk(node):
                scopes.setdefault(child, node.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, scopes.get(node)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module, scopes.get(node)


def _files():
    for entry in OUTSIDE_TUI:
        path = ROOT / entry
        yield from ([path] if path.is_file() else sorted(path.rglob("*.py")))


def test_no_package_but_tui_imports_textual_or_tui():
    offenders = []
    for path in _files():
        relative = path.relative_to(ROOT).as_posix()
        if relative in BENCHMARKS_OF_THE_TUI:
            continue
        for module, scope in _imports(path):
            if module.split(".")[0] in UI_PACKAGES and (relative, module, scope) not in ALLOWED:
                offenders.append(f"{relative}: import {module}" + (f" (in {scope})" if scope else ""))
    assert offenders == []


def test_the_one_allowed_import_is_still_there_and_still_lazy():
    found = [(module, scope) for module, scope in _imports(ROOT / "autoresearch_tui" / "startup.py")
             if module.split(".")[0] == "tui"]
    assert found == [("tui.launch", "supervise")]


def test_the_scanner_sees_an_import_of_textual():
    # The check above would pass vacuously if it parsed nothing: it must see tui's own imports.
    modules = {module for path in (ROOT / "tui").glob("*.py") for module, _ in _imports(path)}
    assert "textual.app" in modules


def test_loading_the_engine_and_the_cli_does_not_load_textual():
    code = ("import sys, autoresearch_tui.cli, autoresearch_tui.startup, scheduler.engine.supervisor, results.report, agents.mutator; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('textual', 'tui')], 'textual loaded'")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
