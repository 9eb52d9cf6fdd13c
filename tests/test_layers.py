"""The architecture's dependency direction, checked on the source. From the top down:

    autoresearch_tui/   the composition root and CLI: may import everything
    tui/, external/     the faces: the engine's events and commands, the agents, the store
    scheduler/engine/   the research loop: runs, GPUs, config, agents, store; never a face, Ray or the CLI
    scheduler/cluster/  Ray: runs, GPUs, store (the only package that imports ray)
    scheduler/runs/     executors, sandbox, parsing, worktrees, keys: GPUs, store
    scheduler/          config.py and gpus.py, read by all of the above: the store only
    agents/ -> results/; trainer/ -> prepare.py; prepare.py imports none of them

Relative imports are resolved, so `from ..engine import events` counts as much as an absolute one."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Longest first: a module belongs to the most specific layer that names it.
LAYERS = ("autoresearch_tui", "tui", "external", "scheduler.engine", "scheduler.cluster", "scheduler.runs",
          "scheduler", "agents", "results", "trainer", "prepare")
BASE = {"scheduler", "results"}
ALLOWED = {
    "autoresearch_tui": set(LAYERS),
    "tui": {"scheduler.engine", "scheduler.runs", "agents"} | BASE,
    "external": {"scheduler.engine", "scheduler.runs", "agents"} | BASE,
    "scheduler.engine": {"scheduler.runs", "agents"} | BASE,
    "scheduler.cluster": {"scheduler.runs"} | BASE,
    "scheduler.runs": BASE,
    "scheduler": {"results"},
    "agents": {"results"},
    "results": set(),
    "trainer": {"prepare"},  # the training program reads the fixed harness, nothing else
    "prepare": set(),
}
# Lazy imports of the faces by the composition root are allowed above; tests/test_tui_layering.py
# and tests/test_external_layering.py hold that they stay lazy (--no-ui never loads textual).
THIRD_PARTY_OWNERS = {"textual": {"tui"}, "duckdb": {"results"}, "ray": {"scheduler.cluster"},
                      "mcp": {"external"}, "uvicorn": {"external"}}


def layer_of(module: str) -> str | None:
    for layer in sorted(LAYERS, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False):
    """Every module `source` (the text of `module`) imports, relative imports made absolute."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = here[:len(here) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module:
                yield target
            else:  # `from . import events`: each name is a module of the package
                yield from (f"{target}.{a.name}" for a in node.names)


def violations(path: Path, source: str | None = None) -> list[str]:
    module = module_name(path)
    layer = layer_of(module)
    out = []
    for imported in imported_modules(source if source is not None else path.read_text(), module,
                                     path.name == "__init__.py"):
        target = layer_of(imported)
        if target is not None and target != layer and target not in ALLOWED[layer]:
            out.append(f"{module} ({layer}) imports {imported} ({target})")
        owners = THIRD_PARTY_OWNERS.get(imported.split(".")[0])
        if owners is not None and layer not in owners:
            out.append(f"{module} ({layer}) imports {imported}: only {', '.join(sorted(owners))} may")
    return out


def sources() -> list[Path]:
    tops = {layer.split(".")[0] for layer in LAYERS} - {"prepare"}
    return [ROOT / "prepare.py"] + [p for top in sorted(tops) for p in sorted((ROOT / top).rglob("*.py"))]


@pytest.mark.parametrize("path", sources(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_imports_follow_the_dependency_direction(path):
    assert violations(path) == []


def test_every_module_belongs_to_a_layer():
    assert [p for p in sources() if layer_of(module_name(p)) is None] == []
    # scheduler/ holds only its subpackages and the two modules every layer of it reads
    assert sorted(p.name for p in (ROOT / "scheduler").glob("*.py")) == ["__init__.py", "config.py", "gpus.py"]


@pytest.mark.parametrize("where,line,broken", [
    ("scheduler/engine/supervisor.py", "from autoresearch_tui.cli import main", "imports autoresearch_tui.cli"),
    ("scheduler/engine/supervisor.py", "from tui.app import ResearchApp", "imports tui.app"),
    ("scheduler/engine/supervisor.py", "from external.lanes import ExternalProposer", "imports external.lanes"),
    ("scheduler/engine/supervisor.py", "from ..cluster.raycluster import RayCluster", "imports scheduler.cluster.raycluster"),
    ("scheduler/engine/supervisor.py", "import ray", "only scheduler.cluster may"),
    ("scheduler/runs/executor.py", "from ..engine import events", "imports scheduler.engine (scheduler.engine)"),
    ("scheduler/gpus.py", "from .runs.sandbox import Sandbox", "imports scheduler.runs.sandbox"),
    ("tui/app.py", "from autoresearch_tui.headless import describe", "imports autoresearch_tui.headless"),
    ("external/server.py", "import tui.launch", "imports tui.launch"),
    ("results/store.py", "from agents.proposer import Proposer", "imports agents.proposer"),
])
def test_an_import_that_runs_back_up_is_caught(where, line, broken):
    # The arrows that ran upward before the split (scheduler/startup.py into tui and external,
    # scheduler/cli.py into external) would land here again if the root moved back down.
    path = ROOT / where
    found = violations(path, path.read_text() + "\n" + line + "\n")
    assert any(broken in v for v in found), found
    assert violations(path) == []  # and the module as it stands is clean


def test_relative_imports_are_resolved():
    got = set(imported_modules("from . import control, events\nfrom ..runs.executor import Reach\n",
                               "scheduler.engine.supervisor"))
    assert got == {"scheduler.engine.control", "scheduler.engine.events", "scheduler.runs.executor"}
    assert set(imported_modules("from .engine import state\n", "scheduler", is_package=True)) == {"scheduler.engine"}
