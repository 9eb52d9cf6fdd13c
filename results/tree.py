"""The research as a tree: each frontier, and the experiments tried on it.

A flat table hides the shape of a night: which frontier a change was tried on, which keep
moved the line, what was run again and why. The log already holds every link (an experiment's
parent commit, `confirms`, `verifies`, `rerun_of`, and the `frontier` events that say which
experiment made which commit the frontier), so the tree is built from those alone:

- the starting point is the root; a keep that moved the frontier is a node whose children are
  what was tried on the commit it made the frontier (a keep on a moved frontier, measured again
  there as a verification, is a node under the frontier it was verified on);
- a confirmation, and a run made again (by a person, or after an interruption), sit under the
  experiment they measure again; a baseline sits under the frontier whose code it measured;
- Δ is against the frontier it was tried on: the mean of that code's finished runs on the same
  GPU model, in the metric's own sign.

Pure: a list of experiments and frontier moves in, nodes out. `report --tree` prints it with
`text()`; the terminal UI draws the same nodes as a widget."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .metric import Metric
from .records import Decision, Experiment, FrontierMove, Kind, Status


@dataclass
class Node:
    """One experiment in the tree; the root alone has none (it is the starting point)."""

    experiment: Experiment | None
    frontier: str | None = None  # the commit this node made the frontier (the root's: the start)
    delta: float | None = None  # value minus its frontier's mean on the same GPU model
    notes: list[str] = field(default_factory=list)  # links in words: "verifies #3", "measured again as #9"
    children: list[Node] = field(default_factory=list)

    @property
    def id(self) -> int | None:
        return self.experiment.id if self.experiment is not None else None

    def walk(self):
        """This node and every node below it, depth first, in the order they are shown."""
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class ResearchTree:
    root: Node
    metric: Metric
    start_value: float | None  # the starting point's mean (on the GPU model most of its runs used)
    frontiers: int  # how many times the frontier moved forward

    def find(self, experiment_id: int) -> Node | None:
        return next((n for n in self.root.walk() if n.id == experiment_id), None)


def build(experiments: list[Experiment], moves: list[FrontierMove] = (), metric: Metric | None = None) -> ResearchTree:
    """The tree of one research line (a tag's experiments, every session's)."""
    metric = metric or Metric()
    ordered = sorted((e for e in experiments if e.id is not None), key=lambda e: e.id)
    by_id = {e.id: e for e in ordered}
    nodes = {e.id: Node(e) for e in ordered}
    start = _start(ordered)
    root = Node(None, frontier=start)

    # Which experiment made which commit the frontier: the log's own moves first (a keep that
    # was replayed or adopted made a commit of its own), then any keep the moves do not name
    # (a log written before moves were recorded).
    made: dict[str, int] = {}
    for move in moves:
        if not move.undo and move.experiment_id in nodes:
            made.setdefault(move.commit, move.experiment_id)
    for e in ordered:
        if e.decision is Decision.KEEP and e.kind is not Kind.BASELINE and e.commit:
            if e.commit not in made and e.id not in made.values():
                made[e.commit] = e.id
    frontier_nodes: dict[str, Node] = {start: root} if start else {}
    for commit, experiment_id in made.items():
        nodes[experiment_id].frontier = commit
        frontier_nodes.setdefault(commit, nodes[experiment_id])
    # the code each frontier runs: its commit, and the kept experiment's own when it was replayed
    same_code = {commit: {commit, by_id[i].commit} for commit, i in made.items()}
    values: dict[tuple[str | None, str | None], list[float]] = {}  # (commit, GPU model) -> finished runs' values
    for e in ordered:
        value = metric.value(e) if e.status is Status.OK else None
        if value is not None:
            values.setdefault((e.commit, e.gpu_name), []).append(value)

    for e in ordered:
        node = nodes[e.id]
        again = e.confirms if e.kind is Kind.CONFIRM else e.rerun_of
        if again in nodes and again < e.id:  # a link forward (never made) could close a loop
            parent = nodes[again]
            node.notes.append(f"{'confirms' if e.kind is Kind.CONFIRM else 'run again for'} #{again}")
            measured = by_id[again]
            frontier = measured.commit if measured.kind is Kind.BASELINE else measured.parent_commit
        elif e.kind is Kind.BASELINE:
            parent = frontier_nodes.get(e.commit) or root
            frontier = e.commit
        else:
            parent = frontier_nodes.get(e.parent_commit) or root
            frontier = e.parent_commit
            if parent is root and e.parent_commit and e.parent_commit != start:
                node.notes.append(f"on {e.parent_commit[:8]}")
        if e.kind is Kind.VERIFICATION and e.verifies in nodes:
            node.notes.append(f"verifies #{e.verifies}")
            nodes[e.verifies].notes.append(f"measured again on the new frontier as #{e.id}")
        if e.kind is not Kind.BASELINE:
            reference = _mean(values, same_code.get(frontier, {frontier}), e.gpu_name)
            value = metric.value(e) if e.status is Status.OK else None
            node.delta = value - reference if value is not None and reference is not None else None
        if parent is node:  # a link that points at itself: keep it in sight rather than lose it
            parent = root
        parent.children.append(node)

    start_runs = [e for e in ordered if e.kind is Kind.BASELINE and e.commit == start]
    models = [e.gpu_name for e in start_runs if e.status is Status.OK]
    model = max(set(models), key=models.count) if models else None
    start_value = _mean(values, {start}, model) if start else None
    return ResearchTree(root, metric, start_value, len(made))


def _start(ordered: list[Experiment]) -> str | None:
    """The line's starting commit: its first baseline's, else the first experiment's parent."""
    first = next((e for e in ordered if e.kind is Kind.BASELINE and e.commit), None)
    if first is not None:
        return first.commit
    return next((e.parent_commit for e in ordered if e.parent_commit), None)


def _mean(values: dict, commits: set, model: str | None) -> float | None:
    found = [v for commit in commits for v in values.get((commit, model), ())]
    return statistics.fmean(found) if found else None


# -- as text ----------------------------------------------------------------------------------------


def outcome(exp: Experiment) -> str:
    """What became of it, in one word: the decision of a finished run, else its status (a
    baseline measures; it is not a change anyone kept)."""
    if exp.status is Status.OK and exp.decision is not None and exp.kind is not Kind.BASELINE:
        return exp.decision.value
    return exp.status.value


def label_parts(node: Node, tree: ResearchTree) -> tuple[str, str, str]:
    """One node's line in three parts, for a view that colours the middle one: what it was,
    what became of it, and its value, Δ and links."""
    metric = tree.metric
    if node.experiment is None:
        value = f"{metric.name} {tree.start_value:.6f}" if tree.start_value is not None else ""
        return f"start {(node.frontier or '?')[:8]}", "", value
    e = node.experiment
    what = e.description
    if e.kind is not Kind.PROPOSAL and not what.lower().startswith(e.kind.value):
        what = f"{e.kind.value}: {what}"
    rest = []
    value = metric.value(e) if e.status is Status.OK else None
    if value is not None:
        rest.append(f"{value:.6f}")
    if node.delta is not None:
        rest.append(f"Δ {node.delta:+.6f}")
    if e.status not in (Status.OK, Status.QUEUED, Status.RUNNING) and e.error:
        rest.append(" ".join(e.error.split())[:80])
    rest.extend(node.notes)
    if node.frontier is not None:
        rest.append(f"frontier -> {node.frontier[:8]}")
    return f"#{e.id} {' '.join(what.split())}", outcome(e), " · ".join(rest)


def label(node: Node, tree: ResearchTree) -> str:
    """One node's line: what it was, what became of it, its value and Δ, its links."""
    return " · ".join(part for part in label_parts(node, tree) if part)


def text(tree: ResearchTree, width: int | None = None) -> str:
    """The tree drawn with box characters, one experiment a line (cut at `width`)."""
    if not tree.root.children and tree.root.frontier is None:
        return "No experiments yet.\n"
    lines = [label(tree.root, tree)]

    def draw(node: Node, prefix: str) -> None:
        for i, child in enumerate(node.children):
            last = i == len(node.children) - 1
            lines.append(prefix + ("└─ " if last else "├─ ") + label(child, tree))
            draw(child, prefix + ("   " if last else "│  "))

    draw(tree.root, "")
    if width:
        lines = [line if len(line) <= width else line[:width - 1] + "…" for line in lines]
    kept = tree.frontiers
    lines.append(f"{sum(1 for n in tree.root.walk() if n.experiment is not None)} experiments; "
                 f"the frontier moved {kept} time{'s' if kept != 1 else ''}")
    return "\n".join(lines) + "\n"
