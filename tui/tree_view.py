"""t : the research as a tree (results/tree.py): each frontier and the experiments tried on it,
with what became of them. Arrows move, space folds a branch, enter opens an experiment's
details, and k, d and r act on the experiment under the cursor."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static, Tree

from results import tree as research_tree
from results.records import Status

from .messages import ExperimentChosen
from .state import ResearchView

OUTCOME_STYLES = {"keep": "bold green", "discard": "dim", "running": "yellow", "queued": "italic dim", "not_run": "italic dim",
                  "rejected": "dim red", "killed": "magenta", "interrupted": "magenta"}
FAILED = "bold red"  # crash, oom, nan, timeout, hung


def styled(parts: tuple[str, str, str]) -> Text:
    head, outcome, rest = parts
    text = Text(head)
    if outcome:
        text.append(" · ")
        text.append(outcome, OUTCOME_STYLES.get(outcome, FAILED))
    if rest:
        text.append(" · ")
        text.append(rest)
    return text


class TreeScreen(Screen[None]):
    BINDINGS = [Binding("escape,t", "close", "back")]

    def __init__(self, view: ResearchView) -> None:
        super().__init__(classes="tree")
        self.view = view
        self._drawn_version: int | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="tree-title")
        tree: Tree[int | None] = Tree("", id="research-tree")
        tree.auto_expand = False  # enter opens the experiment; space folds
        tree.guide_depth = 3
        yield tree
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.show()
        self.query_one(Tree).focus()

    @property
    def selected_id(self) -> int | None:
        node = self.query_one(Tree).cursor_node
        return node.data if node is not None else None

    def show(self) -> None:
        """Draw the tree again if an experiment or the frontier changed, keeping what a person
        folded and where the cursor was."""
        if self._drawn_version == self.view.table_version:
            return
        self._drawn_version = self.view.table_version
        widget = self.query_one(Tree)
        folded = {n.data for n in _nodes(widget.root) if n.data is not None and n.allow_expand and not n.is_expanded}
        at = self.selected_id
        model = research_tree.build(list(self.view.experiments.values()), list(self.view.moves.values()),
                                    self.view.metric)
        widget.clear()
        widget.root.set_label(styled(research_tree.label_parts(model.root, model)))
        widget.root.data = None
        for child in model.root.children:
            _add(widget.root, child, model, folded)
        widget.root.expand()
        done = sum(1 for n in model.root.walk() if n.experiment is not None and n.experiment.status.finished)
        running = sum(1 for n in model.root.walk() if n.experiment is not None and n.experiment.status is Status.RUNNING)
        self.query_one("#tree-title", Static).update(
            f"[b]{self.view.tag}[/b]: the research as a tree · {done} finished, {running} running · the frontier "
            f"moved {model.frontiers} time{'s' if model.frontiers != 1 else ''} · enter: details · space: fold · "
            f"escape: back")
        line = next((i for i, n in enumerate(_shown(widget.root)) if at is not None and n.data == at), None)
        if line is not None:
            widget.move_cursor_to_line(line)

    @on(Tree.NodeSelected)
    def _chosen(self, message: Tree.NodeSelected) -> None:
        message.stop()
        if message.node.data is not None:
            self.post_message(ExperimentChosen(message.node.data))

    def action_close(self) -> None:
        self.dismiss(None)


def _add(parent, node: research_tree.Node, model: research_tree.ResearchTree, folded: set) -> None:
    label = styled(research_tree.label_parts(node, model))
    if not node.children:
        parent.add_leaf(label, data=node.id)
        return
    branch = parent.add(label, data=node.id, expand=node.id not in folded)
    for child in node.children:
        _add(branch, child, model, folded)


def _nodes(root):
    yield root
    for child in root.children:
        yield from _nodes(child)


def _shown(node):
    """The nodes on screen, one a line, in order: the root, then inside what is unfolded."""
    yield node
    if node.is_expanded:
        for child in node.children:
            yield from _shown(child)
