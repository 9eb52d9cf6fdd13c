"""The external agents' door (external/) stays a door: nothing in the engine, the agents, the
store, the trainer or the TUI imports it or the MCP SDK, but the composition root and the
command line, lazily, when a session serves agents or writes their files; and it imports no UI."""

import subprocess
import sys

from test_tui_layering import ROOT, _imports

INSIDE = ["autoresearch_tui", "scheduler", "agents", "results", "trainer", "tui"]
DOOR_PACKAGES = ("external", "mcp", "uvicorn")
ALLOWED = {("autoresearch_tui/startup.py", "external.lanes", "_proposer"),
           ("autoresearch_tui/startup.py", "external.lanes", "_open_door"),
           ("autoresearch_tui/startup.py", "external.calls", "_open_door"),
           ("autoresearch_tui/startup.py", "external.server", "_open_door"),
           ("autoresearch_tui/startup.py", "external.view", "_open_door"),
           ("autoresearch_tui/cli.py", "external.files", "agent_files")}


def test_only_the_composition_root_opens_the_door_and_only_lazily():
    found, offenders = set(), []
    for entry in INSIDE:
        for path in sorted((ROOT / entry).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            for module, scope in _imports(path):
                if module.split(".")[0] in DOOR_PACKAGES:
                    found.add((relative, module, scope))
                    if (relative, module, scope) not in ALLOWED:
                        offenders.append(f"{relative}: import {module}" + (f" (in {scope})" if scope else ""))
    assert offenders == []
    assert found == ALLOWED  # the scanner sees them: the check above cannot pass by parsing nothing


def test_the_door_imports_no_ui():
    modules = {module.split(".")[0] for path in (ROOT / "external").glob("*.py") for module, _ in _imports(path)}
    assert "mcp" in modules and not modules & {"textual", "tui"}


def test_a_session_without_external_agents_or_ray_never_loads_their_libraries():
    code = ("import sys, autoresearch_tui.cli, autoresearch_tui.startup, scheduler.engine.supervisor; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('external', 'mcp', 'uvicorn', 'ray')], "
            "[m for m in sys.modules if m.split('.')[0] in ('external', 'mcp', 'uvicorn', 'ray')]")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
