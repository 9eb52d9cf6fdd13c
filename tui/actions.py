"""Every action a person can take, once: the key bindings, the footer, the command palette and
the help screen are all made from this list, so a new action appears everywhere at once."""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class Action:
    name: str  # the app's action_<name>
    keys: str  # textual key names, comma-separated
    display: str  # how the key is written for a person
    label: str  # a word for the footer
    help: str  # a sentence for the help screen and the palette
    group: str
    footer: bool = True
    priority: bool = False  # also when a widget that uses the key has focus


ACTIONS: tuple[Action, ...] = (
    Action("keep", "k", "k", "keep", "Keep the selected experiment: make it the frontier (asks first)",
           "experiment"),
    Action("discard", "d", "d", "discard", "Discard the selected experiment; a kept one leaves the frontier "
           "(asks first)", "experiment"),
    Action("approve", "a", "a", "approve", "Review mode: let the proposal awaiting review run", "experiment"),
    Action("reject", "x", "x", "reject", "Review mode: reject the proposal awaiting review", "experiment"),
    Action("rerun", "r", "r", "rerun", "Run the selected experiment again", "experiment"),
    Action("details", "enter", "enter", "details", "Open the selected experiment: diff, log, transcript, "
           "metrics", "experiment", footer=False),
    Action("tree", "t", "t", "tree", "Show the research as a tree: each frontier and the experiments tried on it "
           "(enter opens one, space folds a branch)", "table", footer=False),
    Action("pause", "p", "p", "pause", "Pause or resume the selected lane (its running experiment finishes)",
           "lane"),
    Action("stop", "s", "s", "stop", "Stop the selected lane's running experiment (asks first)", "lane"),
    Action("filter", "slash", "/", "filter", "Filter the experiments table (words; escape clears)", "table",
           footer=False),
    Action("sort", "o", "o", "sort", "Sort the experiments table by the next column (again: reverse)", "table",
           footer=False),
    Action("confirm", "c", "c", "claim", "Measure the claim now: the frontier and the start run side by side, "
           "then the night goes on (asks first)", "app", footer=False),
    Action("help", "question_mark", "?", "help", "Show the keys", "app"),
    Action("quit", "q", "q", "quit", "Quit: the running experiments finish first (asks first; q again: now)",
           "app"),
    Action("command_palette", "ctrl+p", "ctrl+p", "palette", "Open the command palette", "app", footer=False,
           priority=True),
)

# Lane selection by number: one action, eight keys.
LANE_KEYS = 8
LANE_HELP = Action("select_lane", ",".join(str(i + 1) for i in range(LANE_KEYS)), f"1…{LANE_KEYS}", "lane",
                   "Select a lane by its number (lane 0 is 1)", "lane", footer=False)

GROUPS = {"experiment": "The selected experiment", "lane": "The selected lane", "table": "The table",
          "app": "The app"}


def bindings() -> list[Binding]:
    out = [Binding(a.keys, a.name, a.label, show=a.footer, key_display=a.display, priority=a.priority,
                   tooltip=a.help) for a in ACTIONS]
    out.extend(Binding(str(i + 1), f"select_lane({i})", f"lane {i}", show=False) for i in range(LANE_KEYS))
    # ctrl+q is textual's own quit key; it goes through the same confirmation as q.
    out.append(Binding("ctrl+q", "quit", "quit", show=False, priority=True))
    return out


def palette() -> list[Action]:
    """What the command palette offers: every action but the palette itself."""
    return [a for a in ACTIONS if a.name != "command_palette"]


def help_rows() -> list[tuple[str, str, str]]:
    """(group title, key, sentence) for the help screen, grouped in the registry's order."""
    rows = []
    for group, title in GROUPS.items():
        for a in (*ACTIONS, LANE_HELP):
            if a.group == group:
                rows.append((title, a.display, a.help))
    return rows
