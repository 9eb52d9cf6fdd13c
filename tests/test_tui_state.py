"""The screen's model and its text, without a terminal: what the TUI says about a night of
research, folded from the engine's events."""

from dataclasses import replace

import pytest

from results.records import Decision, DecisionSource, Status
from scheduler.engine import events
from scheduler.runs.runparse import Progress
from tui import figures, lane_text
from tui.lane_grid import columns_for
from tui.lane_pane import DENSE_HEIGHT
from tui.log_follow import LogFollower
from tui.state import ResearchView
from tui.transcript import NO_TRANSCRIPT, render

from tui_fakes import experiment, lanes, research


def view_of(evs, count=2, review=False, cpu=False):
    view = ResearchView("nov21", lanes(count, cpu), review=review)
    for event in evs:
        view.apply(event)
    return view


def test_every_progress_line_reaches_the_curve_but_a_burst_marks_its_lane_once():
    view = view_of([events.RunStarted(0, experiment(1, 0, "x"))])
    view.take_changes()
    for step in range(200):
        view.apply(events.RunProgress(0, 1, Progress(step=step, pct=step / 2, loss=4.0 - step / 100)))
    changes = view.take_changes()
    assert len(view.lanes[0].curve) == 200
    assert changes.lanes == {0} and not changes.table and not changes.header
    assert view.take_changes().lanes == set()  # taken once


def test_the_header_figures_of_a_night():
    view = view_of(research(2))
    counts = view.counts()
    assert (counts.done, counts.kept, counts.discarded, counts.crashed) == (6, 2, 1, 1)
    assert (counts.running, counts.queued) == (2, 1)
    best = view.best()
    assert best.id == 6 and view.value(best) == pytest.approx(0.9885)
    assert view.delta(best) == pytest.approx(0.9885 - (0.9982 + 0.9978) / 2)
    assert view.llm_tokens == 3 * 900 + 5200 + 5300 + 5400
    assert figures.money(view.llm_cost, view.llm_unpriced) == "$0.09"


def test_llm_cost_is_a_dash_when_no_price_is_known_and_a_floor_when_some_is_missing():
    view = view_of([events.LlmCallFinished(0, "worker", "local-model", "ok", 100, 20, None)])
    assert figures.money(view.llm_cost, view.llm_unpriced) == figures.MISSING
    view.apply(events.LlmCallFinished(0, "worker", "claude", "ok", 100, 20, 0.5))
    assert figures.money(view.llm_cost, view.llm_unpriced) == "≥$0.50"


def test_a_persons_later_override_wins_over_a_stored_row_written_before_it():
    exp = experiment(3, 0, "win", status=Status.OK, value=0.9)
    view = view_of([events.RunFinished(0, exp), events.Decided(3, "keep", "auto", "better"),
                    events.Decided(3, "discard", "user", "discarded by ada via tui")])
    stale = replace(exp, decision=Decision.KEEP, decision_source=DecisionSource.AUTO, decision_reason="better")
    view.merge_stored([stale])  # the store had not caught up with the override yet
    row = view.experiments[3]
    assert (row.decision, row.decision_source) == (Decision.DISCARD, DecisionSource.USER)


def test_a_stored_row_never_moves_an_experiment_backwards_but_adds_what_had_no_event():
    view = view_of([events.RunFinished(0, experiment(3, 0, "done", status=Status.OK, value=0.9))])
    view.merge_stored([experiment(3, 0, "done", status=Status.RUNNING),
                       experiment(4, -1, "rerun #3: done", kind="rerun", status=Status.QUEUED)])
    assert view.experiments[3].status is Status.OK
    assert view.experiments[4].status is Status.QUEUED


def test_a_lane_paused_while_it_trains_stays_paused_until_it_is_resumed():
    view = view_of([events.RunStarted(0, experiment(1, 0, "x")), events.LaneChanged(0, "training", "x")])
    view.asked(0, "pausing")
    view.apply(events.LaneChanged(0, "training", "paused: the running experiment finishes, no new one starts",
                                  paused=True))
    lane = view.lanes[0]
    assert lane.paused and lane.pending is None
    view.apply(events.LaneChanged(0, "training", "next proposal", paused=True))  # a draft landed meanwhile
    assert lane.paused
    view.asked(0, "resuming")
    view.apply(events.LaneChanged(0, "training", ""))
    assert not lane.paused and lane.pending is None
    view.apply(events.LaneChanged(0, "paused", paused=True))
    view.apply(events.LaneChanged(0, "proposing"))
    assert not lane.paused  # a paused lane that is not training says "paused"


def test_a_run_that_used_its_budget_is_evaluating():
    view = view_of([events.RunStarted(0, experiment(1, 0, "x"))])
    view.apply(events.RunProgress(0, 1, Progress(step=10, pct=50.0, remaining_s=150)))
    assert view.lanes[0].activity == "training"
    view.apply(events.RunProgress(0, 1, Progress(step=20, pct=99.8, remaining_s=0)))
    assert view.lanes[0].activity == "evaluating"
    view.apply(events.RunFinished(0, experiment(1, 0, "x", status=Status.OK, value=1.0)))
    view.apply(events.LaneChanged(0, "proposing"))
    assert view.lanes[0].activity == "proposing"


def test_the_table_keeps_rows_holding_every_word_and_sorts_missing_values_last():
    view = view_of(research(2))
    assert [e.id for e in view.table("lr keep")] == [3, 6]
    assert [e.id for e in view.table("oom")] == [5]
    by_value = [e.id for e in view.table(sort="value")]
    assert by_value[:5] == [6, 3, 2, 1, 4] and set(by_value[5:]) == {5, 7, 8, 9}
    assert [e.id for e in view.table(sort="value", reverse=True)][:1] == [4]


def test_review_acts_on_the_selected_proposal_else_the_lanes_else_the_oldest():
    a, b = experiment(5, 0, "a", status=Status.QUEUED), experiment(6, 1, "b", status=Status.QUEUED)
    view = view_of([events.ProposalReady(0, a), events.ProposalReady(1, b)], review=True)
    assert view.awaiting_review(prefer=6) == 6
    assert view.awaiting_review(lane=1) == 6
    assert view.awaiting_review() == 5
    view.reviewed(5)
    assert view.awaiting_review() == 6
    view.apply(events.RunStarted(1, replace(b, status=Status.RUNNING)))
    assert view.awaiting_review() is None


def test_best_so_far_is_a_step_line_of_the_kept_results():
    view = view_of(research(2))
    xs, ys, best_x, best_y = view.best_so_far()
    assert xs == [1, 2, 3, 4, 6]
    assert best_y == sorted(best_y, reverse=True)  # never goes up
    assert best_y[-1] == pytest.approx(0.9885) and best_y[0] == pytest.approx(0.9982)


@pytest.mark.parametrize("count,width,height", [(1, 80, 11), (2, 80, 11), (4, 80, 11), (8, 80, 11), (8, 200, 30)])
def test_every_pane_fits_on_the_smallest_terminal(count, width, height):
    columns = columns_for(count, width, height)
    rows = -(-count // columns)
    assert width // columns >= 36 or columns == 1
    assert height // rows >= 2  # at least the two dense lines: activity and progress, result
    view = view_of(research(count), count)
    for lane in view.lanes.values():
        pane_height = height // rows
        bordered = pane_height >= DENSE_HEIGHT
        shown = lane_text.lines(lane, width // columns - 4, pane_height - (2 if bordered else 0), bordered=bordered)
        assert len(shown) <= pane_height and all(line.cell_len <= width // columns - 4 for line in shown)
        assert any("#" in line.plain for line in shown)  # the running experiment is always named


def test_a_short_pane_keeps_progress_and_result_before_telemetry():
    view = view_of(research(2))
    shown = [line.plain for line in lane_text.lines(view.lanes[0], 40, 3)]
    assert shown[0].startswith("#7") and "%" in shown[1] and shown[2].startswith("last #5")


def test_a_cpu_lane_says_it_has_no_telemetry():
    view = view_of([events.LaneChanged(0, "proposing")], cpu=True)
    shown = [line.plain for line in lane_text.lines(view.lanes[0], 60, 8)]
    assert "CPU lane: no GPU telemetry" in shown


def test_a_sparkline_squeezes_a_minute_into_any_width_and_leaves_gaps_for_missing_readings():
    assert figures.sparkline([0, 50, 100], 3, 0, 100) == "▁▅█"
    assert len(figures.sparkline(list(range(60)), 7)) == 7
    assert figures.sparkline([None, 1.0], 2) == " ▅"
    assert figures.bar(0.5, 8) == "████░░░░"


def test_following_a_log_returns_complete_lines_including_progress_ended_by_cr(tmp_path):
    path = tmp_path / "run.log"
    follower = LogFollower(path)
    assert follower.read() == []  # not there yet
    path.write_text("starting\nstep 1 (10%)\rstep 2 (20%)\rstep 3")
    assert follower.read() == ["starting", "step 1 (10%)", "step 2 (20%)"]
    with open(path, "a") as f:
        f.write(" (30%)\n---\nval_bpb: 0.9")
    assert follower.read() == ["step 3 (30%)", "---"]
    assert follower.read(final=True) == ["val_bpb: 0.9"]


def test_a_transcript_shows_every_message_and_says_when_there_is_none(tmp_path):
    assert render({}).plain == NO_TRANSCRIPT
    path = tmp_path / "t.jsonl"
    path.write_text('{"role": "system", "content": "You edit train.py."}\n'
                    '{"role": "assistant", "content": "", "tool": "edit_file", "arguments": {"path": "train.py"}}\n'
                    'not json\n')
    text = render({"transcript": str(path)}).plain
    assert "You edit train.py." in text and 'edit_file {"path": "train.py"}' in text and "line 3" in text
