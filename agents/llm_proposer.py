"""The LLM research agents as the engine sees them: a Proposer.

The engine asks for proposals from one thread per lane; here every lane's worker runs as a
coroutine on one asyncio loop of our own, so all lanes' LLM calls are in flight at once while
their GPUs train. The orchestrator and the memory writer share that loop. The engine learns
nothing of providers: it gets proposals, and LLM calls reported through its context."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import CancelledError, Future

from results.metric import Metric

from .llm import BudgetSpent, CallInfo, Client, LlmError, Message
from .orchestrator import Orchestrator
from .proposer import Outcome, Proposal, ProposalError, ProposalRequest, ProposerContext
from .tools import short_goal
from .worker import Context, ToolCallsMissing, Worker

log = logging.getLogger("autoresearch.agents")

MEMORY_SYSTEM = ("You keep a research notebook for a team improving a small GPT training program ({goal}). Given "
                 "one finished experiment, write the lesson in one or two sentences: what was changed, what "
                 "happened, and what it suggests. No preamble.")
SHUTDOWN_GRACE_S = 20.0  # memories still being written when the supervisor stops
# Proposals that ended in prose, from a model that has not made one tool call this session,
# before every lane stops asking it: it cannot call tools (or its server does not let it).
TOOLLESS_PROPOSALS = 2


class LlmProposer:
    def __init__(self, client: Client, *, orchestrator_client: Client | None = None, lanes: int = 1,
                 orchestrate_every: int | None = None, max_turns: int | None = None):
        self.client = client
        self.name = client.name
        self.lanes = lanes
        self.orchestrator = Orchestrator(orchestrator_client or client, lanes)
        self._orchestrate_every = orchestrate_every  # None: follow the number of lanes
        self.max_turns = max_turns
        self.context: ProposerContext | None = None
        # change key -> where: every change this proposer submitted. Kept after its result, as a
        # lane's request may carry a history older than that result.
        self._claimed: dict[str, str] = {}
        self._results = 0
        self._tool_replies = 0  # replies with a tool call, over every lane's proposals
        self._toolless = 0  # proposals that ended because the model answered in prose
        self._orchestrating = False
        self._history: tuple = ()  # every lane's experiments, from the latest request
        self._metric = Metric()  # what they are judged by, from the latest request
        self._tasks: set[asyncio.Task] = set()  # memories and the orchestrator
        self._in_flight: set[Future] = set()  # proposals being drafted
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="llm-agents", daemon=True)
        self._thread.start()

    @property
    def orchestrate_every(self) -> int:
        """Results between two orchestrator calls: by default one per lane (at least two), so
        the cadence per result is the same on 1 GPU as on 8; `attach` gives the real count."""
        return self._orchestrate_every or max(2, self.lanes)

    # -- the engine's side ------------------------------------------------------------------------

    def attach(self, context: ProposerContext) -> None:
        self.context = context
        self.client.window()  # asked once, now, so the log says early what the prompts are fitted to
        self.lanes = context.lanes
        self.orchestrator.lanes = context.lanes
        for client in {id(self.client): self.client, id(self.orchestrator.client): self.orchestrator.client}.values():
            client.run_id = context.run_id
            client.report = context.report_call

    def propose(self, request: ProposalRequest) -> Proposal:
        """Called on a lane's proposal thread; blocks it (not the loop) until the worker is done."""
        future: Future = asyncio.run_coroutine_threadsafe(self._propose(request), self._loop)
        self._in_flight.add(future)
        try:
            return future.result()
        except CancelledError:
            raise ProposalError("stopped: the supervisor is shutting down") from None
        finally:
            self._in_flight.discard(future)

    def observe(self, outcome: Outcome) -> None:
        """A proposal was judged: write its memory, and let the orchestrator look again every
        few results. Returns at once; the work happens on the agents' loop."""
        self._loop.call_soon_threadsafe(self._start, self._learn(outcome))

    def close(self) -> None:
        """Stop: proposals in flight are abandoned at once (a provider that is down could
        otherwise hold the shutdown for the whole retry budget); memories being written get
        a short grace."""
        if not self._thread.is_alive():
            return
        for future in list(self._in_flight):
            future.cancel()
        asyncio.run_coroutine_threadsafe(self._drain(), self._loop).result(SHUTDOWN_GRACE_S + 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # -- on the loop ----------------------------------------------------------------------------------

    def _start(self, coroutine) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _propose(self, request: ProposalRequest) -> Proposal:
        context = self.context
        self._history, self._metric = request.history, request.metric
        direction = self.orchestrator.direction(request.lane)
        memories = context.recall(direction, 5) if context is not None else []
        tried = {p.change: f"as '{p.description}', {p.status}" + (f", {p.decision}" if p.decision else "")
                 for p in request.history if p.change}

        def where_tried(change: str) -> str | None:
            return tried.get(change) or self._claimed.get(change)

        def remember(lane: int, text: str, tags: list[str]) -> None:
            if context is not None:
                context.remember(text, tuple(tags), f"lane {lane} ({self.name})", None)

        worker = Worker(self.client, tried=where_tried,
                        recall=(lambda q: context.recall(q, 5)) if context is not None else (lambda q: []),
                        remember=remember, transcripts=context.transcripts if context is not None else None,
                        read_run=context.read_run if context is not None else (lambda experiment_id: None),
                        **({"max_turns": self.max_turns} if self.max_turns else {}))
        try:
            proposal = await worker.propose(request, Context(direction, memories))
        except BudgetSpent as e:  # not a failure: the limit the user set
            raise ProposalError(str(e), exhausted=True, final=True) from None
        except LlmError as e:
            raise ProposalError(str(e), transient=e.transient) from None
        except ToolCallsMissing as e:
            self._toolless += 1
            if self._toolless >= TOOLLESS_PROPOSALS and not self._tool_replies + worker.tool_replies:
                raise ProposalError(
                    f"{self.name} has not called a tool in {self._toolless} proposals ({e}); use a model "
                    f"trained for tool calling, served with tool calling on (llama.cpp: --jinja; vLLM: "
                    f"--enable-auto-tool-choice)", final=True) from None
            raise
        finally:
            self._tool_replies += worker.tool_replies
        if proposal.change:
            self._claimed[proposal.change] = f"proposed on lane {request.lane}"
        return proposal

    async def _learn(self, outcome: Outcome) -> None:
        context = self.context
        if context is not None:
            await self._write_memory(outcome, context)
        self._results += 1
        if self._results % self.orchestrate_every == 0 and not self._orchestrating:
            self._orchestrating = True
            try:
                await self.orchestrator.reassign(self._history, self._metric)  # as of the latest request
            finally:
                self._orchestrating = False

    async def _write_memory(self, outcome: Outcome, context: ProposerContext) -> None:
        value = f"{outcome.val_bpb:.6f}" if outcome.val_bpb is not None else "no result"
        reference = f"{outcome.reference:.6f}" if outcome.reference is not None else "unknown"
        facts = (f"Change: {outcome.description}\nHypothesis: {outcome.hypothesis or '-'}\n"
                 f"Direction: {outcome.direction or '-'}\nStatus: {outcome.status}\n{self._metric.name}: {value} "
                 f"(frontier {reference})\nDecision: {outcome.decision} ({outcome.reason})")
        try:
            reply = await self.client.complete(MEMORY_SYSTEM.format(goal=short_goal(self._metric)),
                                               [Message("user", facts)], [],
                                               CallInfo("memory", outcome.lane, outcome.experiment_id))
            text = " ".join(reply.text.split())[:1000]
        except BudgetSpent:
            log.info("no memory for #%s: the spending limit is reached", outcome.experiment_id)
            return
        except LlmError as e:
            log.warning("no memory for #%s: %s", outcome.experiment_id, e)
            return
        if text:
            tags = tuple(t for t in (outcome.decision, outcome.status) if t)
            context.remember(text, tags, f"lane {outcome.lane} ({self.name})", outcome.experiment_id)

    async def _drain(self) -> None:
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=SHUTDOWN_GRACE_S)
            for task in late:
                task.cancel()
        for client in {id(self.client): self.client, id(self.orchestrator.client): self.orchestrator.client}.values():
            sdk = getattr(client, "_sdk", None)
            if sdk is not None:
                await sdk.close()
