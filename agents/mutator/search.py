"""Which change the mutator makes next, given what the history says: per constant the coarsest
level with a change still open, never-tried changes before retries, constants no other lane is
changing first, directions kept before weighted up, and near misses (discarded, yet better than
the frontier) paired on two constants once there are two."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from typing import Iterable

from agents.proposer import PastExperiment, ProposalRequest

from .knobs import parse_number
from .steps import DEVICE_BATCH, TOTAL_BATCH, Change, Pair


def notes_of(change: Change) -> dict:
    """What a single change records with its proposal: the constant, its old and new text."""
    return {"name": change.knob.name, "old": "/".join(change.knob.texts), "new": "/".join(change.texts)}


def recorded(notes: dict) -> list[dict]:
    """The notes of each single change an experiment made, from what this mutator recorded:
    a pair's two, or the experiment's own notes."""
    pair = notes.get("pair")
    return [part for part in pair if isinstance(part, dict)] if isinstance(pair, list) else [notes]


def kept_directions(history: Iterable[PastExperiment]) -> Counter:
    """(name, direction) -> how many kept experiments moved that constant that way, from the
    notes the mutator recorded with its own proposals (the constant, its old and new text, for
    each part of a pair)."""
    kept: Counter = Counter()
    for past in history:
        if past.decision != "keep":
            continue
        for notes in recorded(past.notes):
            name, old, new = (notes.get(k) for k in ("name", "old", "new"))
            if not isinstance(name, str) or old is None or new is None:
                continue
            old, new = (parse_number(str(text).split("/")[0]) for text in (old, new))
            if old is not None and new is not None and old != new:
                kept[(name, 1 if new > old else -1)] += 1
    return kept


def offers(candidates: list[Change], blocked: set[str], elsewhere: set[str]) -> list[Change]:
    """What each constant offers, in candidate order: the changes at the coarsest level that
    still has one not blocked on this parent; of those, the ones never tried anywhere, or once
    they are used up, the ones tried on another parent."""
    open_by_knob: dict[str, list[Change]] = {}
    for change in candidates:
        if change.key not in blocked:
            open_by_knob.setdefault(change.knob.name, []).append(change)
    offers = []
    for changes in open_by_knob.values():
        level = min(c.level for c in changes)
        at_level = [c for c in changes if c.level == level]
        offers += [c for c in at_level if c.key not in elsewhere] or at_level
    return offers


def near_misses(request: ProposalRequest, candidates: Iterable[Change]) -> list[tuple[Change, float]]:
    """The single changes discarded on this parent that measured better than the frontier all
    the same, each with how much better: a gain the engine could not tell from the noise.
    Only this mutator's own changes that can still be made to the parent's file count (their
    notes name the constant and both texts the candidate has)."""
    frontier, metric = request.frontier_val_bpb, request.metric
    if frontier is None:
        return []
    by_key = {c.key: c for c in candidates}
    near: dict[str, tuple[Change, float]] = {}
    for past in request.history:
        change = by_key.get(past.change)
        if (change is None or past.parent != request.parent_commit or past.status != "ok"
                or past.decision != "discard" or past.val_bpb is None
                or not metric.better(past.val_bpb, frontier)
                or any(past.notes.get(k) != v for k, v in notes_of(change).items())):
            continue
        near[change.key] = (change, metric.improvement(past.val_bpb - frontier))
    return list(near.values())


def pairs(near: list[tuple[Change, float]], blocked: set[str], busy: set[str]) -> list[Pair]:
    """Every pair of near misses on two constants not blocked on this parent: those that no
    proposal in flight is changing first, then the largest measured gain together, then by key.
    The two batch sizes are never paired: each was checked to divide with the other as it is."""
    pairs = []
    for (a, gain_a), (b, gain_b) in itertools.combinations(near, 2):
        names = {a.knob.name, b.knob.name}
        if len(names) < 2 or names == {TOTAL_BATCH, DEVICE_BATCH}:
            continue
        pair = Pair(tuple(sorted((a, b), key=lambda c: c.key)), gain_a + gain_b)
        if pair.key not in blocked:
            pairs.append(pair)
    return sorted(pairs, key=lambda p: (any(c.knob.name in busy for c in p.parts), -p.gain, p.key))


def draw(rng: random.Random, offers: list[Change], busy: set[str], elsewhere: set[str],
          kept: Counter) -> Change:
    """One of the preferred offers, in proportion to its weight (a direction kept before weighs
    more). Preferred: changes to constants that no proposal in flight is changing (two lanes
    editing one line conflict when both are kept), then changes never tried anywhere before
    those tried on another parent.

    The first draw is among the never-tried offers (all of them when none is left), as it was
    before lanes were told apart, so a lane's choice stays what it was unless it lands where
    another lane is at work; only then a second draw among the preferred ones. The preferred
    ones are either all among the first draw's or none of them, so each is still drawn in
    proportion to its weight."""
    def rank(change: Change) -> tuple[bool, bool]:
        return change.knob.name in busy, change.key in elsewhere

    def weighted(pool: list[Change]) -> Change:
        return rng.choices(pool, [1 + 2 * kept[(c.knob.name, c.direction)] for c in pool])[0]

    best = min(map(rank, offers))
    change = weighted([c for c in offers if c.key not in elsewhere] or offers)
    return change if rank(change) == best else weighted([c for c in offers if rank(c) == best])
