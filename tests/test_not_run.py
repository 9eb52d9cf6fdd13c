"""What never started says so (issue: "the log never says queued about something that will not
run"): a real engine on a real repository and DuckDB file; a night cut by --max-experiments and
one stopped by a person (q) leave nothing `queued` or `running` after exit, every experiment that
never started is `not_run` with the night's reason, and --resume queues each again and runs it.
(The spending limit's night: tests/test_llm_costs.py; a killed supervisor's leftovers are
settled at resume: tests/test_supervisor_cli.py.)"""

from results.records import Kind, Status
from scheduler.engine import control, events
from scheduler.gpus import Gpu
from test_engine import ScriptedProposer, engine, quick_retries  # noqa: F401 - an autouse fixture

ONE_LANE = [Gpu(0, None, None, "cpu")]


def statuses(store):
    return {e.id: e for e in store.experiments()}


def resume(tmp_path, proposer, **settings):
    """A second session of the same tag on the same repository and log."""
    from scheduler.config import Config
    from scheduler.engine.supervisor import Supervisor
    from scheduler.runs.workspace import Workspace
    from test_engine import UPSTREAM_TARGET, _OPEN_STORES

    store = _OPEN_STORES[-1]
    received = []
    config = Config(repo=tmp_path / "repo", tag="t", budget=1.0, hung_seconds=20.0, timeout_seconds=40.0,
                    kill_grace_seconds=1.0, target=UPSTREAM_TARGET, baseline_runs=1, confirm=False, resume=True,
                    **settings)
    sup = Supervisor(config, store, Workspace(config.repo, "t", config.target.editable), ONE_LANE, proposer,
                     received.append, telemetry=False)
    return sup, store, received


def test_a_night_cut_by_max_experiments_leaves_its_drafts_not_run_and_resume_runs_them(tmp_path):
    # One lane: the baseline runs while the first proposal is drafted, the proposal runs while
    # the second is drafted; --max-experiments 2 ends the night with the second never started.
    sup, store, _ = engine(tmp_path, ScriptedProposer([{"VALUE": 0.9}, {"VALUE": 0.8}]), gpus=ONE_LANE,
                           baseline_runs=1, max_experiments=2)
    assert sup.run() == 0
    found = statuses(store)
    assert not [e for e in found.values() if e.status in (Status.QUEUED, Status.RUNNING)]
    (left,) = [e for e in found.values() if e.status is Status.NOT_RUN]
    assert left.kind is Kind.PROPOSAL  # drafted ahead while the last run trained
    assert left.error == "not run: the night ended (2 experiments run)" and left.finished_at is not None

    sup, store, received = resume(tmp_path, ScriptedProposer([]), max_experiments=4)
    assert sup.run() == 0
    assert "1 experiment(s) from the last session queued again" in [
        e.message for e in received if isinstance(e, events.Notice)]
    again = statuses(store)[left.id]
    assert again.status is Status.OK and again.error is None and again.decision is not None


def test_a_night_a_person_stops_leaves_nothing_queued_and_says_why(tmp_path):
    quit_sent = []

    def quit_while_one_waits(event):
        if isinstance(event, events.ProposalReady) and not quit_sent:
            quit_sent.append(event.experiment.id)
            sup.submit(control.Quit(by="ada via tui"))

    sup, store, _ = engine(tmp_path, ScriptedProposer([{"VALUE": 0.9}, {"VALUE": 0.8}, {"VALUE": 0.7}]),
                           gpus=ONE_LANE, baseline_runs=1, max_experiments=10, sink=quit_while_one_waits)
    assert sup.run() == 0
    found = statuses(store)
    assert not [e for e in found.values() if e.status in (Status.QUEUED, Status.RUNNING)]
    waiting = found[quit_sent[0]]
    assert waiting.status is Status.NOT_RUN and waiting.error == "not run: the night ended (stopped by request)"

    sup, store, _ = resume(tmp_path, ScriptedProposer([]), max_experiments=3)
    assert sup.run() == 0
    assert statuses(store)[waiting.id].status is Status.OK


def test_not_run_is_never_counted_as_run():
    from results.records import Experiment
    from results.report import results_tsv
    from tui.state import ResearchView

    never = Experiment(run_id="r", lane=0, description="never", status=Status.NOT_RUN, id=3, error="not run: ...")
    assert not Status.NOT_RUN.ran and Status.NOT_RUN.finished
    assert results_tsv([never]).count("\n") == 1  # the header alone
    view = ResearchView("t", [])
    view.merge_stored([never])
    assert view.counts().done == 0 and view.status_text(view.experiments[3]) == "not_run"
