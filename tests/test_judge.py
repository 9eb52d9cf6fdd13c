"""The judging rules alone: research states built by hand, no git, no threads, no store. Each
test states what should follow one finished experiment."""

from results.records import Decision, Experiment, Kind, Status
from scheduler.judge import Confirm, Decide, FrontierFailed, Judge, Promote, Queue
from scheduler.noise import Policy
from scheduler.state import ResearchState

START, WIN, OTHER = "a" * 40, "b" * 40, "c" * 40
GPU = "H100"


def state_with(*experiments, measured=(), frontier=START) -> ResearchState:
    """`measured`: (commit, score) pairs on the one GPU model, as the ledger folds results in."""
    state = ResearchState(run_id="r", frontier=frontier, lanes=[])
    for exp in experiments:
        state.experiments[exp.id] = exp
    for commit, score in measured:
        state.measurements.add(commit, GPU, score)
    return state


def done(eid, kind=Kind.PROPOSAL, commit=WIN, parent=START, status=Status.OK, **links) -> Experiment:
    return Experiment(run_id="r", lane=0, description=f"#{eid}", id=eid, kind=kind, commit=commit,
                      parent_commit=parent, gpu_name=GPU, status=status, change=f"change {eid}", **links)


JUDGE = Judge(Policy(floor=0.001))
NOISY_START = [(START, 1.000), (START, 1.010)]  # sigma 0.0071: margin 0.0141


def test_a_clear_win_is_promoted():
    state = state_with(done(3), measured=[*NOISY_START, (WIN, 0.950)])
    actions = JUDGE.result(state, state.experiments[3])
    assert actions == [Promote(3, actions[0].reason)]
    assert "better by 0.0550" in actions[0].reason


def test_a_result_within_the_margin_is_discarded():
    state = state_with(done(3), measured=[*NOISY_START, (WIN, 0.996)])
    actions = JUDGE.result(state, state.experiments[3])
    assert [(type(a), a.decision) for a in actions] == [(Decide, Decision.DISCARD)]
    assert "within the margin" in actions[0].reason


def test_a_win_close_to_the_margin_is_run_again_before_it_is_kept():
    state = state_with(done(3), measured=[*NOISY_START, (WIN, 0.988)])  # 0.017: past 0.0141, within one sigma
    confirm, queue = JUDGE.result(state, state.experiments[3])
    assert isinstance(confirm, Confirm) and confirm.experiment_id == 3
    assert isinstance(queue, Queue)
    again = queue.experiment
    assert (again.kind, again.commit, again.parent_commit, again.confirms, again.change) == \
        (Kind.CONFIRM, WIN, START, 3, "change 3")


def test_a_confirmation_is_judged_with_the_original_on_the_mean_of_both():
    confirmation = done(4, kind=Kind.CONFIRM, confirms=3)
    state = state_with(done(3), confirmation, measured=[*NOISY_START, (WIN, 0.988), (WIN, 0.980)])
    actions = JUDGE.result(state, confirmation)
    assert [type(a) for a in actions] == [Decide, Promote]
    assert actions[0].experiment_id == 4 and actions[0].decision is Decision.KEEP
    assert actions[1].experiment_id == 3 and "over 2 runs" in actions[1].reason


def test_a_confirmation_that_falls_back_discards_the_original():
    confirmation = done(4, kind=Kind.CONFIRM, confirms=3)
    state = state_with(done(3), confirmation, measured=[*NOISY_START, (WIN, 0.988), (WIN, 1.010)])
    actions = JUDGE.result(state, confirmation)
    assert [(a.experiment_id, a.decision) for a in actions] == [(4, Decision.DISCARD), (3, Decision.DISCARD)]


def test_a_parent_never_measured_on_this_gpu_model_is_measured_first():
    state = state_with(done(3, parent=OTHER), measured=[*NOISY_START, (WIN, 0.9)])
    [queue] = JUDGE.result(state, state.experiments[3])
    reference = queue.experiment
    assert (reference.kind, reference.commit, reference.gpu_name, reference.reference_for) == \
        (Kind.BASELINE, OTHER, GPU, 3)


def test_the_reference_baseline_is_kept_and_the_waiting_result_judged_at_once():
    waiting = done(3, parent=OTHER)
    reference = done(4, kind=Kind.BASELINE, commit=OTHER, parent=OTHER, reference_for=3)
    state = state_with(waiting, reference, measured=[*NOISY_START, (WIN, 0.9), (OTHER, 1.0)])
    actions = JUDGE.result(state, reference)
    assert actions[0] == Decide(4, Decision.KEEP, "baseline: the frontier as it is")
    assert isinstance(actions[1], Promote) and actions[1].experiment_id == 3


def test_a_failed_run_is_discarded_with_its_reason():
    crashed = done(3, status=Status.OOM, error="CUDA out of memory")
    assert JUDGE.result(state_with(crashed), crashed) == [Decide(3, Decision.DISCARD, "oom: CUDA out of memory")]


def test_the_frontier_failing_twice_stops_the_research_but_once_does_not():
    baseline = done(1, kind=Kind.BASELINE, commit=START, status=Status.CRASH, error="exit code 1")
    state = state_with(baseline)
    first = JUDGE.result(state, baseline)[-1]
    assert first == FrontierFailed(1, (START, GPU), 1, stop=False)
    state.baseline_failures[(START, GPU)] = 1
    assert JUDGE.result(state, baseline)[-1] == FrontierFailed(1, (START, GPU), 2, stop=True)


def test_a_baseline_a_person_stopped_is_not_counted_as_the_frontier_failing():
    baseline = done(1, kind=Kind.BASELINE, commit=START, status=Status.KILLED)
    assert [type(a) for a in JUDGE.result(state_with(baseline), baseline)] == [Decide]


def test_an_experiment_a_person_already_decided_is_left_alone():
    decided = done(3)
    decided = Experiment(**{**decided.__dict__, "decision": Decision.DISCARD})
    assert JUDGE.result(state_with(decided, measured=[*NOISY_START, (WIN, 0.9)]), decided) == []


def test_a_conflicting_winner_beats_the_frontier_only_by_the_margin():
    state = state_with(done(3), measured=[*NOISY_START, (WIN, 0.95), (OTHER, 0.99)], frontier=OTHER)
    assert JUDGE.beats_frontier(state, state.experiments[3])  # 0.95 against the frontier's own 0.99
    state.measurements.add(OTHER, GPU, 0.95)
    assert not JUDGE.beats_frontier(state, state.experiments[3])  # now 0.97: within the margin


def test_no_rule_touches_the_state():
    state = state_with(done(3), measured=[*NOISY_START, (WIN, 0.988)])
    before = (dict(state.experiments), list(state.pending), dict(state.baseline_failures), state.frontier)
    JUDGE.result(state, state.experiments[3])
    assert (dict(state.experiments), list(state.pending), dict(state.baseline_failures), state.frontier) == before
