"""The offline mutator, on real files: a copy of this repo's trainer/train.py and a small
upstream-style train.py. Every proposal must be a one-line edit that still parses, and no
change may be handed out twice on one parent."""

import ast
import difflib
import shutil
import threading
from pathlib import Path

import pytest

from agents.mutator import OfflineMutator, find_knobs
from agents.proposer import PastExperiment, ProposalError, ProposalRequest

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
    given = {p.change for p, _ in exhaust(mutator, worktree, "train.py", parent_commit="a" * 40)}
    (worktree / "train.py").write_text(UPSTREAM.replace("MATRIX_LR = 0.04", "MATRIX_LR = 0.056"))
    proposal = mutator.propose(request(worktree, "train.py", parent_commit="b" * 40))
    assert proposal.change not in given


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
