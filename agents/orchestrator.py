"""The orchestrator: a separate LLM role that reads the research line's history every few
results and gives each lane a direction, so lanes explore different things instead of all
tuning the same learning rate. Until it has spoken (and whenever it fails), lanes take the
fixed directions below in turn."""

from __future__ import annotations

import logging

from .llm import CallInfo, Client, LlmError, Message, Tool
from results.metric import Metric

from .proposer import PastExperiment
from .tools import history_table, short_goal

log = logging.getLogger("autoresearch.orchestrator")

DIRECTIONS = (
    "optimizer: learning rates, betas, momentum, weight decay",
    "architecture: depth, width, heads, attention window pattern",
    "learning-rate schedule: warmup, warmdown, final learning-rate fraction",
    "regularisation and initialisation",
    "throughput: batch size and anything that buys more steps within the time budget",
    "attention and embeddings: rotary base, logit softcap, value embeddings",
    "simplification: remove something that does not pay for itself",
    "the loss and the output head",
)

SYSTEM = """\
You coordinate {lanes} research lanes that each run one training experiment at a time on \
their own GPU, improving a small GPT training program ({goal}). Read the \
history and give every lane a research direction for its next experiments: directions that \
differ from each other, favour what has been paying off, and leave what keeps failing. Call \
the assign tool once."""

ASSIGN = Tool("assign", "Give each lane its research direction (a short phrase).",
              {"type": "object", "properties": {
                  "directions": {"type": "array", "items": {"type": "object", "properties": {
                      "lane": {"type": "integer"}, "direction": {"type": "string"}}, "required": ["lane", "direction"]}},
                  "rationale": {"type": "string"}}, "required": ["directions"]})


class Orchestrator:
    def __init__(self, client: Client, lanes: int):
        self.client = client
        self.lanes = lanes
        self.directions = {lane: DIRECTIONS[lane % len(DIRECTIONS)] for lane in range(lanes)}

    def direction(self, lane: int) -> str:
        return self.directions.get(lane, DIRECTIONS[lane % len(DIRECTIONS)])

    async def reassign(self, history: tuple[PastExperiment, ...], metric: Metric = Metric()) -> bool:
        """Ask the model for new directions; True when it gave usable ones. A failure keeps
        the current directions: lanes never wait for the orchestrator."""
        current = "\n".join(f"lane {lane}: {text}" for lane, text in sorted(self.directions.items()))
        prompt = (f"History, oldest first (description | {metric.name} | status | decision):\n"
                  f"{history_table(history, 60, metric)}"
                  f"\n\nCurrent directions:\n{current}")
        try:
            reply = await self.client.complete(SYSTEM.format(lanes=self.lanes, goal=short_goal(metric)), [Message("user", prompt)], [ASSIGN],
                                               CallInfo("orchestrator"))
        except LlmError as e:
            log.warning("the orchestrator could not be asked (%s); directions stay", e)
            return False
        call = next((c for c in reply.tool_calls if c.name == "assign" and c.arguments), None)
        given = call.arguments.get("directions") if call is not None else None
        new = {}
        for item in given if isinstance(given, list) else ():
            if isinstance(item, dict) and isinstance(item.get("lane"), int) and 0 <= item["lane"] < self.lanes:
                text = " ".join(str(item.get("direction", "")).split())[:200]
                if text:
                    new[item["lane"]] = text
        if not new:
            log.warning("the orchestrator's reply assigned no direction; directions stay")
            return False
        self.directions.update(new)
        rationale = " ".join(str(call.arguments.get("rationale", "")).split())[:500]
        log.info("the orchestrator gave %d lane(s) a new direction%s", len(new), f": {rationale}" if rationale else "")
        return True
