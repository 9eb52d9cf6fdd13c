"""The TUI driving a real engine: a real Supervisor on a real git repository, real fake-trainer
children, a real DuckDB store. Each test presses keys as a person would and checks what the
engine and the database did, not just what the screen shows."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

import pytest

import scheduler.engine.drafting as drafting_module
from results.records import Decision, DecisionSource, Status
from results.store import Store
from scheduler.engine import control, events
from scheduler.config import Config, Target
from scheduler.gpus import Gpu
from scheduler.engine.supervisor import Supervisor
from scheduler.runs.workspace import Workspace
from tui.app import ResearchApp
from tui.confirm import ConfirmScreen
from tui.detail import DetailScreen
from tui.experiments import ExperimentsPanel
from tui.link import EngineLink

from fake_research import ScriptedProposer, make_repo, set_constants

UPSTREAM_TARGET = Target(editable=("train.py",), command="python train.py")
BY = "ada via tui"
WAIT_SECONDS = 60.0


_OPEN_STORES = []


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(drafting_module, "PROPOSAL_RETRY_SECONDS", 0.05)


@pytest.fixture(autouse=True)
def close_stores():
    yield
    while _OPEN_STORES:
        _OPEN_STORES.pop().close()


class Research:
    """An app around a live engine, and the handles a test checks."""

    def __init__(self, tmp_path, steps, duration: float | None = None, **settings):
        repo = make_repo(tmp_path / "repo")
        if duration is not None:
            set_constants(repo / "train.py", DURATION=duration)
            subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "slower"], cwd=repo,
                           check=True)
        settings = {"budget": 1.0, "hung_seconds": 30.0, "timeout_seconds": 60.0, "kill_grace_seconds": 1.0,
                    **settings}
        self.config = Config(repo=repo, tag="t", target=UPSTREAM_TARGET, **settings)
        self.store = Store(tmp_path / "log.duckdb")
        _OPEN_STORES.append(self.store)
        self.pids: dict[int, int] = {}
        self.sup = Supervisor(self.config, self.store, Workspace(repo, "t", self.config.target.editable),
                              [Gpu(0, None, None, "cpu"), Gpu(1, None, None, "cpu")],
                              ScriptedProposer(steps), self._sink, telemetry=False)
        self.app = ResearchApp(EngineLink.of(self.sup, self.config, self.store), user="ada", reload_seconds=0.2)

    def _sink(self, event) -> None:
        if isinstance(event, events.RunStarted) and event.pid:
            self.pids[event.experiment.id] = event.pid
        self.app.sink(event)

    def run(self, scenario, size=(110, 32)) -> None:
        async def main():
            async with self.app.run_test(size=size) as pilot:
                try:
                    await scenario(pilot)
                finally:
                    if self.app.engine_running:  # a failed test must not leave the engine running
                        self.sup.submit(control.Quit(now=True))
        asyncio.run(main())

    def rows(self, sql, params=()):
        with self.store._lock:  # the engine writes on its own thread through the same connection
            return self.store.con.execute(sql, list(params)).fetchall()

    def experiment(self, description):
        return next((e for e in self.store.experiments() if e.description == description), None)

    def overrides(self, kind):
        return [json.loads(d) for (d,) in self.rows("SELECT detail FROM events WHERE kind = ? AND source = 'user' "
                                                    "ORDER BY id", [kind])]


async def until(pilot, predicate, what: str, limit: float = WAIT_SECONDS):
    """Let the app and the engine run until `predicate()` holds; fail saying what never came."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def decided(research, description, decision):
    exp = research.app.view.experiments
    return any(e.description == description and e.decision is decision for e in exp.values())


async def select(pilot, research, description):
    exp = next(e for e in research.app.view.experiments.values() if e.description == description)
    panel = research.app.query_one(ExperimentsPanel)
    panel.show(force=True)
    panel.select(exp.id)
    await pilot.pause()
    assert panel.selected_id == exp.id
    return exp


async def quit_gracefully(pilot, research):
    await pilot.press("q")
    await until(pilot, lambda: isinstance(research.app.screen, ConfirmScreen), "the quit question")
    await pilot.press("y")
    await until(pilot, lambda: research.app.engine_done.is_set(), "the engine to stop")


async def quit_now(pilot, research):
    await pilot.press("q")
    if isinstance(research.app.screen, ConfirmScreen):  # else the research had ended: no question
        await pilot.press("q")
    await until(pilot, lambda: research.app.engine_done.is_set(), "the engine to stop")


# After the steps a test is about, runs that keep the engine busy until the test quits.
BUSY = [{"MODE": "slow", "description": "busy"}] * 2


def test_k_then_y_keeps_a_discarded_result_and_the_log_says_who(tmp_path):
    research = Research(tmp_path, [{"VALUE": 1.2, "description": "worse"}, *BUSY])

    async def scenario(pilot):
        await until(pilot, lambda: decided(research, "worse", Decision.DISCARD), "the automatic discard")
        exp = await select(pilot, research, "worse")
        await pilot.press("k")
        assert isinstance(research.app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: (research.experiment("worse").decision_source or None) is DecisionSource.USER,
                    "the person's keep in the store")
        row = research.experiment("worse")
        assert row.decision is Decision.KEEP and row.decision_reason == f"kept by {BY}"
        assert research.sup.frontier == exp.commit  # the engine moved the frontier to it
        await until(pilot, lambda: research.overrides("decision:keep"), "the override's events row")
        assert research.overrides("decision:keep")[-1]["reason"] == f"kept by {BY}"
        await quit_now(pilot, research)

    research.run(scenario)
    assert research.app.return_value == 0


def test_d_asks_first_and_only_y_discards(tmp_path):
    research = Research(tmp_path, [{"VALUE": 0.8, "description": "better"}, *BUSY])

    async def scenario(pilot):
        await until(pilot, lambda: decided(research, "better", Decision.KEEP), "the automatic keep")
        await select(pilot, research, "better")
        await pilot.press("d")
        assert isinstance(research.app.screen, ConfirmScreen)
        await pilot.press("n")  # a stray d changes nothing
        await pilot.press("d", "enter")  # nor does d then enter: the focused answer is "cancel"
        assert not any(isinstance(c, control.Discard) for c in research.app.commands_sent)
        await pilot.press("d", "y")
        await until(pilot, lambda: research.experiment("better").decision is Decision.DISCARD, "the discard")
        row = research.experiment("better")
        assert row.decision_source is DecisionSource.USER and row.decision_reason == f"discarded by {BY}"
        assert research.sup.frontier == row.parent_commit  # the frontier went back
        await quit_now(pilot, research)

    research.run(scenario)


def test_p_pauses_the_selected_lane_and_p_again_resumes_it(tmp_path):
    research = Research(tmp_path, [{"VALUE": 0.9}] * 4, duration=1.0)

    async def scenario(pilot):
        await until(pilot, lambda: research.app.view.lanes[1].running is not None, "lane 1 to train")
        await pilot.press("2", "p")
        await until(pilot, lambda: research.sup.lanes[1].paused, "the engine to pause lane 1")
        await until(pilot, lambda: research.app.view.lanes[1].paused and not research.app.view.lanes[1].pending,
                    "the pane to show the pause")
        assert not research.sup.lanes[0].paused
        await until(pilot, lambda: research.overrides("pause"), "the pause's events row")
        assert research.overrides("pause") == [{"by": BY}]
        await pilot.press("p")
        await until(pilot, lambda: not research.sup.lanes[1].paused, "the engine to resume lane 1")
        await until(pilot, lambda: research.overrides("resume") == [{"by": BY}], "the resume's events row")
        research.sup.submit(control.Quit(now=True))

    research.run(scenario)


def test_s_then_y_stops_the_selected_lanes_run_and_it_ends_killed(tmp_path):
    research = Research(tmp_path, [{"MODE": "slow", "description": "slow"}, *BUSY])

    async def scenario(pilot):
        app = research.app
        await until(pilot, lambda: any(lane.running is not None and lane.running.description == "slow"
                                       for lane in app.view.lanes.values()), "the slow run to start")
        lane = next(n for n, v in app.view.lanes.items() if v.running and v.running.description == "slow")
        await pilot.press(str(lane + 1), "s")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: research.experiment("slow").status is Status.KILLED, "the run to be killed")
        assert research.overrides("stop") == [{"by": BY}]
        await quit_now(pilot, research)

    research.run(scenario)
    assert research.experiment("slow").decision is Decision.DISCARD


def test_r_queues_a_rerun_of_the_selected_experiment(tmp_path):
    research = Research(tmp_path, [{"VALUE": 1.1, "description": "again"}, *BUSY])

    async def scenario(pilot):
        await until(pilot, lambda: decided(research, "again", Decision.DISCARD), "the first result")
        exp = await select(pilot, research, "again")
        await pilot.press("r")
        await until(pilot, lambda: any(e.rerun_of == exp.id for e in research.store.experiments()),
                    "the rerun in the store")
        rerun = next(e for e in research.store.experiments() if e.rerun_of == exp.id)
        assert rerun.commit == exp.commit and rerun.kind == "rerun"
        assert research.overrides("rerun") == [{"by": BY, "as": rerun.id}]
        # Queued, a run has no event of its own: the table finds it in the store.
        await until(pilot, lambda: rerun.id in research.app.view.experiments, "the rerun in the table")
        await quit_now(pilot, research)

    research.run(scenario)


def test_a_approves_and_x_rejects_proposals_held_for_review(tmp_path):
    research = Research(tmp_path, [{"VALUE": 0.9, "description": "first"}, {"VALUE": 0.8, "description": "second"}],
                        review=True)

    async def scenario(pilot):
        view = research.app.view
        await until(pilot, lambda: view.awaiting_review() is not None, "a proposal held for review")
        approved = view.awaiting_review()
        research.app.query_one(ExperimentsPanel).select(approved)  # a and x act on the selected row
        await pilot.pause()
        await pilot.press("a")
        await until(pilot, lambda: view.awaiting_review() not in (None, approved), "the second proposal")
        rejected = view.awaiting_review()
        research.app.query_one(ExperimentsPanel).select(rejected)
        await pilot.pause()
        await pilot.press("x")
        await until(pilot, lambda: research.store.experiments() and next(
            e for e in research.store.experiments() if e.id == rejected).status is Status.REJECTED, "the rejection")
        await until(pilot, lambda: next(e for e in research.store.experiments() if e.id == approved).status
                    is Status.OK, "the approved proposal to run")
        assert research.overrides("approve") == [{"by": BY}] and research.overrides("reject") == [{"by": BY}]
        await quit_now(pilot, research)

    research.run(scenario)


def test_enter_opens_the_diff_log_and_transcript_of_the_selected_experiment(tmp_path):
    research = Research(tmp_path, [{"VALUE": 0.9, "description": "lower"}, *BUSY])

    async def scenario(pilot):
        app = research.app
        await until(pilot, lambda: decided(research, "lower", Decision.KEEP), "the result")
        exp = await select(pilot, research, "lower")
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen) and app.screen.experiment_id == exp.id
        await until(pilot, lambda: app.screen.diff_text is not None, "the diff")
        assert "-VALUE = 1.0" in app.screen.diff_text and "+VALUE = 0.9" in app.screen.diff_text
        await pilot.press("2")
        log = app.screen.query_one("#log-body")
        await until(pilot, lambda: any("val_bpb" in line for line in log.lines), "the log")
        assert "no transcript (offline mutator)" in str(app.screen.query_one("#transcript-body").render())
        await pilot.press("escape")
        assert not isinstance(app.screen, DetailScreen)
        await quit_now(pilot, research)

    research.run(scenario)


def test_q_then_y_lets_the_running_experiments_finish_then_closes_with_the_engines_code(tmp_path):
    research = Research(tmp_path, [{"VALUE": 0.9}] * 10, duration=1.5)

    async def scenario(pilot):
        app = research.app
        await until(pilot, lambda: any(v.running for v in app.view.lanes.values()), "a run")
        await quit_gracefully(pilot, research)
        assert [c for c in app.commands_sent if isinstance(c, control.Quit)] == [control.Quit(now=False, by=BY)]

    research.run(scenario)
    statuses = {e.status for e in research.store.experiments() if e.started_at is not None}
    assert statuses == {Status.OK}  # finished, not cut short
    assert research.app.return_value == 0 and research.app.engine_code == 0


def test_q_then_q_stops_the_runs_now_and_leaves_no_child(tmp_path):
    research = Research(tmp_path, [{"MODE": "slow"}] * 4, duration=30.0)

    async def scenario(pilot):
        app = research.app
        await until(pilot, lambda: all(v.running for v in app.view.lanes.values()), "both lanes to train")
        await pilot.press("q", "q")
        await until(pilot, lambda: app.engine_done.is_set(), "the engine to stop")

    research.run(scenario)
    assert {e.status for e in research.store.experiments() if e.started_at} == {Status.INTERRUPTED}
    assert [r[0] for r in research.rows("SELECT detail FROM events WHERE kind = 'quit:now'")] == [json.dumps({"by": BY})]
    for pid in research.pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_closing_the_app_while_runs_train_stops_them(tmp_path):
    research = Research(tmp_path, [{"MODE": "slow"}] * 4, duration=30.0)

    async def scenario(pilot):
        app = research.app
        await until(pilot, lambda: all(v.running for v in app.view.lanes.values()), "both lanes to train")
        app.exit()  # however the app closes (an error of ours, say), no run outlives it

    research.run(scenario)
    assert research.app.engine_done.is_set()
    assert {e.status for e in research.store.experiments() if e.started_at} == {Status.INTERRUPTED}
    for pid in research.pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_app_stays_open_after_the_research_finishes_until_q(tmp_path):
    research = Research(tmp_path, [], max_experiments=2)

    async def scenario(pilot):
        app = research.app
        await until(pilot, lambda: app.view.finished is not None and app.engine_done.is_set(), "the end")
        await pilot.pause(0.3)
        assert app.is_running and "finished" in str(app.query_one("#header").render())
        await pilot.press("q")  # nothing runs: no question

    research.run(scenario)
    assert research.app.return_value == 0
