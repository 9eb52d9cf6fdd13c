"""The plateau policy: a research line whose keeps dried up is said, then steered, then ended.

A night that stopped finding anything looks, from its table, exactly like a healthy one; a
person asleep learns of it in the morning, hours of GPU time later. So the engine counts the
experiments judged in a row without a keep. At `after` of them it warns (a WARNING notice, an
events row, a notification) and the proposers are told: the brief says the line has plateaued
and asks for another direction, the offline mutator widens its steps. At twice `after` the night
ends in order, like --max-experiments: no new proposal runs, what is in flight is judged, exit 0
with the reason.

What counts: a proposal or a verification on a moved frontier that gets its final decision
(a crash is a decision too: the thousands of failed runs a peer found in the morning were
exactly this). A keep, by the rules or by a person, starts the count again. Baselines and
confirmations are not experiments of their own, and a winner that is measured again on a new
frontier is counted once, when its verification is decided.

Pure: no git, store or thread; the supervisor applies the steps it returns."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from results.records import Decision, Experiment, Kind

from .noise import Rule


class Step(enum.StrEnum):
    WARN = "warning"  # the line has plateaued: say so, and steer the proposers
    END = "end"  # still no keep after as many again: the night ends


@dataclass
class Plateau:
    after: int  # 0: the policy is off
    misses: int = 0  # judged in a row without a keep
    since: int | None = None  # the experiment the count runs from: the last keep, or the start
    warned: bool = False
    ended: bool = False

    @property
    def told(self) -> bool:
        """Whether the proposers should hear that the line has plateaued."""
        return self.warned and self.misses >= self.after > 0

    def judged(self, exp: Experiment, rule: Rule | None) -> Step | None:
        """Fold one decision in; the step to take now, if any."""
        if exp.kind is Kind.BASELINE and self.since is None:
            self.since = exp.id  # the starting point's first run: "since #1"
            return None
        if exp.kind not in (Kind.PROPOSAL, Kind.VERIFICATION) or exp.decision is None:
            return None
        if exp.decision is Decision.KEEP:
            self.misses, self.since, self.warned = 0, exp.id, False
            return None
        if rule is Rule.REMEASURE:  # its verification on the new frontier is the one counted
            return None
        self.misses += 1
        if self.after <= 0 or self.ended:
            return None
        if self.misses >= 2 * self.after and self.warned:
            self.ended = True
            return Step.END
        if self.misses >= self.after and not self.warned:
            self.warned = True
            return Step.WARN
        return None

    def since_text(self) -> str:
        return f"#{self.since}" if self.since is not None else "the start"

    def reason(self) -> str:
        """The night's end, as the exit line and the log say it."""
        return f"plateau: {self.misses} experiments without a keep since {self.since_text()}"
