"""OfflineMutator, the proposer the engine calls: it finds the editable file's constants, asks
the search for the next change on this parent, writes it, and remembers what it handed out to
which lane so two lanes do not edit one line at once."""

from __future__ import annotations

import hashlib
import random
import threading
from collections import Counter, deque
from typing import Iterable

from agents.proposer import PastExperiment, Proposal, ProposalError, ProposalRequest

from .knobs import Knob, context_lengths, find_knobs
from . import search
from .search import kept_directions, near_misses, notes_of
from .steps import Change, Pair, apply_all, batches_still_divide, changes_for, matches, reads_back

# Not hyperparameters, or a change that measures nothing: the seed only reshuffles noise,
# compile and timeouts change speed of start-up, HEAD_DIM is tied to kernel tile sizes,
# peak FLOPS only rescales the reported MFU, and the eval and context constants belong to
# the fixed harness (changing them would move the yardstick, not the model).
DEFAULT_EXCLUDE = (
    "SEED", "COMPILE", "HEAD_DIM", "FA3_LOAD_TIMEOUT", "*_TIMEOUT", "*PEAK*FLOPS*",
    "TIME_BUDGET", "MAX_SEQ_LEN", "VOCAB_SIZE", "*EVAL*", "STARTUP_EXCLUDE_STEPS",
)

# Once near misses can be paired, how often a proposal is a pair rather than a single change:
# pairs stack what was measured, singles keep exploring what was not.
PAIR_CHANCE = 0.5
PLATEAU_PAIR_CHANCE = 0.8  # a plateaued line: what each near miss gave alone is not moving it
PAIR_HYPOTHESIS = "two changes that each measured better than the frontier, inside noise, stack"

# (name, direction) -> why the change might lower val_bpb; direction +1 raises the value.
HYPOTHESES = {
    ("MATRIX_LR", 1): "a higher Muon learning rate converges faster within the fixed budget",
    ("MATRIX_LR", -1): "a lower Muon learning rate is more stable and ends at a lower loss",
    ("EMBEDDING_LR", 1): "embeddings that learn faster help a short run",
    ("EMBEDDING_LR", -1): "a calmer embedding learning rate reduces noise in the residual stream",
    ("UNEMBEDDING_LR", 1): "a faster-learning lm_head fits the output distribution sooner",
    ("UNEMBEDDING_LR", -1): "a slower lm_head keeps the logits stable",
    ("SCALAR_LR", 1): "the residual scalars find their balance sooner with a higher rate",
    ("SCALAR_LR", -1): "the residual scalars overshoot less with a lower rate",
    ("WEIGHT_DECAY", 1): "stronger weight decay regularises the matrices and generalises better",
    ("WEIGHT_DECAY", -1): "weaker weight decay lets a short run fit faster",
    ("DEPTH", 1): "a deeper model is worth its slower steps",
    ("DEPTH", -1): "a shallower model takes more steps in the budget and wins on throughput",
    ("ASPECT_RATIO", 1): "a wider model learns more per token",
    ("ASPECT_RATIO", -1): "a narrower model trains on more tokens in the same time",
    ("DEVICE_BATCH_SIZE", 1): "bigger micro-batches keep the GPU busier",
    ("DEVICE_BATCH_SIZE", -1): "smaller micro-batches free memory at little cost in speed",
    ("TOTAL_BATCH_SIZE", 1): "bigger optimizer batches give cleaner gradients",
    ("TOTAL_BATCH_SIZE", -1): "smaller optimizer batches fit more updates into the budget",
    ("WARMUP_RATIO", 1): "a warmup steadies the first updates",
    ("WARMUP_RATIO", -1): "less warmup leaves more time at the peak learning rate",
    ("WARMDOWN_RATIO", 1): "a longer cooldown anneals to a lower final loss",
    ("WARMDOWN_RATIO", -1): "a shorter cooldown keeps the peak learning rate longer",
    ("FINAL_LR_FRAC", 1): "a higher floor keeps learning until the end",
    ("FINAL_LR_FRAC", -1): "annealing closer to zero settles into a lower loss",
    ("MUON_MOMENTUM", 1): "more momentum smooths the Muon updates",
    ("MUON_MOMENTUM", -1): "less momentum reacts faster in a short run",
    ("LOGIT_SOFTCAP", 1): "a looser softcap lets the model be confident where it should be",
    ("LOGIT_SOFTCAP", -1): "a tighter softcap keeps the logits and the loss stable",
    ("ROPE_BASE", 1): "a larger RoPE base resolves long-range positions better",
    ("ROPE_BASE", -1): "a smaller RoPE base sharpens local position information",
    ("SHORT_WINDOW_DIVISOR", 1): "shorter sliding windows make the short layers cheaper",
    ("SHORT_WINDOW_DIVISOR", -1): "longer sliding windows give the short layers more context",
    ("WINDOW_PATTERN", 0): "a different mix of short and full-context layers trades speed for context",
}


def hypothesis(change: Change, kept: Counter) -> str:
    verb = {1: "raising", -1: "lowering", 0: "changing"}[change.direction]
    text = (HYPOTHESES.get((change.knob.name, change.direction))
            or f"{verb} {change.knob.name} lowers val_bpb within the fixed budget")
    if change.direction and kept[(change.knob.name, change.direction)]:
        text += " (a step this way was kept before)"
    return text


# A lane runs one proposal while it drafts the next, and a finished run may still wait for its
# decision. Anything older a lane was given that the history never heard of was dropped on the
# way (a replay that conflicted with a new frontier), and must not hold its constant for good.
IN_FLIGHT_PER_LANE = 2


class OfflineMutator:
    """Perturbs one hyperparameter per proposal around the frontier, or two whose changes were
    near misses, deterministically given the seed, the request and what it handed out before,
    and never hands out the same change twice on one parent."""

    name = "offline-mutator"

    def __init__(self, seed: int = 0, include: Iterable[str] | None = None,
                 exclude: Iterable[str] = DEFAULT_EXCLUDE):
        self.seed = seed
        self.include = None if include is None else tuple(include)
        self.exclude = tuple(exclude)
        self._lock = threading.Lock()  # lanes call propose from their own threads
        self._handed_out: dict[str, set[str]] = {}  # parent commit -> keys given for it
        # lane -> (parent commit, key, constants changed) of its latest proposals, oldest first
        self._given_to: dict[int, deque[tuple[str, str, tuple[str, ...]]]] = {}

    def _wanted(self, name: str) -> bool:
        if self.include is not None and not matches(name, self.include):
            return False
        return not matches(name, self.exclude)

    def _target(self, request: ProposalRequest) -> tuple[str, str, dict[str, Knob]]:
        """The first editable file with hyperparameters this mutator may change."""
        for relative in request.editable_files:
            path = request.worktree / relative
            try:
                source = path.read_bytes().decode("utf-8")
                knobs = find_knobs(source)
            except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
                continue
            if any(self._wanted(name) for name in knobs):
                return relative, source, knobs
        files = ", ".join(request.editable_files)
        raise ProposalError(f"no hyperparameter assignments to change in {files}")

    def _stream(self, request: ProposalRequest, source: str) -> random.Random:
        """Seeded by the code being changed, not by the commit that holds it: the same trainer
        gets the same proposals in any repository, whatever its history or its other files
        (an edit to prepare.py or a README does not reshuffle the search)."""
        past = "|".join(f"{p.change}:{p.decision}" for p in request.history)
        code = hashlib.sha256(source.encode("utf-8")).hexdigest()
        fields = (self.seed, request.lane, request.attempt, code, past)
        digest = hashlib.sha256("\0".join(map(str, fields)).encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def _in_flight(self, history: Iterable[PastExperiment]) -> set[str]:
        """The constants of the changes handed out whose outcome the history does not hold yet
        (no decision, and no crash or rejection either): another lane drafts or runs them."""
        known = {(p.parent, p.change) for p in history if p.decision is not None or p.status != "ok"}
        return {name for given in self._given_to.values() for parent, key, names in given
                if (parent, key) not in known and (None, key) not in known for name in names}

    def propose(self, request: ProposalRequest) -> Proposal:
        """One change to one constant, or a pair of near misses, written to the worktree. A
        change or pair is blocked once it was handed out or tried on this parent (or by an
        experiment whose parent is unknown); the rest are offered in this order:

        1. per constant, only the coarsest level (LEVELS) with a change left open; at that
           level its never-tried changes, and only when they are used up the ones tried on
           another parent, as the frontier has moved since;
        2. across constants, those that no proposal in flight is changing come first, then
           never-tried changes before retries;
        3. one drawn from the best of those, weighted towards directions kept before (`search.draw`);
        4. once a pair of near misses is open (`search.pairs`), it replaces that draw with chance
           PAIR_CHANCE, tossed after the draw so that a line's proposals stay what they were
           until it has near misses; the best pair is made, one whose constants are not in
           flight first. With no single change left open, pairs only.

        On a plateau (`request.plateau`) it widens: bolder moves (steps.WIDE) come first, and a
        pair replaces the draw with chance PLATEAU_PAIR_CHANCE.
        """
        relative, source, knobs = self._target(request)
        lengths = context_lengths(request.worktree, [source])
        candidates = [c for name, knob in knobs.items() if self._wanted(name)
                      for c in changes_for(knob, wide=request.plateau is not None)
                      if batches_still_divide(c, knobs, lengths)]
        kept = kept_directions(request.history)
        rng = self._stream(request, source)
        here = request.parent_commit
        with self._lock:
            given = self._handed_out.setdefault(here, set())
            blocked = given | {p.change for p in request.history if p.change and p.parent in (None, here)}
            elsewhere = {p.change for p in request.history if p.change and p.parent not in (None, here)}
            elsewhere |= set().union(*(keys for parent, keys in self._handed_out.items() if parent != here))
            busy = self._in_flight(request.history)
            near = near_misses(request, candidates)
            while True:
                offers = search.offers(candidates, blocked, elsewhere)
                pairs = search.pairs(near, blocked, busy)
                if not offers and not pairs:
                    raise ProposalError(f"every change the offline mutator knows for {relative} "
                                        f"at {here[:12]} has been tried", exhausted=True)
                proposed = search.draw(rng, offers, busy, elsewhere, kept) if offers else None
                chance = PAIR_CHANCE if request.plateau is None else PLATEAU_PAIR_CHANCE
                if pairs and (proposed is None or rng.random() < chance):
                    proposed = pairs[0]
                edited = apply_all(source, proposed)
                # Recorded before the check: an edit that does not read back is dropped for
                # good on this parent rather than retried.
                given.add(proposed.key)
                blocked.add(proposed.key)
                if reads_back(edited, proposed):  # never hand out an edit that breaks the file
                    break
            lane = self._given_to.setdefault(request.lane, deque(maxlen=IN_FLIGHT_PER_LANE))
            lane.append((here, proposed.key, tuple(c.knob.name for c in proposed.parts)))
        (request.worktree / relative).write_bytes(edited.encode("utf-8"))
        if isinstance(proposed, Pair):
            why, notes = PAIR_HYPOTHESIS, {"pair": [notes_of(c) for c in proposed.parts]}
        else:
            why, notes = hypothesis(proposed, kept), notes_of(proposed)
        return Proposal(description=proposed.description, hypothesis=why, change=proposed.key,
                        agent=self.name, extra={"file": relative, **notes})

