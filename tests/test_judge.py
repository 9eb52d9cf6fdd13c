"""The judging rules alone: research states built by hand, no git, no threads, no store. Each
test states what should follow one finished experiment, or, for the statistical rules, how
often a simulated truth is judged right."""

import random
import statistics
from dataclasses import replace

import pytest

from results.records import Decision, Experiment, Kind, Status
from scheduler.engine.judge import Confirm, Decide, FrontierFailed, Judge, Promote, Queue
from scheduler.engine.noise import (ENOUGH_DOF, KEEP_Z, MAX_RUNS, GreedyPolicy, Measurements, Noise, Policy, Rule, Ruling,
                             chi2_quantile, sigma_upper_bound, throughput)
from scheduler.engine.state import ResearchState

START, WIN, OTHER = "a" * 40, "b" * 40, "c" * 40
GPU = "H100"


def state_with(*experiments, measured=(), frontier=START) -> ResearchState:
    """`measured`: (commit, score) or (commit, score, throughput) on the one GPU model, as the
    ledger folds results in."""
    state = ResearchState(run_id="r", frontier=frontier, lanes=[])
    for exp in experiments:
        state.experiments[exp.id] = exp
    for commit, score, *throughput in measured:
        state.measurements.add(commit, GPU, score, *throughput)
    return state


def done(eid, kind=Kind.PROPOSAL, commit=WIN, parent=START, status=Status.OK, **links) -> Experiment:
    return Experiment(run_id="r", lane=0, description=f"#{eid}", id=eid, kind=kind, commit=commit,
                      parent_commit=parent, gpu_name=GPU, status=status, change=f"change {eid}", **links)


JUDGE = Judge(Policy(floor=0.001))
# Four baselines, sigma 0.0129 from 3 dof; the margin for one run against four uses its 80%
# upper bound (x1.73): 2.5 * 0.0224 * sqrt(1 + 1/4) = 0.0626, and a re-test from 0.0250.
NOISY_START = [(START, 1.000), (START, 1.010), (START, 0.990), (START, 1.020)]
START_MEAN = 1.005


def test_a_clear_win_is_promoted():
    state = state_with(done(3), measured=[*NOISY_START, (WIN, 0.930)])
    [promote] = JUDGE.result(state, state.experiments[3])
    assert isinstance(promote, Promote) and promote.experiment_id == 3
    assert promote.verdict.rule is Rule.BEYOND_NOISE and promote.verdict.delta == pytest.approx(0.075)
    assert promote.verdict.noise.dof == 3 and promote.verdict.noise.used > promote.verdict.noise.sigma


def test_a_result_worse_than_its_reference_is_discarded_and_says_so():
    state = state_with(done(3), measured=[*NOISY_START, (WIN, 1.03)])
    [decide] = JUDGE.result(state, state.experiments[3])
    assert (decide.decision, decide.rule) == (Decision.DISCARD, Rule.WORSE)
    assert "worse than the reference" in decide.reason


def test_a_gain_too_small_to_retest_is_discarded_as_noise():
    state = state_with(done(3), measured=[*NOISY_START, (WIN, 1.000)])  # 0.005: under one standard error
    [decide] = JUDGE.result(state, state.experiments[3])
    assert (decide.decision, decide.rule) == (Decision.DISCARD, Rule.WITHIN_NOISE)


def test_a_win_inside_noise_is_run_again_not_dropped():
    state = state_with(done(3), measured=[*NOISY_START, (WIN, 0.975)])  # 0.03: past one se, short of the margin
    confirm, queue = JUDGE.result(state, state.experiments[3])
    assert isinstance(confirm, Confirm) and confirm.experiment_id == 3 and confirm.rule is Rule.RETEST
    assert isinstance(queue, Queue)
    again = queue.experiment
    assert (again.kind, again.commit, again.parent_commit, again.confirms, again.change) == \
        (Kind.CONFIRM, WIN, START, 3, "change 3")


def test_a_confirmation_is_judged_with_the_original_on_the_mean_of_its_runs():
    confirmation = done(4, kind=Kind.CONFIRM, confirms=3)
    state = state_with(done(3), confirmation, measured=[*NOISY_START, (WIN, 0.950), (WIN, 0.940)])
    actions = JUDGE.result(state, confirmation)
    assert [type(a) for a in actions] == [Decide, Promote]
    assert actions[0].experiment_id == 4 and actions[0].decision is Decision.KEEP
    assert actions[1].experiment_id == 3 and "over 2 runs" in actions[1].reason


def test_a_confirmation_that_falls_back_discards_the_original_and_every_run_of_it():
    first, second = done(4, kind=Kind.CONFIRM, confirms=3), done(5, kind=Kind.CONFIRM, confirms=3)
    state = state_with(done(3), first, second, measured=[*NOISY_START, (WIN, 0.975), (WIN, 0.99), (WIN, 1.01)])
    actions = JUDGE.result(state, second)
    assert [(a.experiment_id, a.decision) for a in actions] == [
        (4, Decision.DISCARD), (5, Decision.DISCARD), (3, Decision.DISCARD)]


def test_when_the_reference_is_the_less_certain_side_it_is_measured_again():
    confirmation = done(4, kind=Kind.CONFIRM, confirms=3)
    # Two runs of the parent, two of the candidate, and still a close call: the next run is
    # the parent's, and the candidate is judged again when it lands.
    state = state_with(done(3, parent=OTHER), confirmation,
                       measured=[*NOISY_START, (OTHER, 1.0), (OTHER, 1.01), (WIN, 0.99), (WIN, 0.98), (WIN, 0.985)])
    state.measurements.add(WIN, GPU, 0.975)
    confirm, queue = JUDGE.result(state, confirmation)
    assert confirm.rule is Rule.RETEST and "measuring its reference again" in confirm.reason
    again = queue.experiment
    assert (again.kind, again.commit, again.reference_for) == (Kind.BASELINE, OTHER, 4)


def test_a_candidate_is_run_at_most_max_runs_times():
    runs = [done(3)] + [done(4 + i, kind=Kind.CONFIRM, confirms=3) for i in range(MAX_RUNS - 1)]
    # Every run lands at the same close call: after MAX_RUNS, noise has its say.
    state = state_with(*runs, measured=[*NOISY_START] + [(WIN, 0.985)] * MAX_RUNS)
    actions = JUDGE.result(state, runs[-1])
    assert not any(isinstance(a, (Confirm, Queue)) for a in actions)
    assert actions[-1].experiment_id == 3 and actions[-1].decision is Decision.DISCARD


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
    assert actions[0] == Decide(4, Decision.KEEP, Rule.BASELINE, "baseline: the frontier as it is")
    assert isinstance(actions[1], Promote) and actions[1].experiment_id == 3


def test_a_failed_run_is_discarded_with_its_reason():
    crashed = done(3, status=Status.OOM, error="CUDA out of memory")
    assert JUDGE.result(state_with(crashed), crashed) == [
        Decide(3, Decision.DISCARD, Rule.FAILED, "oom: CUDA out of memory")]


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
    decided = replace(done(3), decision=Decision.DISCARD)
    assert JUDGE.result(state_with(decided, measured=[*NOISY_START, (WIN, 0.9)]), decided) == []


def test_no_rule_touches_the_state():
    state = state_with(done(3), measured=[*NOISY_START, (WIN, 0.975)])
    before = (dict(state.experiments), list(state.pending), dict(state.baseline_failures), state.frontier,
              state.measurements.of(WIN, GPU))
    JUDGE.result(state, state.experiments[3])
    JUDGE.against_frontier(state, state.experiments[3])
    assert (dict(state.experiments), list(state.pending), dict(state.baseline_failures), state.frontier,
            state.measurements.of(WIN, GPU)) == before


# -- a better result is never lost to ordering ---------------------------------------------

def test_the_demos_conflict_ends_with_the_better_change_on_the_frontier():
    """The quick-start case: #3 (UNEMBEDDING_LR x1.4, 1.578) and #4 (x1.2, 1.648) are drafted
    on the same frontier; #4 finishes first and moves the frontier; #3 then conflicts with it.
    It is judged against #4's own runs, and re-run while that is too close to tell."""
    x14, x12 = WIN, OTHER
    baselines = [(START, v) for v in (1.69, 1.70, 1.71, 1.685)]
    state = state_with(done(3, commit=x14), done(4, commit=x12),
                       measured=[*baselines, (x12, 1.648), (x12, 1.655), (x14, 1.578)], frontier=x12)
    # Against its own parent (the start), #3 is a clear win: the supervisor promotes it ...
    [promote] = JUDGE.result(state, state.experiments[3])
    assert isinstance(promote, Promote)
    # ... and the replay conflicts (git says so; not this unit): it is judged against #4 as it is.
    verdict = JUDGE.against_frontier(state, state.experiments[3])
    assert verdict.action is Ruling.KEEP and verdict.delta == pytest.approx(1.6515 - 1.578)


def test_a_conflicting_winner_too_close_to_the_frontier_is_run_again_then_takes_its_place():
    x14, x12 = WIN, OTHER
    state = state_with(done(3, commit=x14), measured=[*NOISY_START, (x12, 0.950), (x14, 0.905)], frontier=x12)
    first = JUDGE.against_frontier(state, state.experiments[3])
    assert first.action is Ruling.CONFIRM and first.rule is Rule.RETEST  # 0.045 better, one run each
    actions = JUDGE.again(state, state.experiments[3], first.rule, first.reason, first)
    assert [type(a) for a in actions] == [Confirm, Queue] and actions[1].experiment.confirms == 3
    state.measurements.add(x14, GPU, 0.890)  # the re-run: 0.8975 over two runs
    state.measurements.add(x12, GPU, 0.952)  # the frontier's own replica
    assert JUDGE.against_frontier(state, state.experiments[3]).action is Ruling.KEEP


def test_a_conflicting_change_that_does_not_beat_the_frontier_is_discarded_by_that_rule():
    state = state_with(done(3), measured=[*NOISY_START, (OTHER, 0.95), (OTHER, 0.951), (WIN, 0.96)], frontier=OTHER)
    verdict = JUDGE.against_frontier(state, state.experiments[3])
    assert verdict.action is Ruling.DISCARD and verdict.rule is Rule.WORSE


# -- disturbed runs -------------------------------------------------------------------------

def test_a_baseline_replica_that_trained_far_slower_is_set_aside_not_averaged_in():
    m = Measurements()
    for score in (1.000, 1.002, 0.998):
        m.add(START, GPU, score, 100.0)
    before = m.noise(GPU)
    m.add(START, GPU, 1.30, 40.0)  # a loaded machine: 40% of the throughput, and a bad number
    assert m.count(START, GPU) == 3 and m.attempts(START, GPU) == 4
    assert m.noise(GPU) == before


def test_a_candidates_first_run_counts_in_its_mean_but_never_in_sigma():
    """It was re-run because it measured well: pairing it with its re-runs would read that luck
    as noise."""
    m = Measurements()
    for score in (1.000, 1.002, 0.998, 1.000):
        m.add(START, GPU, score)
    m.add(WIN, GPU, 0.950, selected=True)
    m.add(WIN, GPU, 0.990)
    assert m.noise(GPU).dof == 3 and m.mean(WIN, GPU) == pytest.approx(0.970)
    m.add(WIN, GPU, 0.988)
    assert m.noise(GPU).dof == 4 and m.noise(GPU).sigma < 0.002


def test_a_slow_first_replica_is_set_aside_once_a_normal_one_shows_it_was_slow():
    m = Measurements()
    m.add(START, GPU, 1.30, 40.0)
    m.add(START, GPU, 1.00, 100.0)
    assert m.of(START, GPU) == [1.00]


def test_a_candidates_run_far_slower_than_its_parent_is_run_again_before_it_is_judged():
    slow = [(START, s, 100.0) for _, s in NOISY_START] + [(WIN, 1.3, 45.0)]
    state = state_with(done(3), measured=slow)
    confirm, queue = JUDGE.result(state, state.experiments[3])
    assert confirm.rule is Rule.DISTURBED and "45%" in confirm.reason
    assert queue.experiment.confirms == 3


def test_a_change_that_is_slower_on_every_run_is_judged_on_its_runs():
    """A deeper model really trains fewer tokens a second: once two runs agree, they count."""
    measured = [(START, s, 100.0) for _, s in NOISY_START] + [(WIN, 0.94, 50.0), (WIN, 0.945, 52.0)]
    confirmation = done(4, kind=Kind.CONFIRM, confirms=3)
    state = state_with(done(3), confirmation, measured=measured)
    actions = JUDGE.result(state, confirmation)
    assert isinstance(actions[-1], Promote) and "over 2 runs" in actions[-1].reason


# -- the statistics, against a simulated truth -------------------------------------------------

def simulate(policy, true_gain: float, sigma: float, trials: int, seed: int, replicated: int = 0) -> float:
    """The share of `trials` candidates kept, each judged by the full rule (re-tests included)
    against four baselines, where the truth is a gain of `true_gain` and the noise Gaussian.
    `replicated`: other code measured twice each, so sigma has that many more dof."""
    rng = random.Random(seed)
    judge = Judge(policy)
    kept = 0
    for _ in range(trials):
        state = state_with(done(3), measured=[(START, 1.0 + rng.gauss(0, sigma)) for _ in range(4)])
        for i in range(replicated):
            state.measurements.add(f"{i:040x}", GPU, 1.0 + rng.gauss(0, sigma))
            state.measurements.add(f"{i:040x}", GPU, 1.0 + rng.gauss(0, sigma))
        state.measurements.add(WIN, GPU, 1.0 - true_gain + rng.gauss(0, sigma), selected=True)
        exp, n = state.experiments[3], 4
        while True:
            actions = judge.result(state, exp)
            if any(isinstance(a, Promote) for a in actions):
                kept += 1
                break
            queued = [a for a in actions if isinstance(a, Queue)]
            if not queued:
                break
            exp = replace(queued[0].experiment, id=n, status=Status.OK)
            state.experiments[n], n = exp, n + 1
            if exp.kind is Kind.BASELINE:  # the reference measured again
                state.measurements.add(START, GPU, 1.0 + rng.gauss(0, sigma))
            else:
                state.measurements.add(WIN, GPU, 1.0 - true_gain + rng.gauss(0, sigma))
    return kept / trials


@pytest.mark.parametrize("replicated", [0, 12], ids=["3-dof", "15-dof"])
def test_a_change_that_does_nothing_is_rarely_kept_under_noise(replicated):
    ours = simulate(Policy(floor=0.0), 0.0, 0.002, 200, seed=1, replicated=replicated)
    greedy = simulate(GreedyPolicy(), 0.0, 0.002, 200, seed=1, replicated=replicated)
    assert ours <= 0.05
    assert greedy >= 0.35  # upstream's rule crowns noise about half the time


def test_a_change_worth_three_sigma_is_kept_nine_times_in_ten_once_sigma_is_known():
    assert simulate(Policy(floor=0.0), 0.006, 0.002, 200, seed=2, replicated=12) >= 0.90


def test_the_frontier_earns_replicas_as_candidates_are_judged_against_it():
    policy, settled = Policy(), Noise.of(0.002, 12)
    assert policy.replicas_wanted(Noise.of(0.002, 1)) == 4  # the start, one lane: until 3 dof
    assert policy.replicas_wanted(Noise.of(0.002, 12), lanes=8) == 16  # eight lanes: two rounds
    assert Policy(baseline_runs=2).replicas_wanted(Noise.of(0.002, 0), lanes=8) == 2  # as the user said
    assert [policy.replicas_wanted(settled, judged) for judged in (0, 9, 10, 35, 500)] == [2, 2, 3, 5, 8]
    assert GreedyPolicy().replicas_wanted(settled, 500) == 1


@pytest.mark.parametrize("dof", [1, 2, 3, 5, 9])
def test_with_few_dof_the_sigma_used_is_an_upper_confidence_bound(dof):
    """With few degrees of freedom the margin uses the estimate's 80% upper bound, which lies
    above the true sigma in about 80% of draws; the bare estimate does so only about half the time."""
    rng = random.Random(dof)
    true, trials, covered, bare = 0.002, 2000, 0, 0
    for _ in range(trials):
        sample = [rng.gauss(0, true) for _ in range(dof + 1)]
        noise = Noise.of(statistics.stdev(sample), dof)
        assert noise.used >= noise.sigma
        covered += noise.used >= true
        bare += noise.sigma >= true
    assert 0.76 <= covered / trials <= 0.84
    assert bare / trials < 0.62


def test_with_enough_dof_the_estimate_itself_is_used():
    noise = Noise.of(0.002, ENOUGH_DOF)
    assert noise.used == noise.sigma
    assert Policy().margin(noise, 1, 1) == pytest.approx(KEEP_Z * 0.002 * 2 ** 0.5)


def test_the_chi_square_quantiles_match_the_tables():
    for p, dof, table in ((0.1, 1, 0.01579), (0.1, 4, 1.0636), (0.1, 10, 4.8652), (0.2, 3, 1.0052),
                          (0.05, 30, 18.4927)):
        assert chi2_quantile(p, dof) == pytest.approx(table, rel=1e-3)
    assert sigma_upper_bound(1.0, 1, 0.8) == pytest.approx((1 / 0.06418) ** 0.5, rel=1e-3)


def test_throughput_is_tokens_when_printed_with_enough_digits_else_steps():
    # Upstream prints total_tokens_M to one decimal: 499.6 on an H100 resolves a 1% change,
    # the tiny model's 0.1 resolves nothing, and its step count does.
    assert throughput({"training_seconds": 300.0, "total_tokens_M": 499.6, "num_steps": 953}) == \
        pytest.approx(499.6 / 300)
    assert throughput({"training_seconds": 20.0, "total_tokens_M": 0.1, "num_steps": 16}) == pytest.approx(0.8)
    assert throughput({"training_seconds": 20.0}) is None and throughput({"num_steps": 10}) is None


def test_without_noise_a_gain_under_the_floor_is_discarded_at_once_not_re_run():
    """Runs of fixed steps and seed (the demo) measure the same code the same way: sigma is 0,
    and a re-run could only repeat the number, so a gain under the floor is decided now."""
    policy, silent = Policy(), Noise.of(0.0, 3)
    verdict = policy.judge([1.0 - 0.0004], [1.0, 1.0], silent)
    assert (verdict.action, verdict.rule) == (Ruling.DISCARD, Rule.WITHIN_NOISE)
    assert policy.judge([1.0 - 0.003], [1.0, 1.0], silent).action is Ruling.KEEP  # past the floor: kept
    # with any noise at all the same gain is worth a second look
    assert policy.judge([1.0 - 0.0004], [1.0, 1.0], Noise.of(0.0001, 3)).action is Ruling.CONFIRM
