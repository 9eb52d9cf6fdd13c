"""The screen's model: the engine's events folded into plain data. No textual here, so every
rule of what the screen says is tested without a terminal.

The app applies events in batches (ten times a second) and then asks what changed: high-rate
events (progress lines, GPU samples) are all kept -- every loss point goes into its curve --
but they only mark their lane as changed, so a burst costs one redraw of that lane."""

from __future__ import annotations

from array import array
from collections import deque
from dataclasses import dataclass, field, replace

from results.claim import Claim
from results.metric import Metric, delta, running_best, starting_points
from results.records import Decision, Experiment, FrontierMove, GpuSample, Kind, Status
from scheduler.engine import events
from scheduler.engine.noise import Ruling
from scheduler.runs.runparse import Progress
from scheduler.runs.sandbox import SandboxChoice
from scheduler.engine.state import LaneState

from .link import LaneInfo

TELEMETRY_SAMPLES = 60  # one minute at the sampler's 1 Hz
CURVE_POINTS = 20_000  # a 5-minute run prints ~1,000 progress lines; this is a safety cap
NOTICES_KEPT = 200
FAILURES = frozenset({Status.CRASH, Status.OOM, Status.NAN, Status.TIMEOUT, Status.HUNG})
_RANK = {Status.QUEUED: 0, Status.RUNNING: 1}  # every finished status ranks 2


def _rank(status: Status) -> int:
    return _RANK.get(status, 2)


@dataclass
class Telemetry:
    util: deque = field(default_factory=lambda: deque(maxlen=TELEMETRY_SAMPLES))
    memory: deque = field(default_factory=lambda: deque(maxlen=TELEMETRY_SAMPLES))
    temperature: deque = field(default_factory=lambda: deque(maxlen=TELEMETRY_SAMPLES))
    power: deque = field(default_factory=lambda: deque(maxlen=TELEMETRY_SAMPLES))
    last: GpuSample | None = None

    def add(self, sample: GpuSample) -> None:
        self.util.append(sample.util_pct)
        self.memory.append(sample.mem_used_mb)
        self.temperature.append(sample.temp_c)
        self.power.append(sample.power_w)
        self.last = sample


class Curve:
    """A run's loss by step, in two arrays: a night's points are not objects the garbage
    collector has to walk (a list of tuples made its full collections take 80 ms, a stall
    of the screen; bench/bench_tui.py)."""

    def __init__(self, experiment_id: int | None = None):
        self.experiment_id = experiment_id
        self.steps = array("q")
        self.losses = array("d")

    def add(self, step: int, loss: float) -> None:
        if len(self.steps) < CURVE_POINTS:
            self.steps.append(step)
            self.losses.append(loss)

    def __len__(self) -> int:
        return len(self.steps)

    def points(self, most: int | None = None) -> tuple[list[int], list[float]]:
        """Every point, or at most `most` of them evenly spread, the last one included."""
        n = len(self.steps)
        if most is None or n <= most:
            return list(self.steps), list(self.losses)
        stride = -(-n // most)
        index = list(range(0, n, stride))
        if index[-1] != n - 1:
            index.append(n - 1)
        return [self.steps[i] for i in index], [self.losses[i] for i in index]


@dataclass
class LaneView:
    info: LaneInfo
    state: LaneState = LaneState.IDLE
    detail: str = ""
    paused: bool = False  # a person paused it (the engine says so; a lane still training is paused too)
    pending: str | None = None  # what a person asked and the engine has not confirmed yet
    running: Experiment | None = None
    progress: Progress | None = None
    curve: Curve = field(default_factory=Curve)  # the running run's loss (else the last run's)
    last: Experiment | None = None  # the last finished run on this lane
    next_up: Experiment | None = None  # a proposal drafted and waiting (ready or held for review)
    telemetry: Telemetry = field(default_factory=Telemetry)

    @property
    def lane(self) -> int:
        return self.info.lane

    @property
    def evaluating(self) -> bool:
        """Training is over and the run is measuring val_bpb: its progress reached 100% (or no
        training time is left) and it has not finished."""
        p = self.progress
        if self.running is None or p is None:
            return False
        return (p.pct is not None and p.pct >= 100.0) or (p.remaining_s is not None and p.remaining_s <= 0)

    @property
    def activity(self) -> str:
        """What the lane's agent is doing, in the words the pane shows."""
        if self.state is LaneState.LOST:
            return "lost"
        if self.running is not None or self.state.training:
            return "evaluating" if self.evaluating else "training"
        return {LaneState.REVIEW: "awaiting review", LaneState.DONE: "done: nothing more to try"}.get(
            self.state, self.state.value)


@dataclass
class Counts:
    done: int = 0
    kept: int = 0
    discarded: int = 0
    crashed: int = 0
    running: int = 0
    queued: int = 0


@dataclass
class Changes:
    """What the last batch of events touched, for the app to redraw."""

    lanes: set = field(default_factory=set)
    urgent: set = field(default_factory=set)  # lanes whose change is more than new numbers
    header: bool = False
    table: bool = False

    def __bool__(self) -> bool:
        return bool(self.lanes) or self.header or self.table


class ResearchView:
    def __init__(self, tag: str, lanes: list[LaneInfo], *, review: bool = False, metric: Metric | None = None,
                 max_cost: float | None = None, sandbox: SandboxChoice | None = None,
                 agents_url: str | None = None):
        self.max_cost = max_cost
        self.sandbox = sandbox
        self.agents_url = agents_url
        self.tag = tag
        self.review = review
        self.metric = metric or Metric()
        self.lanes = {info.lane: LaneView(info) for info in lanes}
        self.experiments: dict[int, Experiment] = {}
        self.decisions: dict[int, events.Decided] = {}  # from events: newest wins
        self.confirming: set[int] = set()
        self.held: dict[int, int] = {}  # experiment id -> lane: waiting for approve/reject
        self.review_sent: set[int] = set()
        self.frontier: str | None = None
        self.moves: dict[tuple, FrontierMove] = {}  # every move of the frontier, in order (the tree's links)
        self.noise: events.NoiseEstimated | None = None  # the latest estimate, for the header
        self.llm_calls = 0
        self.llm_tokens = 0
        self.llm_cost: float | None = None
        self.llm_unpriced = 0
        self.notices: deque[events.Notice] = deque(maxlen=NOTICES_KEPT)
        self.finished: events.Finished | None = None
        self.claim: Claim | None = None  # the last claim measured: the frontier against the start
        self.quitting: str | None = None  # what this screen asked: None | "graceful" | "now"
        self.table_version = 0
        self._starts: tuple[int, dict] = (-1, {})  # (table_version, starting points) computed then
        self.changes = Changes(lanes=set(self.lanes), urgent=set(self.lanes), header=True, table=True)

    # -- folding events ------------------------------------------------------------------------

    def apply(self, event) -> None:
        match event:
            case events.RunProgress(lane=n, experiment_id=eid, progress=p):
                lane = self.lanes.get(n)
                if lane is None:
                    return
                lane.progress = p
                if lane.curve.experiment_id != eid:
                    lane.curve = Curve(eid)
                if p.loss is not None:
                    lane.curve.add(p.step, p.loss)
                self.changes.lanes.add(n)  # not urgent: the app may draw it a tick later
            case events.GpuSampled(lane=n, sample=sample):
                if n in self.lanes:
                    self.lanes[n].telemetry.add(sample)
                    self.changes.lanes.add(n)  # not urgent
            case events.RunStarted(lane=n, experiment=exp):
                self._experiment(exp)
                self.held.pop(exp.id, None)
                lane = self.lanes.get(n)
                if lane is not None:
                    lane.running, lane.progress = exp, None
                    lane.curve = Curve(exp.id)
                    if lane.next_up is not None and lane.next_up.id == exp.id:
                        lane.next_up = None
                    self._urgent(n)
            case events.RunFinished(lane=n, experiment=exp):
                exp = self._experiment(exp)
                lane = self.lanes.get(n)
                if lane is not None:
                    lane.running, lane.last = None, exp
                    if lane.pending == "stopping":
                        lane.pending = None
                    self._urgent(n)
            case events.Decided(experiment_id=eid, decision=Ruling.CONFIRM):
                self.confirming.add(eid)
                self._touched(eid)
            case events.Decided(experiment_id=eid):
                self.confirming.discard(eid)
                self.decisions[eid] = event
                if eid in self.experiments:
                    self.experiments[eid] = self._overlay(self.experiments[eid])
                self._touched(eid)
            case events.ProposalReady(lane=n, experiment=exp):
                self._experiment(exp)
                lane = self.lanes.get(n)
                if lane is not None:
                    lane.next_up = exp
                    self._urgent(n)
                if self.review:
                    self.held[exp.id] = n
            case events.LaneChanged(lane=n):
                lane = self.lanes.get(n)
                if lane is not None:
                    self._lane_changed(lane, event)
            case events.FrontierAdvanced(commit=commit, previous=previous, experiment_id=eid):
                self.frontier = commit
                self._moved(FrontierMove(commit, previous, eid, undo=eid is None))
                self.changes.header = True
            case events.NoiseEstimated():
                self.noise = event
                self.changes.header = True
            case events.LlmCallFinished():
                self.llm_calls += 1
                self.llm_tokens += (event.input_tokens or 0) + (event.output_tokens or 0)
                if event.cost_usd is None:
                    self.llm_unpriced += 1
                else:
                    self.llm_cost = (self.llm_cost or 0.0) + event.cost_usd
                self.changes.header = True
            case events.Notice():
                self.notices.append(event)
            case events.Claimed(claim=claim):
                self.claim = claim
                self.changes.header = True
            case events.Finished():
                self.finished = event
                for lane in self.lanes.values():
                    lane.running, lane.pending = None, None
                self.changes.header = True
                self.changes.lanes.update(self.lanes)
                self.changes.urgent.update(self.lanes)

    def _lane_changed(self, lane: LaneView, event: events.LaneChanged) -> None:
        lane.paused = event.paused
        if lane.pending == ("pausing" if event.paused else "resuming"):
            lane.pending = None  # the engine confirmed what a person asked
        lane.state, lane.detail = event.state, event.detail
        if not event.state.training:
            lane.running = None
        if event.state is LaneState.REVIEW and lane.next_up is not None and self.review:
            self.held.setdefault(lane.next_up.id, lane.lane)
        self._urgent(lane.lane)

    def _experiment(self, exp: Experiment) -> Experiment:
        known = self.experiments.get(exp.id)
        if known is not None and _rank(known.status) > _rank(exp.status):
            return known  # an older copy of a row we already saw finish
        exp = self._overlay(exp)
        self.experiments[exp.id] = exp
        if exp.status is not Status.QUEUED:
            self.held.pop(exp.id, None)
        self._touched(exp.id)
        return exp

    def _overlay(self, exp: Experiment) -> Experiment:
        """Decisions from events win over a stored row: the engine may write them to the store
        a moment after it announces them, and a person's later override replaces the first."""
        decided = self.decisions.get(exp.id)
        if decided is None:
            return exp
        decision = Decision(decided.decision.value)
        if (exp.decision, exp.decision_source, exp.decision_reason) == (decision, decided.source, decided.reason):
            return exp
        return replace(exp, decision=decision, decision_source=decided.source, decision_reason=decided.reason)

    def _touched(self, experiment_id: int) -> None:
        self.table_version += 1
        self.changes.table = True
        self.changes.header = True
        for lane in self.lanes.values():
            for attr in ("running", "last", "next_up"):
                exp = getattr(lane, attr)
                if exp is not None and exp.id == experiment_id and experiment_id in self.experiments:
                    setattr(lane, attr, self.experiments[experiment_id])
                    self._urgent(lane.lane)

    def _moved(self, move: FrontierMove) -> None:
        key = (move.commit, move.previous, move.experiment_id, move.undo)
        if key not in self.moves:
            self.moves[key] = move
            self.table_version += 1
            self.changes.table = True

    def merge_stored(self, rows: list[Experiment], moves: list[FrontierMove] = ()) -> None:
        """Rows read from the store (every experiment of the tag, queued ones and earlier
        sessions' included); a row never moves an experiment backwards. The stored moves of
        the frontier come first: earlier sessions' moves precede this one's."""
        if any((m.commit, m.previous, m.experiment_id, m.undo) not in self.moves for m in moves):
            known = self.moves
            self.moves = {}
            for move in [*moves, *known.values()]:
                self._moved(move)
        for row in rows:
            known = self.experiments.get(row.id)
            if known is not None and (_rank(known.status) > _rank(row.status) or self._overlay(row) == known):
                continue
            self._experiment(row)

    def _urgent(self, lane: int) -> None:
        self.changes.lanes.add(lane)
        self.changes.urgent.add(lane)

    def take_changes(self) -> Changes:
        changes, self.changes = self.changes, Changes()
        return changes

    # -- what a person asked -----------------------------------------------------------------

    def asked(self, lane: int, what: str) -> None:
        """Mark a lane as waiting for the engine to confirm a request (pausing, resuming,
        stopping), so the screen answers the key press at once."""
        if lane in self.lanes:
            self.lanes[lane].pending = what
            self._urgent(lane)

    def reviewed(self, experiment_id: int) -> None:
        self.review_sent.add(experiment_id)
        for eid, lane in self.held.items():
            if eid == experiment_id:
                self._urgent(lane)
        self.changes.table = True
        self.table_version += 1

    def awaiting_review(self, prefer: int | None = None, lane: int | None = None) -> int | None:
        """The proposal a/x acts on: the one asked for, else the lane's, else the oldest."""
        waiting = [eid for eid in sorted(self.held) if eid not in self.review_sent]
        if prefer in waiting:
            return prefer
        for eid in waiting:
            if self.held[eid] == lane:
                return eid
        return waiting[0] if waiting else None

    # -- derived figures -------------------------------------------------------------------------

    def value(self, exp: Experiment) -> float | None:
        return self.metric.value(exp)

    def _starting_points(self) -> dict:
        version, starts = self._starts
        if version != self.table_version:  # every experiment row change bumps the version
            starts = starting_points(self.experiments.values(), self.metric)
            self._starts = (self.table_version, starts)
        return starts

    def baseline(self, model: str | None) -> float | None:
        """The starting point's mean on a GPU model (results/metric.py, as `report` has it)."""
        starts = self._starting_points()
        return next((v for (_, m), v in starts.items() if m == model), None)

    def delta(self, exp: Experiment) -> float | None:
        return delta(exp, self._starting_points(), self.metric)

    def best(self) -> Experiment | None:
        """The best kept result (a change, not a baseline); None until something is kept."""
        return self.metric.best(self.experiments.values())

    def counts(self) -> Counts:
        c = Counts()
        for e in self.experiments.values():
            if e.status is Status.RUNNING:
                c.running += 1
            elif e.status is Status.QUEUED:
                c.queued += 1
            elif e.status.ran:
                c.done += 1
            if e.status in FAILURES:
                c.crashed += 1
            elif e.kind is not Kind.BASELINE and e.decision is Decision.KEEP:
                c.kept += 1
            elif e.kind is not Kind.BASELINE and e.decision is Decision.DISCARD:
                c.discarded += 1
        return c

    def status_text(self, exp: Experiment) -> str:
        if exp.id in self.held and exp.id not in self.review_sent and exp.status is Status.QUEUED:
            return "review"
        if exp.id in self.confirming:
            return f"{exp.status.value}, confirming"
        return exp.status.value

    def best_so_far(self) -> tuple[list[int], list[float], list[int], list[float]]:
        """Every measured result (ids, values) and the running best of the kept ones, as a
        step line from the first baseline on."""
        done = sorted((e for e in self.experiments.values() if e.status is Status.OK and self.value(e) is not None),
                      key=lambda e: e.id)
        xs = [e.id for e in done]
        ys = [self.value(e) for e in done]
        best_x, best_y, previous = [], [], None
        for e, best in zip(done, running_best(done, self.metric)):
            if best is None:
                continue
            if previous is not None and best != previous:  # a step, not a slope: the best only changes at a keep
                best_x.append(e.id)
                best_y.append(previous)
            best_x.append(e.id)
            best_y.append(best)
            previous = best
        return xs, ys, best_x, best_y

    def search_text(self, exp: Experiment) -> str:
        decision = f"{exp.decision.value} {exp.decision_source.value if exp.decision_source else ''}" \
            if exp.decision else ""
        return (f"#{exp.id} lane {exp.lane} {exp.kind.value} {self.status_text(exp)} {decision} "
                f"{exp.description} {exp.gpu_name or ''} {exp.agent or ''}").lower()

    def table(self, query: str = "", sort: str = "id", reverse: bool = False) -> list[Experiment]:
        """The experiments table: every word of the query must appear in a row; sorted by a
        column, ties (and missing values, always last) by id."""
        words = query.lower().split()
        rows = [e for e in self.experiments.values() if all(w in self.search_text(e) for w in words)]
        key = SORT_KEYS[sort]
        present = [e for e in rows if key(self, e) is not None]
        absent = [e for e in rows if key(self, e) is None]
        present.sort(key=lambda e: (key(self, e), e.id), reverse=reverse)
        absent.sort(key=lambda e: e.id, reverse=reverse)
        return present + absent


SORT_KEYS = {
    "id": lambda view, e: e.id,
    "lane": lambda view, e: e.lane,
    "status": lambda view, e: view.status_text(e),
    # Best first, whichever way the metric is better.
    "value": lambda view, e: None if (v := view.value(e)) is None else view.metric.score(v),
    "delta": lambda view, e: None if (d := view.delta(e)) is None else -view.metric.improvement(d),
    "decision": lambda view, e: e.decision.value if e.decision else None,
    "description": lambda view, e: e.description.lower(),
}
