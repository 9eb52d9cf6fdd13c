"""The engine on real git repositories, real child processes and a real DuckDB file: pinning,
secrets, every way a run can end, the file an agent may not touch, decisions and the frontier."""

import subprocess
import threading
import time
from pathlib import Path

import pytest

import scheduler.engine.drafting as drafting_module
from results.records import Decision, Status
from results.store import Store
from scheduler.engine import control, events
from scheduler.config import Config, Target
from scheduler.gpus import Gpu
from scheduler.engine.inbox import ClusterReach, GpuLost, Reach
from scheduler.engine.supervisor import Supervisor
from scheduler.runs.workspace import Workspace

from fake_research import ScriptedProposer, make_repo

UPSTREAM_TARGET = Target(editable=("train.py",), command="python train.py")
_OPEN_STORES = []


@pytest.fixture(autouse=True)
def close_stores():
    yield
    while _OPEN_STORES:  # also when a test failed before its own close()
        _OPEN_STORES.pop().close()


def engine(tmp_path, proposer, *, gpus=None, sink=None, trainer_tail="", **settings):
    """`trainer_tail`: lines the fake train.py runs after its summary (committed before the
    research starts)."""
    repo = make_repo(tmp_path / "repo")
    if trainer_tail:
        with (repo / "train.py").open("a") as f:
            f.write(trainer_tail)
        git(repo, "commit", "-qam", "the trainer prints more", "--author", "t <t@t>")
    # Generous limits by default, so a loaded machine never turns an ok run into a hung one;
    # the test of every outcome tightens them. Two baselines (not the default four): these tests
    # are about the plumbing, and the fake trainer has no noise to estimate.
    # No claim at the end unless a test asks: tests/test_confirmation.py is about it.
    settings = {"budget": 1.0, "hung_seconds": 20.0, "timeout_seconds": 40.0, "kill_grace_seconds": 1.0,
                "target": UPSTREAM_TARGET, "baseline_runs": 2, "confirm": False, **settings}
    config = Config(repo=repo, tag="t", **settings)
    store = Store(tmp_path / "log.duckdb")
    _OPEN_STORES.append(store)
    gpus = gpus or [Gpu(0, None, None, "cpu"), Gpu(1, None, None, "cpu")]
    received = []

    def collect(event):
        received.append(event)
        if sink is not None:
            sink(event)

    sup = Supervisor(config, store, Workspace(repo, "t", config.target.editable), gpus, proposer, collect,
                     telemetry=False)
    return sup, store, received


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(drafting_module, "PROPOSAL_RETRY_SECONDS", 0.05)


def test_each_child_sees_only_its_gpu_its_worktree_and_no_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-hunter2")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "hunter2-token")
    monkeypatch.setenv("AUTORESEARCH_PASSWORD", "hunter2")  # an allowed prefix does not let a secret through
    gpus = [Gpu(0, 0, "GPU-a", "Fake GPU"), Gpu(1, 3, "GPU-b", "Fake GPU")]
    proposer = ScriptedProposer([{"VALUE": 0.9}, {"VALUE": 0.95}])
    sup, store, _ = engine(tmp_path, proposer, gpus=gpus, max_experiments=4)
    assert sup.run() == 0
    runs = [e for e in store.experiments() if e.status is Status.OK]
    assert len(runs) == 4
    for e in runs:
        assert e.extra["cuda_visible"] == f"[{e.gpu_index}]"
        assert e.extra["device_order"] == "PCI_BUS_ID"
        # a lane's runs take turns between its two worktrees; no other lane's
        assert e.extra["cwd"] == e.worktree and Path(e.worktree).name in (f"lane-{e.lane}", f"lane-{e.lane}-draft")
        assert e.extra["leaked"] == "[]"
    assert {e.gpu_index for e in runs} == {0, 3}
    store.close()


OUTCOMES = [
    ({"MODE": "crash"}, Status.CRASH, "exploded"),
    ({"MODE": "oom"}, Status.OOM, "out of memory"),
    ({"MODE": "nan"}, Status.NAN, "FAIL"),
    ({"MODE": "hang"}, Status.HUNG, "no output"),
    ({"MODE": "stubborn"}, Status.HUNG, "no output"),  # ignores SIGTERM: SIGKILL ends it
    ({"MODE": "slow", "DURATION": 0.4}, Status.TIMEOUT, "ran past"),
    ({"edit": "prepare.py", "description": "touch the harness"}, Status.REJECTED, "prepare.py"),
    ({"VALUE": 0.9, "description": "a real win"}, Status.OK, None),
    ({"BONUS": -0.2, "description": "worse than the frontier"}, Status.OK, None),  # a line no other step edits
    ({"MODE": "slow", "description": "stopped by a person"}, Status.KILLED, "stopped by the user"),
]


def test_every_outcome_is_recorded_with_its_status_and_the_lanes_go_on(tmp_path):
    steps = [dict(step, description=step.get("description") or step["MODE"] + (" slow" if "DURATION" in step else ""))
             for step, _, _ in OUTCOMES]
    holder = {}

    def stop_the_slow_one(event):
        if isinstance(event, events.RunStarted) and event.experiment.description == "stopped by a person":
            holder["sup"].submit(control.StopRun(event.lane))

    # Two baselines, every outcome but the rejected one, and the kept win's replica.
    sup, store, received = engine(tmp_path, ScriptedProposer(steps), sink=stop_the_slow_one,
                                  max_experiments=2 + len(OUTCOMES) - 1 + 1, hung_seconds=3.0, timeout_seconds=6.0)
    holder["sup"] = sup
    assert sup.run() == 0
    by_description = {e.description: e for e in store.experiments() if e.kind == "proposal"}
    for step, (_, status, words) in zip(steps, OUTCOMES):
        e = by_description[step["description"]]
        assert e.status is status, (e.description, e.status, e.error)
        if words:
            assert words in (e.error or ""), (e.description, e.error)
        if status not in (Status.OK, Status.REJECTED):
            assert e.decision is Decision.DISCARD
    assert by_description["a real win"].decision is Decision.KEEP
    assert by_description["worse than the frontier"].decision is Decision.DISCARD
    # both lanes kept working after failures, and nothing of the rejected commit ever ran
    assert {e.lane for e in store.experiments() if e.status.finished and e.status is not Status.REJECTED} == {0, 1}
    assert by_description["touch the harness"].started_at is None
    assert any(isinstance(ev, events.Finished) for ev in received)
    store.close()


def test_a_win_advances_the_frontier_branch_and_the_log_agrees(tmp_path):
    proposer = ScriptedProposer([{"VALUE": 0.9, "description": "win"}, {"VALUE": 1.2, "description": "loss"}])
    sup, store, _ = engine(tmp_path, proposer, max_experiments=4)
    start = git(sup.ws.root, "rev-parse", "HEAD")
    assert sup.run() == 0
    tip = git(sup.ws.root, "rev-parse", "autoresearch/t")
    kept = [e for e in store.experiments() if e.decision is Decision.KEEP and e.kind != "baseline"]
    assert [e.description for e in kept] == ["win"] and kept[0].commit == tip
    assert git(sup.ws.root, "rev-parse", f"{tip}^") == start  # fast-forward: one commit on top of the start
    assert "VALUE = 0.9" in git(sup.ws.root, "show", f"{tip}:train.py")
    assert git(sup.ws.root, "rev-parse", "main") == start  # the user's branch is untouched
    loss = next(e for e in store.experiments() if e.description == "loss")
    assert git(sup.ws.root, "rev-parse", f"refs/autoresearch/t/{loss.id}") == loss.commit  # kept reachable
    store.close()


def test_the_baselines_measure_noise_and_a_win_inside_it_is_confirmed_before_promotion(tmp_path, monkeypatch):
    # Baselines 1.00 and 1.02: sigma 0.0141 from 1 dof, whose 80% upper bound (x3.95) is
    # 0.0558; one run against two needs 2.5 * 0.0558 * sqrt(1 + 1/2) = 0.1709. A result of 0.92
    # beats their mean by 0.09: past one standard error, short of the margin, so it runs again.
    # Its first run was picked for its luck and never counts in sigma; the re-runs (0.92
    # again, twice) add a degree of freedom, the bound tightens, and it is kept over 3 runs.
    offsets = tmp_path / "offsets"
    offsets.write_text("0.0\n0.02\n")
    monkeypatch.setenv("AUTORESEARCH_FAKE_OFFSETS", str(offsets))
    sup, store, received = engine(tmp_path, ScriptedProposer([{"VALUE": 0.92, "description": "close win"}]),
                                  max_experiments=4)
    assert sup.run() == 0
    rows = store.experiments()
    assert sorted(e.val_bpb for e in rows if e.kind == "baseline") == [1.0, 1.02]
    win = next(e for e in rows if e.description == "close win")
    confirm = next(e for e in rows if e.kind == "confirm")
    assert confirm.confirms == win.id and confirm.commit == win.commit
    confirm_event = next(ev for ev in received if isinstance(ev, events.Decided) and ev.decision == "confirm")
    assert confirm_event.experiment_id == win.id and confirm_event.rule == "retest"
    assert confirm_event.margin == pytest.approx(0.1709, abs=1e-4)
    assert confirm_event.sigma == pytest.approx(0.0141, abs=1e-4) and confirm_event.dof == 1
    assert win.decision is Decision.KEEP and "over 3 runs" in win.decision_reason
    keep_event = next(ev for ev in received if isinstance(ev, events.Decided) and ev.experiment_id == win.id
                      and ev.decision == "keep")
    assert keep_event.dof == 2 and keep_event.delta == pytest.approx(0.09)
    assert git(sup.ws.root, "rev-parse", "autoresearch/t") == win.commit
    store.close()


def test_a_loss_within_noise_is_discarded_without_a_rerun(tmp_path, monkeypatch):
    offsets = tmp_path / "offsets"
    offsets.write_text("0.0\n0.02\n")
    monkeypatch.setenv("AUTORESEARCH_FAKE_OFFSETS", str(offsets))
    sup, store, received = engine(tmp_path, ScriptedProposer([{"VALUE": 0.99, "description": "tiny gain"}]),
                                  max_experiments=3)
    assert sup.run() == 0
    rows = store.experiments()
    gain = next(e for e in rows if e.description == "tiny gain")
    assert gain.decision is Decision.DISCARD and "no better than noise" in gain.decision_reason
    assert not [e for e in rows if e.kind == "confirm"]
    decided = next(ev for ev in received if isinstance(ev, events.Decided) and ev.experiment_id == gain.id)
    assert decided.rule == "within-noise" and decided.delta == pytest.approx(0.02)
    store.close()


def test_a_second_lane_on_a_moved_frontier_is_replayed_onto_it(tmp_path):
    # Both lanes draft from the same frontier; the first win moves it, so the second
    # proposal is replayed on top before it runs or is measured again on top after it won.
    proposer = ScriptedProposer([{"VALUE": 0.9, "description": "first"}, {"BONUS": 0.05, "description": "second"}])
    sup, store, _ = engine(tmp_path, proposer, max_experiments=5)
    assert sup.run() == 0
    tip = git(sup.ws.root, "rev-parse", "autoresearch/t")
    source = git(sup.ws.root, "show", f"{tip}:train.py")
    assert "VALUE = 0.9" in source and "BONUS = 0.05" in source  # both changes are in the frontier
    kept = [e.description for e in store.experiments() if e.decision is Decision.KEEP and e.kind != "baseline"]
    # whichever ran second was replayed before it ran, or verified on the new frontier after
    assert any(d.startswith("first") for d in kept) and any(d.startswith("second") for d in kept)
    store.close()


def test_review_mode_holds_proposals_until_approved_or_rejected(tmp_path):
    proposer = ScriptedProposer([{"VALUE": 0.9, "description": "approve me"},
                                 {"VALUE": 0.8, "description": "reject me"}])
    holder = {}

    def reviewer(event):
        if isinstance(event, events.ProposalReady):
            command = control.Approve if event.experiment.description == "approve me" else control.Reject
            holder["sup"].submit(command(event.experiment.id))

    sup, store, _ = engine(tmp_path, proposer, sink=reviewer, review=True, max_experiments=4)
    holder["sup"] = sup
    assert sup.run() == 0
    rows = {e.description: e for e in store.experiments()}
    assert rows["approve me"].status is Status.OK
    assert rows["reject me"].status is Status.REJECTED and rows["reject me"].started_at is None
    kinds = [r[0] for r in store.con.execute("SELECT kind FROM events ORDER BY id").fetchall()]
    assert "approve" in kinds and "reject" in kinds
    store.close()


def test_a_person_can_discard_a_kept_result_and_the_frontier_goes_back(tmp_path):
    holder = {}

    def undo(event):
        if isinstance(event, events.FrontierAdvanced) and event.experiment_id is not None:
            holder["sup"].submit(control.Discard(event.experiment_id))
            holder["sup"].submit(control.Quit())

    sup, store, _ = engine(tmp_path, ScriptedProposer([{"VALUE": 0.5, "description": "too good"}]), sink=undo,
                           max_experiments=3)
    holder["sup"] = sup
    start = sup.frontier
    assert sup.run() == 0
    row = next(e for e in store.experiments() if e.description == "too good")
    assert (row.decision, row.decision_source.value) == (Decision.DISCARD, "user")
    assert git(sup.ws.root, "rev-parse", "autoresearch/t") == start
    store.close()


def test_changes_to_neighbouring_lines_replay_without_a_conflict(tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / "train.py").write_text("A = 1\nB = 2\nC = 3\n")
    subprocess.run(["git", "commit", "-qam", "three constants", "--author", "t <t@t>"], cwd=repo, check=True,
                   env={**__import__("os").environ, "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    ws = Workspace(repo, "t", ("train.py",))
    start = ws.ensure_frontier()
    draft = ws.worktree("draft")
    commits = {}
    for name, value in (("A", 10), ("B", 20)):
        ws.checkout(draft, start)
        text = (draft / "train.py").read_text().replace(f"{name} = ", f"{name} = {value} #", 1)
        (draft / "train.py").write_text(text)
        commits[name] = ws.commit_draft(draft, start, f"{name} -> {value}").commit
    assert ws.advance(commits["A"], start)
    replayed = ws.replay(ws.worktree("promote"), commits["B"], commits["A"])
    assert replayed is not None  # a three-way merge would call this a conflict
    assert git(repo, "show", f"{replayed}:train.py") == "A = 10 #1\nB = 20 #2\nC = 3"
    assert git(repo, "log", "-1", "--format=%s", replayed) == "B -> 20"
    assert (ws.worktree("promote") / "train.py").read_text() == "A = 10 #1\nB = 20 #2\nC = 3\n"  # checked out
    # in place, from the draft worktree that holds the proposal, and with no worktree at all
    ws.checkout(draft, commits["B"])
    in_place = ws.replay(draft, commits["B"], commits["A"], worktree_at=commits["B"])
    assert git(repo, "rev-parse", f"{in_place}^{{tree}}") == git(repo, "rev-parse", f"{replayed}^{{tree}}")
    assert (draft / "train.py").read_text() == "A = 10 #1\nB = 20 #2\nC = 3\n"
    assert git(draft, "status", "--porcelain") == ""
    nowhere = ws.replay(None, commits["B"], commits["A"])
    assert git(repo, "rev-parse", f"{nowhere}^{{tree}}") == git(repo, "rev-parse", f"{replayed}^{{tree}}")
    # a real conflict (the same line changed both ways) is still refused
    ws.checkout(draft, start)
    (draft / "train.py").write_text("A = 99\nB = 2\nC = 3\n")
    other = ws.commit_draft(draft, start, "A -> 99").commit
    assert ws.replay(ws.worktree("promote"), other, commits["A"]) is None


def test_a_change_already_tried_never_reaches_a_gpu_again(tmp_path):
    # Two proposals with the same change key (as two lanes' agents might both make): the
    # engine, not only the agent, refuses the second before it runs.
    proposer = ScriptedProposer([{"VALUE": 0.9, "description": "same"}, {"VALUE": 0.9, "description": "same"}])
    sup, store, _ = engine(tmp_path, proposer, max_experiments=4)
    assert sup.run() == 0
    same = [e for e in store.experiments() if e.description == "same"]
    assert [e.status for e in same] == [Status.OK, Status.REJECTED]
    assert f"the same change as #{same[0].id}" in same[1].error and same[1].started_at is None
    store.close()


class FlakyProposer(ScriptedProposer):
    """Fails `failures` times with a transient error (a provider's outage), then proposes."""

    def __init__(self, steps, failures):
        super().__init__(steps)
        self.failures = failures

    def propose(self, request):
        with self._lock:
            if self.failures:
                self.failures -= 1
                raise drafting_module.ProposalError("HTTP 529: overloaded", transient=True)
        return super().propose(request)


def test_a_lane_whose_agent_keeps_failing_waits_and_says_why_but_never_gives_up(tmp_path, monkeypatch):
    monkeypatch.setattr(drafting_module, "PROPOSAL_RETRY_SECONDS", 0.01)
    failures = drafting_module.PROPOSAL_FAILURES_BEFORE_GIVING_UP * 2
    sup, store, received = engine(tmp_path, FlakyProposer([{"VALUE": 0.9}], failures), gpus=[Gpu(0, None, None, "cpu")],
                                  max_experiments=3)
    assert sup.run() == 0
    assert any(e.description == "VALUE=0.9" and e.status is Status.OK for e in store.experiments())
    waits = [e for e in received if isinstance(e, events.Notice) and "overloaded" in e.message]
    assert len(waits) == failures and "asking again in" in waits[0].message
    assert any(isinstance(e, events.LaneChanged) and "overloaded" in e.detail for e in received)
    store.close()


def test_a_better_change_to_what_the_frontier_just_changed_replaces_it(tmp_path):
    # Both lanes change VALUE from the same frontier. The quicker, smaller win is kept first;
    # the bigger one then conflicts with the new frontier, but as it is it beats that frontier,
    # so the frontier takes its code (a commit on top, never a rewrite of the branch).
    proposer = ScriptedProposer([{"VALUE": 0.95, "description": "a little"},
                                 {"VALUE": 0.8, "DURATION": 1.5, "description": "a lot"}])
    sup, store, received = engine(tmp_path, proposer, max_experiments=4)
    assert sup.run() == 0
    rows = {e.description: e for e in store.experiments()}
    assert rows["a little"].decision is Decision.KEEP and rows["a lot"].decision is Decision.KEEP
    assert "beats it as it is" in rows["a lot"].decision_reason
    tip = git(sup.ws.root, "rev-parse", "autoresearch/t")
    assert "VALUE = 0.8" in git(sup.ws.root, "show", f"{tip}:train.py")
    assert git(sup.ws.root, "rev-parse", f"{tip}^1") == rows["a little"].commit  # the branch only moved forward
    assert git(sup.ws.root, "rev-parse", f"{tip}^2") == rows["a lot"].commit  # and the kept commit is in its history
    assert git(sup.ws.root, "rev-parse", f"{tip}^{{tree}}") == git(sup.ws.root, "rev-parse", f"{rows['a lot'].commit}^{{tree}}")
    advances = [e for e in received if isinstance(e, events.FrontierAdvanced)]
    assert advances[-1].commit == tip and advances[-1].experiment_id == rows["a lot"].id
    store.close()


def test_a_better_change_too_close_to_call_against_the_new_frontier_is_rerun_then_replaces_it(tmp_path, monkeypatch):
    # The quick-start demo's case: the better change finishes second, and the frontier has
    # changed the same line meanwhile. Against the frontier's one run (0.80), its own 0.70 is a
    # win inside noise (sigma 0.0141 from the baselines' 1 dof, bound 0.0558: a re-test from
    # 0.079, a keep from 0.197), so it is run again, not discarded; once its re-runs give sigma
    # a second degree of freedom it clears the margin and the frontier takes its code.
    offsets = tmp_path / "offsets"
    offsets.write_text("0.0\n0.02\n")
    monkeypatch.setenv("AUTORESEARCH_FAKE_OFFSETS", str(offsets))
    proposer = ScriptedProposer([{"VALUE": 0.80, "description": "a little"},
                                 {"VALUE": 0.70, "DURATION": 1.5, "description": "a lot"}])
    sup, store, received = engine(tmp_path, proposer, max_experiments=4)
    assert sup.run() == 0
    rows = store.experiments()
    better = next(e for e in rows if e.description == "a lot")
    reruns = [e for e in rows if e.kind == "confirm" and e.confirms == better.id]
    assert len(reruns) == 2 and all(e.decision is Decision.KEEP for e in reruns)
    assert better.decision is Decision.KEEP and "beats it as it is" in better.decision_reason
    conflict_retests = [e for e in received if isinstance(e, events.Decided) and e.experiment_id == better.id
                        and e.decision == "confirm" and "conflicts with the frontier" in e.reason]
    assert conflict_retests and conflict_retests[0].rule == "retest"
    tip = git(sup.ws.root, "rev-parse", "autoresearch/t")
    assert "VALUE = 0.7" in git(sup.ws.root, "show", f"{tip}:train.py")
    store.close()


def test_a_win_on_a_moved_frontier_is_verified_even_past_max_experiments(tmp_path):
    proposer = ScriptedProposer([{"VALUE": 0.9, "description": "first"},
                                 {"BONUS": 0.05, "DURATION": 1.5, "description": "second"}])
    sup, store, received = engine(tmp_path, proposer, max_experiments=4)
    assert sup.run() == 0
    verification = [e for e in store.experiments() if e.kind == "verification"]
    assert len(verification) == 1 and verification[0].status is Status.OK
    assert verification[0].decision is Decision.KEEP
    tip = git(sup.ws.root, "rev-parse", "autoresearch/t")
    assert tip == verification[0].commit
    assert sup.exit_reason == "4 experiments run, and 1 more to judge them"
    store.close()


def test_a_resumed_line_remembers_how_many_candidates_were_judged_against_its_frontier(tmp_path):
    # The frontier's replicas are owed for every candidate judged against it (scheduler/engine/noise.py),
    # and a restart must not forget them.
    proposer = ScriptedProposer([{"VALUE": 1.2, "description": "worse"}, {"BONUS": -0.1, "description": "worse too"}])
    sup, store, _ = engine(tmp_path, proposer, max_experiments=4)
    assert sup.run() == 0
    assert sup.state.judged_against[sup.frontier] == 2
    again = Supervisor(sup.config, store, Workspace(sup.ws.root, "t", sup.config.target.editable),
                       [Gpu(0, None, None, "cpu")], ScriptedProposer([]), telemetry=False)
    again._load_history()
    assert again.state.judged_against[again.frontier] == 2
    store.close()


class BrokenProposer(ScriptedProposer):
    """Every call fails for good, as with a wrong model name or a context the brief overflows."""

    def propose(self, request):
        raise drafting_module.ProposalError("HTTP 400: request (8995 tokens) exceeds the available context size "
                                            "(8192 tokens)")


def test_a_night_whose_proposer_fails_on_every_lane_ends_non_zero_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(drafting_module, "PROPOSAL_RETRY_SECONDS", 0.05)
    sup, store, received = engine(tmp_path, BrokenProposer([]))
    assert sup.run() == 1
    assert sup.exit_reason == "no lane could get a proposal"
    assert "HTTP 400" in sup.state.failure and "--agent" in sup.state.failure
    assert any(isinstance(e, events.Notice) and e.level is events.Level.ERROR and "no lane could get a proposal"
               in e.message for e in received)
    store.close()


def test_a_night_that_loses_every_lane_ends_non_zero_and_says_why(tmp_path):
    baselines = []

    def lose_every_gpu_after_the_baselines(event):  # what the NVML sampler (or a dead Ray node) reports
        if isinstance(event, events.RunFinished) and event.experiment.kind.value == "baseline":
            baselines.append(event)
            if len(baselines) == 2:
                for lane in sup.lanes:
                    sup.inbox.put(GpuLost(lane.index, "the GPU has fallen off the bus"))

    sup, store, received = engine(tmp_path, ScriptedProposer([{"VALUE": 0.9}, {"VALUE": 0.8}]), max_experiments=6,
                                  sink=lose_every_gpu_after_the_baselines)
    assert sup.run() == 1
    assert sup.exit_reason == "no lane left"
    errors = [e.message for e in received if isinstance(e, events.Notice) and e.level is events.Level.ERROR]
    assert any("out of service: the GPU has fallen off the bus" in m for m in errors)
    assert any("every lane is out of service" in m for m in errors)
    store.close()


def test_a_proposer_with_nothing_left_to_try_ends_the_night_successfully(tmp_path, monkeypatch):
    monkeypatch.setattr(drafting_module, "PROPOSAL_RETRY_SECONDS", 0.05)
    sup, store, _ = engine(tmp_path, ScriptedProposer([{"VALUE": 0.9, "description": "the only idea"}]))
    assert sup.run() == 0
    assert sup.exit_reason == "the proposer has nothing more to try" and sup.state.failure is None
    store.close()


def test_a_target_that_sets_its_own_budget_gets_timeouts_sized_from_its_first_runs(tmp_path, monkeypatch):
    """The fake trainer trains 0.3 s whatever budget it is given (as forks that read their own
    TIME_BUDGET do). With no --budget the engine assumed 300 s, a 720 s timeout; once the
    starting point has run, a run that goes on past twice its length (plus the slack) is
    stopped as a timeout, not after 12 minutes."""
    import scheduler.config as config_module

    monkeypatch.setattr(config_module, "TIMEOUT_SLACK_S", 3.0)
    proposer = ScriptedProposer([{"MODE": "slow", "description": "never ends"}])
    sup, store, received = engine(tmp_path, proposer, budget=None, timeout_seconds=None, max_experiments=3)
    assert sup.run() == 0
    slow = [e for e in store.experiments() if e.description == "never ends"]
    assert slow and slow[0].status is Status.TIMEOUT
    assert (slow[0].finished_at - slow[0].started_at).total_seconds() < 60
    assert any(isinstance(e, events.Notice) and "not the 300 s budget it was given" in e.message for e in received)
    store.close()



def test_a_cluster_that_stops_answering_holds_every_new_start_until_it_answers_again(tmp_path):
    """The engine's side of --executor ray's watch on the cluster's head (scheduler/cluster/raycluster.py
    sends these messages; tests/test_ray_executor.py kills a real head): while the head does not
    answer, no run starts; when it answers again, the night goes on and ends as usual."""
    proposer = ScriptedProposer([{"VALUE": 0.9}, {"VALUE": 0.8}])
    holder = {}

    def on_event(event):
        if isinstance(event, events.RunFinished) and "held" not in holder:
            holder["held"] = time.monotonic()
            holder["sup"].inbox.put(ClusterReach(Reach.UNREACHABLE, "the Ray cluster's head at h:1 does not answer"))
            threading.Timer(1.5, lambda: holder["sup"].inbox.put(
                ClusterReach(Reach.BACK, "the Ray cluster's head at h:1 answers again"))).start()

    sup, store, received = engine(tmp_path, proposer, gpus=[Gpu(0, None, None, "cpu")], sink=on_event,
                                  max_experiments=4)
    holder["sup"] = sup
    assert sup.run() == 0
    kinds = [("notice", e.message) if isinstance(e, events.Notice) else (type(e).__name__, None) for e in received]
    held = next(i for i, (k, m) in enumerate(kinds) if k == "notice" and "does not answer" in m)
    back = next(i for i, (k, m) in enumerate(kinds) if k == "notice" and "answers again" in m)
    assert "no new run or proposal until it does" in kinds[held][1]
    assert held < back and not any(k == "RunStarted" for k, _ in kinds[held:back])  # nothing started while held
    assert sum(k == "RunStarted" for k, _ in kinds[back:]) >= 2  # and the night went on after
    assert sum(isinstance(e, events.RunFinished) and e.experiment.status is Status.OK for e in received) == 4


def test_a_cluster_lost_for_good_ends_the_night_with_its_run_interrupted_and_a_non_zero_exit(tmp_path):
    proposer = ScriptedProposer([{"VALUE": 0.9}])
    holder = {}

    def on_event(event):
        if isinstance(event, events.RunStarted) and "lost" not in holder:
            holder["lost"] = True
            holder["sup"].inbox.put(ClusterReach(Reach.LOST, "the Ray cluster's head at h:1 has not answered for 60 s"))

    sup, store, received = engine(tmp_path, proposer, gpus=[Gpu(0, None, None, "cpu")], sink=on_event,
                                  trainer_tail="import time; time.sleep(30)\n", max_experiments=3)
    holder["sup"] = sup
    assert sup.run() == 1
    assert sup.exit_reason == "lost the Ray cluster"
    said = [e.message for e in received if isinstance(e, events.Notice) and e.level is events.Level.ERROR]
    assert any("1 run(s) in flight end as interrupted" in m for m in said)
    statuses = [e.status for e in store.experiments()]
    assert Status.INTERRUPTED in statuses and Status.OK not in statuses and Status.RUNNING not in statuses
