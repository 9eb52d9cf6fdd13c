"""The offline mutator, on real files: a copy of this repo's trainer/train.py and a small
upstream-style train.py. Every proposal must be a one-line edit that still parses (or two, for
a pair of near misses), no change may be handed out twice on one parent, and a search whose
frontier stalls steps finer and pairs its near misses rather than running dry."""

import ast
import difflib
import hashlib
import math
import random
import shutil
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from agents.mutator import OfflineMutator
from agents.mutator.knobs import find_knobs
from agents.mutator.search import kept_directions
from agents.mutator.steps import changes_for
from agents.proposer import PastExperiment, ProposalError, ProposalRequest
from results.metric import Direction, Metric

ROOT = Path(__file__).resolve().parent.parent
TRAINER = ROOT / "trainer" / "train.py"

UPSTREAM = '''"""An upstream-style training script: plain constants, no profiles."""
import torch

from prepare import MAX_SEQ_LEN

ASPECT_RATIO = 64  # model_dim = depth * ASPECT_RATIO
HEAD_DIM = 128
WINDOW_PATTERN = "SSSL"
TOTAL_BATCH_SIZE = 2**19  # ~524K tokens per optimizer step
EMBEDDING_LR = 0.6
MATRIX_LR = 0.04  # Muon
WEIGHT_DECAY = 0.2
ADAM_BETAS = (0.8, 0.95)
WARMUP_RATIO = 0.0
WARMDOWN_RATIO = 0.5
FINAL_LR_FRAC = 0.0
DEPTH = 8
DEVICE_BATCH_SIZE = 128
SEED = 42
COMPILE = True
H100_BF16_PEAK_FLOPS = 989.5e12

tokens_per_fwdbwd = DEVICE_BATCH_SIZE * MAX_SEQ_LEN
'''

UPSTREAM_PREPARE = "MAX_SEQ_LEN = 2048\nTIME_BUDGET = 300\n"


def trainer_copy(tmp_path, name="repo"):
    worktree = tmp_path / name
    (worktree / "trainer").mkdir(parents=True)
    shutil.copy(TRAINER, worktree / "trainer" / "train.py")
    shutil.copy(ROOT / "prepare.py", worktree / "prepare.py")
    return worktree


def upstream_copy(tmp_path, name="upstream"):
    worktree = tmp_path / name
    worktree.mkdir()
    (worktree / "train.py").write_text(UPSTREAM)
    (worktree / "prepare.py").write_text(UPSTREAM_PREPARE)
    return worktree


def request(worktree, editable="trainer/train.py", **fields):
    fields.setdefault("parent_commit", "a" * 40)
    return ProposalRequest(lane=fields.pop("lane", 0), worktree=worktree,
                           editable_files=(editable,), **fields)


def changed_lines(before, after):
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---")]


def exhaust(mutator, worktree, editable, limit=500, **fields):
    """Every proposal the mutator makes on one parent, restoring the file after each."""
    path = worktree / editable
    original = path.read_text()
    proposals = []
    for attempt in range(limit):
        try:
            proposal = mutator.propose(request(worktree, editable, attempt=attempt, **fields))
        except ProposalError:
            return proposals
        proposals.append((proposal, path.read_text()))
        path.write_text(original)
    raise AssertionError(f"no ProposalError after {limit} proposals")


def new_value(after, name):
    namespace = {"PROFILE": "tiny"}
    line = next(line for line in after.splitlines() if line.startswith(f"{name} ="))
    exec(line, namespace)  # noqa: S102 -- our own one-line assignment
    return namespace[name]


@pytest.mark.parametrize("make,editable", [(trainer_copy, "trainer/train.py"), (upstream_copy, "train.py")])
def test_each_proposal_edits_one_line_and_the_file_still_parses(tmp_path, make, editable):
    worktree = make(tmp_path)
    before = (worktree / editable).read_text()
    for proposal, after in exhaust(OfflineMutator(seed=3), worktree, editable):
        lines = changed_lines(before, after)
        assert len(lines) == 2, proposal.description
        ast.parse(after)
        assert proposal.agent == "offline-mutator"
        assert proposal.change and proposal.hypothesis


def test_the_description_names_the_constant_and_both_values(tmp_path):
    worktree = upstream_copy(tmp_path)
    proposal = OfflineMutator(include=["MATRIX_LR"]).propose(request(worktree, "train.py"))
    name, rest = proposal.description.split(" ", 1)
    old, new = rest.split(" (")[0].split(" -> ")
    assert name == "MATRIX_LR" and old == "0.04"
    assert float(new) != 0.04 and proposal.change == f"MATRIX_LR={new}"
    assert f"MATRIX_LR = {new}  # Muon" in (worktree / "train.py").read_text()


def test_no_change_is_handed_out_twice_on_one_parent(tmp_path):
    worktree = trainer_copy(tmp_path)
    keys = [p.change for p, _ in exhaust(OfflineMutator(), worktree, "trainer/train.py")]
    assert len(keys) > 40
    assert len(keys) == len(set(keys))


def test_changes_in_the_history_are_not_proposed_again(tmp_path):
    worktree = upstream_copy(tmp_path)
    first = exhaust(OfflineMutator(seed=1), worktree, "train.py")
    history = tuple(PastExperiment(p.description, p.change, 1.0, "ok", "discard") for p, _ in first[:20])
    later = exhaust(OfflineMutator(seed=1), worktree, "train.py", history=history)
    assert not {p.change for p, _ in later} & {h.change for h in history}
    assert len(later) == len(first) - len(history)


def test_a_new_parent_gets_fresh_changes_first(tmp_path):
    worktree = upstream_copy(tmp_path)
    mutator = OfflineMutator(include=["MATRIX_LR", "DEPTH"])
    given = exhaust(mutator, worktree, "train.py", parent_commit="a" * 40)
    # Judged by the time the frontier moves: no constant is still in flight to steer the choice.
    history = tuple(PastExperiment(p.description, p.change, 1.0, "ok", "discard", parent="a" * 40)
                    for p, _ in given)
    (worktree / "train.py").write_text(UPSTREAM.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.056"))
    proposal = mutator.propose(request(worktree, "train.py", parent_commit="b" * 40, history=history))
    assert proposal.change not in {h.change for h in history}


def test_per_profile_tables_move_every_profile_alike_and_keep_the_comment(tmp_path):
    worktree = trainer_copy(tmp_path)
    mutator = OfflineMutator(include=["DEPTH", "ASPECT_RATIO"])
    for proposal, after in exhaust(mutator, worktree, "trainer/train.py"):
        name = proposal.extra["name"]
        line = next(line for line in after.splitlines() if line.startswith(f"{name} ="))
        tree = ast.parse(line).body[0].value.value
        full, tiny = (ast.literal_eval(v) for v in tree.values)
        if name == "DEPTH":
            assert full - 8 == tiny - 3 != 0
            assert line.endswith("[PROFILE]  # transformer blocks")
        else:
            assert (full / 64 == tiny / 32) and full != 64
            assert line.endswith("  # width = DEPTH * ASPECT_RATIO, rounded up to HEAD_DIM")
        assert f"{full}/{tiny}" in proposal.description and "full/tiny" in proposal.description


def test_powers_of_two_stay_powers_of_two_and_batches_still_divide(tmp_path):
    worktree = trainer_copy(tmp_path)
    mutator = OfflineMutator(include=["*BATCH_SIZE", "ASPECT_RATIO", "VE_GATE_CHANNELS"])
    proposals = exhaust(mutator, worktree, "trainer/train.py")
    assert proposals
    for proposal, after in proposals:
        knobs = find_knobs(after)
        for name in ("DEVICE_BATCH_SIZE", "TOTAL_BATCH_SIZE", "ASPECT_RATIO", "VE_GATE_CHANNELS"):
            assert all(v > 0 and v & (v - 1) == 0 for v in knobs[name].values), proposal.description
        for profile, context in (("full", 2048), ("tiny", 256)):
            total = dict(zip(knobs["TOTAL_BATCH_SIZE"].profiles, knobs["TOTAL_BATCH_SIZE"].values))[profile]
            rows = dict(zip(knobs["DEVICE_BATCH_SIZE"].profiles, knobs["DEVICE_BATCH_SIZE"].values))[profile]
            assert total % (rows * context) == 0, proposal.description


def test_batches_still_divide_when_the_context_length_is_unknown(tmp_path):
    worktree = upstream_copy(tmp_path)
    (worktree / "prepare.py").unlink()
    for proposal, after in exhaust(OfflineMutator(include=["*BATCH_SIZE"]), worktree, "train.py"):
        assert new_value(after, "TOTAL_BATCH_SIZE") % (new_value(after, "DEVICE_BATCH_SIZE") * 2048) == 0


def test_fractions_stay_in_range(tmp_path):
    worktree = trainer_copy(tmp_path)
    mutator = OfflineMutator(include=["*_RATIO", "*_FRAC", "*MOMENTUM"], exclude=["ASPECT_RATIO"])
    proposals = exhaust(mutator, worktree, "trainer/train.py")
    names = {p.extra["name"] for p, _ in proposals}
    assert names == {"WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC", "MUON_MOMENTUM"}
    for proposal, after in proposals:
        assert 0 <= new_value(after, proposal.extra["name"]) < 1, proposal.description


def test_running_out_of_changes_raises_proposal_error(tmp_path):
    worktree = upstream_copy(tmp_path)
    proposals = exhaust(OfflineMutator(include=["DEPTH"]), worktree, "train.py")
    assert sorted(new_value(after, "DEPTH") for _, after in proposals) == [6, 7, 9, 10]


def test_a_file_without_hyperparameters_raises_proposal_error(tmp_path):
    (tmp_path / "train.py").write_text("import torch\nlr = 0.1\n")
    with pytest.raises(ProposalError):
        OfflineMutator().propose(request(tmp_path, "train.py"))


def test_the_first_editable_file_with_hyperparameters_is_edited(tmp_path):
    worktree = upstream_copy(tmp_path)
    (worktree / "model.py").write_text("class GPT:\n    pass\n")
    OfflineMutator().propose(ProposalRequest(lane=0, worktree=worktree, parent_commit="a" * 40,
                                             editable_files=("model.py", "train.py")))
    assert (worktree / "model.py").read_text() == "class GPT:\n    pass\n"
    assert (worktree / "train.py").read_text() != UPSTREAM


def test_the_same_seed_and_request_give_the_same_proposal(tmp_path):
    history = (PastExperiment("MATRIX_LR 0.03 -> 0.04 (x1.4)", "MATRIX_LR=0.04", 1.0, "ok", "keep",
                              {"name": "MATRIX_LR", "old": "0.03", "new": "0.04"}),)
    results = []
    for copy in ("one", "two"):
        worktree = trainer_copy(tmp_path, copy)
        proposal = OfflineMutator(seed=7).propose(request(worktree, lane=2, attempt=5, history=history))
        results.append((proposal, (worktree / "trainer" / "train.py").read_text()))
    assert results[0] == results[1]
    others = set()
    for lane in range(8):
        worktree = trainer_copy(tmp_path, f"lane{lane}")
        others.add(OfflineMutator(seed=7).propose(request(worktree, lane=lane)).change)
    assert len(others) > 1  # the lane varies the choice


def test_kept_directions_are_favoured(tmp_path):
    history = (PastExperiment("MATRIX_LR 0.03 -> 0.04 (x1.4)", "MATRIX_LR=0.04", 0.99, "ok", "keep",
                              {"name": "MATRIX_LR", "old": "0.03", "new": "0.04"}),)
    worktree = upstream_copy(tmp_path)
    ups = 0
    for attempt in range(60):
        proposal = OfflineMutator(include=["MATRIX_LR"]).propose(
            request(worktree, "train.py", attempt=attempt, history=history))
        ups += float(proposal.extra["new"]) > 0.04
        (worktree / "train.py").write_text(UPSTREAM)
    assert ups >= 38  # 3:1 weights over three ups and three downs: 45 expected, 30 unweighted


def test_four_lanes_at_once_get_four_different_changes(tmp_path):
    mutator = OfflineMutator()
    worktrees = [trainer_copy(tmp_path, f"lane{i}") for i in range(4)]
    start = threading.Barrier(4)
    keys = [None] * 4

    def lane(i):
        start.wait()
        keys[i] = mutator.propose(request(worktrees[i], lane=i)).change

    threads = [threading.Thread(target=lane, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert None not in keys and len(set(keys)) == 4


def test_lanes_drafting_at_once_change_different_constants(tmp_path):
    # Four constants for four lanes: drawn independently, all four would differ 1 time in 10.
    for seed in range(10):
        mutator = OfflineMutator(seed=seed, include=["EMBEDDING_LR", "MATRIX_LR", "WEIGHT_DECAY", "DEPTH"])
        worktrees = [upstream_copy(tmp_path, f"seed{seed}-lane{i}") for i in range(4)]
        start = threading.Barrier(4)
        names = [None] * 4

        def lane(i):
            start.wait()
            names[i] = mutator.propose(request(worktrees[i], "train.py", lane=i)).extra["name"]

        threads = [threading.Thread(target=lane, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert None not in names and len(set(names)) == 4, (seed, names)


@pytest.mark.parametrize("status,decision", [("ok", "discard"), ("ok", "keep"), ("crash", None)])
def test_a_constant_is_free_again_once_its_outcome_is_known(tmp_path, status, decision):
    worktree = upstream_copy(tmp_path)
    mutator = OfflineMutator(include=["MATRIX_LR", "DEPTH"])
    first = mutator.propose(request(worktree, "train.py", lane=0))
    (worktree / "train.py").write_text(UPSTREAM)
    second = mutator.propose(request(worktree, "train.py", lane=1))
    assert first.extra["name"] != second.extra["name"]
    (worktree / "train.py").write_text(UPSTREAM)
    judged = (PastExperiment(first.description, first.change, 1.0, status, decision, first.extra, "a" * 40),)
    third = mutator.propose(request(worktree, "train.py", lane=2, history=judged))
    assert third.extra["name"] == first.extra["name"]  # the second lane's constant is still in flight


MATRIX_LR_STEPS = {  # MATRIX_LR = 0.04 at each level of steps
    0: {"0.02", "0.028", "0.034", "0.048", "0.056", "0.08"},
    1: {"0.036", "0.044"},
    2: {"0.038", "0.042"},
    3: {"0.039", "0.041"},
}


def tried(news, parent, name="MATRIX_LR", old="0.04"):
    return tuple(PastExperiment(f"{name} {old} -> {new}", f"{name}={new}", 1.0, "ok", "discard",
                                {"name": name, "old": old, "new": new}, parent) for new in news)


def test_finer_steps_follow_once_the_coarse_ones_are_tried_on_this_parent(tmp_path):
    worktree = upstream_copy(tmp_path)
    history = tried(MATRIX_LR_STEPS[0], "a" * 40)
    proposals = [p for p, _ in exhaust(OfflineMutator(include=["MATRIX_LR"]), worktree, "train.py",
                                       parent_commit="a" * 40, history=history)]
    news = [p.extra["new"] for p in proposals]
    assert [set(news[:2]), set(news[2:4]), set(news[4:])] == [MATRIX_LR_STEPS[level] for level in (1, 2, 3)]
    hows = [p.description.split(" (")[-1].rstrip(")") for p in proposals]
    assert sorted(hows[:2]) == ["x0.9", "x1.1"] and sorted(hows[2:4]) == ["x0.95", "x1.05"]
    assert all(p.extra == {"file": "train.py", "name": "MATRIX_LR", "old": "0.04", "new": p.extra["new"]}
               for p in proposals)


def test_finer_fraction_steps_stay_fractions(tmp_path):
    worktree = upstream_copy(tmp_path)
    history = tried(["0.25", "0.35", "0.425", "0.6", "0.7"], "a" * 40, "WARMDOWN_RATIO", "0.5")
    proposals = exhaust(OfflineMutator(include=["WARMDOWN_RATIO"]), worktree, "train.py", history=history)
    news = [p.extra["new"] for p, _ in proposals]
    assert set(news[:2]) == {"0.45", "0.55"} and set(news[2:4]) == {"0.475", "0.525"}


def test_a_change_tried_on_another_parent_is_retried_after_the_untried_ones(tmp_path):
    worktree = upstream_copy(tmp_path)
    history = tried(["0.056"], "a" * 40)
    mutator = OfflineMutator(include=["MATRIX_LR"])
    on_b = [p.extra["new"] for p, _ in exhaust(mutator, worktree, "train.py", parent_commit="b" * 40,
                                                history=history)]
    assert set(on_b[:5]) == MATRIX_LR_STEPS[0] - {"0.056"} and on_b[5] == "0.056"
    assert set(on_b[6:]) == MATRIX_LR_STEPS[1] | MATRIX_LR_STEPS[2] | MATRIX_LR_STEPS[3]
    on_a = [p.extra["new"] for p, _ in exhaust(mutator, worktree, "train.py", parent_commit="a" * 40,
                                                history=history)]
    assert "0.056" not in on_a and sorted(on_a) == sorted(set(on_b) - {"0.056"})
    assert set(on_a[:5]) == MATRIX_LR_STEPS[0] - {"0.056"}


OBJECTIVE = {  # twelve constants, all starting at 1.0, and where the truth is best
    "A_LR": 0.003, "B_LR": 0.02, "C_LR": 0.5, "D_LR": 1.7, "E_LR": 0.08, "F_LR": 12.0,
    "G_LR": 0.25, "H_LR": 3.3, "I_LR": 0.0007, "J_LR": 45.0, "K_LR": 0.9, "L_LR": 6.0,
}


def truth(source, objective=OBJECTIVE):
    """Lower is better: how far, in log space, each constant is from its best value."""
    knobs = find_knobs(source)
    return sum(math.log(knobs[name].values[0] / best) ** 2 for name, best in objective.items())


def test_a_greedy_search_keeps_finding_changes(tmp_path):
    source = "".join(f"{name} = 1.0\n" for name in OBJECTIVE)
    path = tmp_path / "train.py"
    mutator, history, start = OfflineMutator(), [], truth(source)
    best = start
    for attempt in range(250):  # fixed steps, each tried once, ran dry after 197 of these
        path.write_text(source)  # the worktree, checked out at the frontier
        parent = hashlib.sha256(source.encode()).hexdigest()[:40]
        proposal = mutator.propose(ProposalRequest(lane=0, worktree=tmp_path, parent_commit=parent,
                                                   editable_files=("train.py",), history=tuple(history),
                                                   attempt=attempt))
        edited = path.read_text()
        value = truth(edited)
        keep = value < best
        history.append(PastExperiment(proposal.description, proposal.change, value, "ok",
                                      "keep" if keep else "discard", proposal.extra, parent))
        if keep:
            source, best = edited, value
    assert best < start / 100


CLOSE = {  # twelve constants at 1.0, each within a few steps of its best, four with no effect
    "A_LR": 1.5, "B_LR": 0.6, "C_LR": 1.3, "D_LR": 0.75, "E_LR": 2.0, "F_LR": 0.5,
    "G_LR": 1.2, "H_LR": 0.8, "I_LR": 1.0, "J_LR": 1.0, "K_LR": 1.0, "L_LR": 1.0,
}
SIGMA = 0.01


def test_a_search_that_keeps_only_clear_wins_does_not_run_dry(tmp_path):
    # Each step is worth under a sigma, a change is kept only 3 sigma better than the frontier,
    # and a frontier is valued by the mean of four runs, as the engine's baselines and
    # confirmations do. Without pairs the mutator ran dry after 150-300 proposals, ten seeds of ten.
    noise = random.Random(0)

    def measure(text, runs=1):
        return truth(text, CLOSE) / 20 + sum(noise.gauss(0, SIGMA) for _ in range(runs)) / runs

    source = "".join(f"{name} = 1.0\n" for name in CLOSE)
    path = tmp_path / "train.py"
    mutator, history, frontier = OfflineMutator(), [], measure(source, 4)
    for attempt in range(300):
        path.write_text(source)
        parent = hashlib.sha256(source.encode()).hexdigest()[:40]
        proposal = mutator.propose(ProposalRequest(lane=0, worktree=tmp_path, parent_commit=parent,
                                                   editable_files=("train.py",), history=tuple(history),
                                                   frontier_val_bpb=frontier, attempt=attempt))
        edited = path.read_text()
        value = measure(edited)
        keep = value < frontier - 3 * SIGMA
        history.append(PastExperiment(proposal.description, proposal.change, value, "ok",
                                      "keep" if keep else "discard", proposal.extra, parent))
        if keep:
            source, frontier = edited, measure(edited, 4)
    assert any(" + " in past.change for past in history if past.decision == "keep")


def discarded(values, parent="a" * 40):
    """The mutator's own single changes to the upstream file, discarded on `parent` with the
    value each measured, by key ("MATRIX_LR=0.048": 0.998)."""
    knobs = find_knobs(UPSTREAM)
    history = []
    for key, value in values.items():
        name, new = key.split("=")
        history.append(PastExperiment(key, key, value, "ok", "discard",
                                      {"name": name, "old": knobs[name].texts[0], "new": new}, parent))
    return tuple(history)


def every_change(*names, value=1.01):
    """Every single change of these upstream constants, each measured at `value`, by key."""
    knobs = find_knobs(UPSTREAM)
    return {c.key: value for name in names for c in changes_for(knobs[name])}


def pairs_in(proposals):
    return [p.change for p, _ in proposals if " + " in p.change]


def test_two_near_misses_on_this_parent_are_made_together(tmp_path):
    worktree = upstream_copy(tmp_path)
    coarse = {key: 1.01 for key in ["EMBEDDING_LR=0.3", "EMBEDDING_LR=0.42", "EMBEDDING_LR=0.51",
                                    "EMBEDDING_LR=0.84", "EMBEDDING_LR=1.2"]}
    coarse |= {f"MATRIX_LR={new}": 1.01 for new in sorted(MATRIX_LR_STEPS[0] - {"0.048"})}
    near = {"MATRIX_LR=0.048": 0.998, "EMBEDDING_LR=0.72": 0.999}  # better than 1.0, not kept
    history = discarded(near | coarse)
    mutator = OfflineMutator(include=["MATRIX_LR", "EMBEDDING_LR"])
    proposals = exhaust(mutator, worktree, "train.py", history=history, frontier_val_bpb=1.0)
    assert len(proposals) == 12 + 1  # every finer single step, and the one pair
    ((index, (pair, after)),) = [(i, p) for i, p in enumerate(proposals) if " + " in p[0].change]
    assert index < 4
    assert pair.change == "EMBEDDING_LR=0.72 + MATRIX_LR=0.048"
    assert pair.description == "EMBEDDING_LR 0.6 -> 0.72 (x1.2) + MATRIX_LR 0.04 -> 0.048 (x1.2)"
    assert pair.hypothesis.startswith("two changes that each measured better than the frontier")
    assert sorted(changed_lines(UPSTREAM, after)) == sorted([
        "-EMBEDDING_LR = 0.6", "-MATRIX_LR = 0.04  # Muon",
        "+EMBEDDING_LR = 0.72", "+MATRIX_LR = 0.048  # Muon"])
    assert pair.extra == {"file": "train.py", "pair": [{"name": "EMBEDDING_LR", "old": "0.6", "new": "0.72"},
                                                       {"name": "MATRIX_LR", "old": "0.04", "new": "0.048"}]}
    # The key does not depend on the order the history lists the two.
    again = exhaust(OfflineMutator(seed=5, include=["MATRIX_LR", "EMBEDDING_LR"]), worktree, "train.py",
                    history=history[::-1], frontier_val_bpb=1.0)
    assert pairs_in(again) == ["EMBEDDING_LR=0.72 + MATRIX_LR=0.048"]
    # Tried on this parent, the pair is not made again, by a mutator that never handed it out.
    tried_pair = PastExperiment(pair.description, pair.change, 0.999, "ok", "discard", pair.extra, "a" * 40)
    later = exhaust(OfflineMutator(include=["MATRIX_LR", "EMBEDDING_LR"]), worktree, "train.py",
                    history=history + (tried_pair,), frontier_val_bpb=1.0)
    assert len(later) == 12 and pairs_in(later) == []


@pytest.mark.parametrize("other,frontier", [
    (discarded({"EMBEDDING_LR=0.72": 0.999}, parent="b" * 40), 1.0),
    (discarded({"EMBEDDING_LR=0.72": 1.001}), 1.0),
    (discarded({"EMBEDDING_LR=0.72": 0.999}), None),
    (tuple(replace(p, decision=None) for p in discarded({"EMBEDDING_LR=0.72": 0.999})), 1.0),
    (tuple(replace(p, notes={}) for p in discarded({"EMBEDDING_LR=0.72": 0.999})), 1.0),
], ids=["a near miss on another parent", "measured worse than the frontier", "no frontier value",
        "not decided yet", "not one of the mutator's own changes"])
def test_only_near_misses_on_this_parent_are_paired(tmp_path, other, frontier):
    worktree = upstream_copy(tmp_path)
    history = discarded({"MATRIX_LR=0.048": 0.998}) + other
    proposals = exhaust(OfflineMutator(include=["MATRIX_LR", "EMBEDDING_LR"]), worktree, "train.py",
                        history=history, frontier_val_bpb=frontier)
    assert proposals and pairs_in(proposals) == []


def test_better_is_higher_when_the_metric_says_so(tmp_path):
    worktree = upstream_copy(tmp_path)
    history = discarded({"MATRIX_LR=0.048": 0.51, "EMBEDDING_LR=0.72": 0.505, "WEIGHT_DECAY=0.24": 0.49})
    proposals = exhaust(OfflineMutator(include=["MATRIX_LR", "EMBEDDING_LR", "WEIGHT_DECAY"]), worktree,
                        "train.py", history=history, frontier_val_bpb=0.5,
                        metric=Metric("accuracy", Direction.HIGHER))
    assert pairs_in(proposals) == ["EMBEDDING_LR=0.72 + MATRIX_LR=0.048"]


def test_with_every_single_tried_pairs_come_best_first_and_then_it_runs_dry(tmp_path):
    worktree = upstream_copy(tmp_path)
    values = every_change("MATRIX_LR", "EMBEDDING_LR", "WEIGHT_DECAY")
    values |= {"WEIGHT_DECAY=0.24": 0.997, "MATRIX_LR=0.048": 0.998, "EMBEDDING_LR=0.72": 0.999}
    proposals = exhaust(OfflineMutator(include=["MATRIX_LR", "EMBEDDING_LR", "WEIGHT_DECAY"]), worktree,
                        "train.py", history=discarded(values), frontier_val_bpb=1.0)
    assert [p.change for p, _ in proposals] == [  # measured gains together: 0.005, 0.004, 0.003
        "MATRIX_LR=0.048 + WEIGHT_DECAY=0.24", "EMBEDDING_LR=0.72 + WEIGHT_DECAY=0.24",
        "EMBEDDING_LR=0.72 + MATRIX_LR=0.048"]


def test_a_lane_gets_the_best_pair_whose_constants_are_not_in_flight(tmp_path):
    names = ("MATRIX_LR", "EMBEDDING_LR", "WEIGHT_DECAY", "WARMDOWN_RATIO")
    values = every_change(*names) | {"MATRIX_LR=0.048": 0.996, "EMBEDDING_LR=0.72": 0.997,
                                     "WEIGHT_DECAY=0.24": 0.998, "WARMDOWN_RATIO=0.6": 0.999}
    mutator = OfflineMutator(include=names)
    changes = [mutator.propose(request(upstream_copy(tmp_path, f"lane{lane}"), "train.py", lane=lane,
                                       history=discarded(values), frontier_val_bpb=1.0)).change
               for lane in range(2)]
    assert changes == ["EMBEDDING_LR=0.72 + MATRIX_LR=0.048", "WARMDOWN_RATIO=0.6 + WEIGHT_DECAY=0.24"]


def test_the_two_batch_sizes_are_not_paired(tmp_path):
    worktree = upstream_copy(tmp_path)
    history = discarded({"TOTAL_BATCH_SIZE=2**20": 0.998, "DEVICE_BATCH_SIZE=64": 0.998,
                         "MATRIX_LR=0.048": 0.999})
    proposals = exhaust(OfflineMutator(include=["*BATCH_SIZE", "MATRIX_LR"]), worktree, "train.py",
                        history=history, frontier_val_bpb=1.0)
    assert sorted(pairs_in(proposals)) == ["DEVICE_BATCH_SIZE=64 + MATRIX_LR=0.048",
                                           "MATRIX_LR=0.048 + TOTAL_BATCH_SIZE=2**20"]


def test_kept_directions_count_each_part_of_a_kept_pair():
    pair = {"file": "train.py", "pair": [{"name": "EMBEDDING_LR", "old": "0.6", "new": "0.72"},
                                         {"name": "MATRIX_LR", "old": "0.04", "new": "0.034"}]}
    single = {"file": "train.py", "name": "MATRIX_LR", "old": "0.034", "new": "0.029"}
    history = [PastExperiment("a pair", "EMBEDDING_LR=0.72 + MATRIX_LR=0.034", 0.99, "ok", "keep", pair),
               PastExperiment("a single", "MATRIX_LR=0.029", 0.98, "ok", "keep", single),
               PastExperiment("discarded", "EMBEDDING_LR=0.84", 0.99, "ok", "discard",
                              {"name": "EMBEDDING_LR", "old": "0.72", "new": "0.84"})]
    assert kept_directions(history) == Counter({("EMBEDDING_LR", 1): 1, ("MATRIX_LR", -1): 2})


def test_excluded_names_are_never_touched(tmp_path):
    copies = ((trainer_copy(tmp_path), "trainer/train.py"), (upstream_copy(tmp_path), "train.py"))
    for worktree, editable in copies:
        names = {p.extra["name"] for p, _ in exhaust(OfflineMutator(), worktree, editable)}
        assert not names & {"SEED", "COMPILE", "HEAD_DIM", "FA3_LOAD_TIMEOUT", "H100_BF16_PEAK_FLOPS"}
        assert {"DEPTH", "MATRIX_LR", "TOTAL_BATCH_SIZE", "WINDOW_PATTERN"} <= names


def test_window_patterns_keep_their_letters(tmp_path):
    worktree = upstream_copy(tmp_path)
    for proposal, after in exhaust(OfflineMutator(include=["WINDOW_PATTERN"]), worktree, "train.py"):
        pattern = new_value(after, "WINDOW_PATTERN")
        assert pattern and set(pattern) <= {"S", "L"} and pattern != "SSSL"
