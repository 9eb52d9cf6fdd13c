"""The offline mutator: a proposer with no LLM behind it.

It reads the hyperparameter block of the editable file with `ast`, changes one constant's
literal by a step around the frontier's value (text of that literal only, so the diff is one
line), steps finer once the coarse steps around that value have been tried, and never proposes
the same change twice on one parent. Changes discarded on the parent that still measured better
than it (near misses: a gain smaller than the noise the engine asks for) are offered again two
at a time, on different constants, since two such gains together are easier to tell from the
noise. It is the `--agent offline` proposer and the baseline the LLM agents have to beat.

    knobs.py     the constants a file offers (`NAME = literal`, per-profile tables, window patterns)
    steps.py     the changes each constant allows, level by level, and how they are written
    search.py    which change comes next: the coarsest open level, near misses paired, the draw
    proposer.py  OfflineMutator: the proposer the engine calls, one lane at a time
"""

from .proposer import OfflineMutator

__all__ = ["OfflineMutator"]
