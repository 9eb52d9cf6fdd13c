"""The experiment tree (results/tree.py): built from the log's own links on a night with two
frontier moves, a crash and a re-run; `report --tree` on a real DuckDB file; and in the terminal
UI, `t` opens it, the keyboard walks it, space folds a branch, enter opens an experiment's
details, and k acts on the experiment under the cursor."""

import asyncio
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timezone

from results import tree
from results.records import Decision, Event, FrontierMove, Kind, Run, Status
from results.store import Store
from scheduler.engine import control, events
from tui.app import ResearchApp
from tui.confirm import ConfirmScreen
from tui.detail import DetailScreen
from tui.tree_view import TreeScreen

from tui_fakes import A, B, C, experiment, link, tree_events, tree_night


def night_tree(with_moves=True):
    night, moves = tree_night()
    return tree.build(night, [FrontierMove(*m) for m in moves] if with_moves else [])


def children(node):
    return [c.id for c in node.children]


def test_each_keep_holds_what_was_tried_on_the_frontier_it_made():
    t = night_tree()
    assert (t.root.frontier, t.frontiers) == (A, 2)
    assert children(t.root) == [1, 2, 3, 4, 6]  # baselines and what was tried on the start
    three, seven = t.find(3), t.find(7)
    assert (three.frontier, children(three)) == (B, [5, 7])  # the crash and the verification ran on B
    assert (seven.frontier, children(seven)) == (C, [9, 10])
    assert children(t.find(4)) == [8]  # the re-run sits under what it ran again
    assert t.find(7).notes == ["verifies #6"] and t.find(6).notes == ["measured again on the new frontier as #7"]
    assert t.find(8).notes == ["run again for #4"]
    # Δ against the frontier it was tried on, on the same GPU model: #3 against the start's two
    # runs (0.9980), #7 against B's one run (0.9910); a crash and a running one have none
    assert round(t.start_value, 6) == 0.998
    assert round(three.delta, 6) == -0.007 and round(seven.delta, 6) == -0.0055
    assert t.find(5).delta is None and t.find(9).delta is None


def test_the_frontier_moves_link_a_keep_whose_commit_was_replayed():
    """A keep replayed onto a moved frontier makes a commit no experiment ran: only the log's
    frontier events say which experiment made it."""
    night, _ = tree_night()
    replayed = "d" * 40
    later = replace(experiment(11, 0, "DEPTH 8 -> 9", status=Status.OK, value=0.98, parent=replayed),
                    decision=Decision.DISCARD)
    moves = [FrontierMove(B, A, 3), FrontierMove(C, B, 7), FrontierMove(replayed, C, 9)]
    with_moves = tree.build([*night, later], moves)
    assert children(with_moves.find(9)) == [11] and with_moves.find(9).frontier == replayed
    without = tree.build([*night, later], moves[:2])
    assert 11 in children(without.root) and without.find(11).notes == [f"on {replayed[:8]}"]


def test_text_draws_every_experiment_once_with_its_outcome():
    out = tree.text(night_tree()).splitlines()
    assert out[0] == "start aaaaaaaa · val_bpb 0.998000"
    assert out[1] == "├─ #1 baseline: the frontier as it is · ok · 0.998200"
    assert out[3] == "├─ #3 MATRIX_LR 0.04 -> 0.05 (x1.25) · keep · 0.991000 · Δ -0.007000 · frontier -> bbbbbbbb"
    assert out[4] == "│  ├─ #5 DEPTH 8 -> 10 · crash · exit code 1: RuntimeError: shape mismatch in attention"
    assert out[5].startswith("│  └─ #7 verification: EMBEDDING_LR") and out[5].endswith("verifies #6 · frontier -> cccccccc")
    assert out[6] == "│     ├─ #9 WEIGHT_DECAY 0.2 -> 0.1 · running"
    assert out[9] == "│  └─ #8 rerun: WARMDOWN_RATIO 0.5 -> 0.4 · discard · 0.999300 · Δ +0.001300 · run again for #4"
    assert out[-1] == "10 experiments; the frontier moved 2 times"
    assert all(len(line) <= 60 for line in tree.text(night_tree(), width=60).splitlines())
    assert tree.text(tree.build([])) == "No experiments yet.\n"


def test_report_tree_prints_it_from_a_real_log(tmp_path):
    db = tmp_path / "log.duckdb"
    night, moves = tree_night()
    with Store(db) as store:
        store.start_run(Run("nov21-run", "nov21", str(tmp_path), datetime(2026, 11, 21, tzinfo=timezone.utc)))
        for exp in night:
            assert store.add_experiment(replace(exp, id=None)).id == exp.id
        for commit, previous, eid in moves:
            store.add_event(Event(datetime.now(timezone.utc), "nov21-run", "frontier", experiment_id=eid,
                                  detail={"commit": commit, "previous": previous}))
    result = subprocess.run([sys.executable, "-m", "autoresearch_tui.cli", "report", "--db", str(db), "--tree"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "tag nov21: val_bpb (lower is better)\n" + tree.text(night_tree())


def drive(app, scenario):
    async def main():
        async with app.run_test(size=(130, 30)) as pilot:
            await pilot.pause()
            await scenario(pilot)
    asyncio.run(main())


def fed():
    app = ResearchApp(link(2), user="ada")
    for event in tree_events():
        app.sink(event)
    return app


def test_t_opens_the_tree_the_keys_walk_it_and_enter_opens_a_details_screen():
    app = fed()

    async def scenario(pilot):
        await pilot.press("t")
        assert isinstance(app.screen, TreeScreen)
        await pilot.pause()
        screen = app.screen
        await pilot.press("down", "down", "down")  # the root, #1, #2, then #3: the first keep
        assert screen.selected_id == 3
        await pilot.press("space")  # fold the branch of frontier B: the next line is #4
        await pilot.press("down")
        assert screen.selected_id == 4
        await pilot.press("up", "space", "down")  # unfold: #5, the crash, is the first under #3
        assert screen.selected_id == 5
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen) and app.screen.experiment_id == 5
        await pilot.press("escape")
        assert app.screen is screen and screen.selected_id == 5
        await pilot.press("down", "down", "down", "down", "k")  # #7, #9, #10, #4: k asks about the one under the cursor
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await pilot.press("escape")
        assert not isinstance(app.screen, TreeScreen)
    drive(app, scenario)
    (keep,) = [c for c in app.link.submit.commands if isinstance(c, control.Keep)]
    assert keep.experiment_id == 4


def test_the_tree_grows_with_the_night_and_keeps_the_cursor_and_the_folds():
    app = fed()

    async def scenario(pilot):
        await pilot.press("t", "down", "down", "down", "space", "down")
        screen = app.screen
        assert screen.selected_id == 4
        finished = replace(experiment(11, 1, "ADAM_BETA2 0.95 -> 0.99", status=Status.OK, value=0.9990), kind=Kind.PROPOSAL)
        app.sink(events.RunFinished(1, finished))
        await pilot.pause()
        app.drain()
        await pilot.pause()
        assert screen.selected_id == 4
        widget = screen.query_one("#research-tree")
        (three,) = [n for n in widget.root.children if n.data == 3]
        assert not three.is_expanded
        assert [n.data for n in widget.root.children][-1] == 11
    drive(app, scenario)


def test_snapshot_of_the_tree(snap_compare):
    async def opened(pilot):
        await pilot.pause()
        pilot.app.drain()
        await pilot.press("t")
        await pilot.pause()

    assert snap_compare(fed(), terminal_size=(130, 24), run_before=opened)
