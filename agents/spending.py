"""The session's LLM spending limit (--max-cost): every client of a proposer charges one
purse, and a call that would take it past the limit is not made.

A call's cost is only known after it returns, so before each one the purse is asked with an
estimate on the high side: the prompt's tokens as counted from its characters, and as many
output tokens as the most any call has produced so far (the client's output cap until one
has returned). What the call really cost is charged when it returns, from the same numbers
the llm_calls row records."""

from __future__ import annotations

import threading


def usd(amount: float) -> str:
    """Dollars to the cent, or to a hundredth of a cent below ten cents (a test's limit)."""
    return f"${amount:,.2f}" if amount >= 0.1 else f"${amount:.4f}"


class SpendingLimitReached(Exception):
    def __init__(self, limit: float, spent: float):
        super().__init__(f"the spending limit of {usd(limit)} is reached ({usd(spent)} spent on LLM calls)")
        self.limit = limit
        self.spent = spent


class Purse:
    def __init__(self, limit_usd: float):
        self.limit = float(limit_usd)
        self.spent = 0.0
        self.most_output = 0  # the most output tokens one call has produced
        self.held = 0.0  # the estimates of the calls in flight
        self.reached = False
        self._lock = threading.Lock()

    def hold(self, estimate_usd: float) -> None:
        """Hold a call's estimated cost until it is answered (`release`), or raise
        SpendingLimitReached when what is spent and held would pass the limit with it: calls
        that lanes start at the same moment cannot pass it together. Once reached, the limit
        stays reached for the session."""
        with self._lock:
            if self.reached or self.spent + self.held + estimate_usd > self.limit:
                self.reached = True
                raise SpendingLimitReached(self.limit, self.spent)
            self.held += estimate_usd

    def release(self, estimate_usd: float) -> None:
        with self._lock:
            self.held = max(0.0, self.held - estimate_usd)

    def charge(self, cost_usd: float | None, output_tokens: int | None) -> None:
        with self._lock:
            self.spent += cost_usd or 0.0
            self.most_output = max(self.most_output, output_tokens or 0)
