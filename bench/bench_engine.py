"""Benchmark of the engine (scheduler/engine/supervisor.py): does a lane's GPU stay busy while its
agent thinks, and what does supervising eight streaming runs cost the supervisor's own CPU?

    python bench/bench_engine.py [--quick] [--T 4] [--L 2] [--N 6] [--D 30] [--part 1|2|all] [--diagnose]

Both parts drive the real Supervisor in this process: a real git repository, real worktrees,
real child processes, a real DuckDB store. Only the trainer (a stdlib script that sleeps and
prints the run contract) and the proposer (sleeps, then edits one constant) are stand-ins.

[1] Pipelining: 4 CPU lanes, runs of T seconds, proposals that take L < T seconds. Per lane,
    the share of its wall time (first run start to last run end) during which a run is going,
    and the gaps between one run ending and the lane's next run starting.
[2] Supervisor CPU: 8 lanes streaming 20 progress lines/s each for D seconds, plus 1 Hz
    telemetry for 8 GPUs injected as the NVML sampler would. The supervisor process's own CPU
    time (children excluded) per wall second, with a no-op sink and with the headless JSON
    printer.

Prints the figures, then a table with targets and PASS/MISS. Always exits 0 unless it
crashes. See bench/README.md."""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import logging
import os
import platform
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agents.proposer import Proposal, ProposalError  # noqa: E402
from results.records import GpuSample  # noqa: E402
from results.store import Store, utcnow  # noqa: E402
from scheduler.engine import control, events  # noqa: E402
from scheduler.config import Config, Target  # noqa: E402
from scheduler.gpus import Gpu  # noqa: E402
from autoresearch_tui.headless import JsonLinesPrinter, describe  # noqa: E402
from scheduler.engine.inbox import GpuSampleTaken  # noqa: E402
from scheduler.runs.sandbox import SandboxChoice, SandboxMode, choose  # noqa: E402
from scheduler.engine.supervisor import Supervisor  # noqa: E402
from scheduler.runs.workspace import Workspace  # noqa: E402

TARGET_BUSY = 0.99
TARGET_GAP_S = 1.0
TARGET_CPU_PCT = 2.0
PIPELINE_LANES = 4
BASELINES = 2
CPU_LANES = 8
UPSTREAM_TARGET = Target(editable=("train.py",), command="python train.py")


# -- the research repository ----------------------------------------------------------------------

def trainer_source(duration: float, rate: float, knobs: int, lines_per_write: int = 1) -> str:
    """A stdlib train.py that honours the run contract: progress lines at `rate` per second for
    `duration` seconds, then `---` and a summary. val_bpb is 1.0 minus the sum of the KNOB_*
    constants, so a proposal that raises a knob improves it and one that lowers it does not.
    Each proposal edits a knob of its own, and the knobs are kept apart by distinct lines, so a
    proposal replayed onto a frontier that moved meanwhile never conflicts: the figures measure
    the engine, not merge luck. Upstream writes (and flushes) every progress line on its own;
    `lines_per_write` > 1 holds lines back and writes them together, which shows what the
    supervisor would pay if its reader coalesced output."""
    knob_lines = "".join(f"KNOB_{k:03d} = 0.0\n# knob {k} above, knob {k + 1} below\n\n" for k in range(knobs))
    return f'''\
import sys, time
T0 = time.monotonic()  # CLOCK_MONOTONIC is system-wide on Linux: comparable with the supervisor's
DURATION = {duration!r}
RATE = {rate!r}
LINES_PER_WRITE = {lines_per_write!r}

{knob_lines}
knobs = sum(v for k, v in dict(globals()).items() if k.startswith("KNOB_"))
steps = max(1, int(DURATION * RATE))
held = []
for step in range(steps):
    # A fixed cadence from T0, so a slow write never stretches the run.
    delay = T0 + step / RATE - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    remaining = max(0.0, DURATION - step / RATE)
    held.append(f"\\rstep {{step:05d}} ({{100.0 * step / steps:.1f}}%) | loss: {{3.9 - step / (10 * steps):.6f}} | "
                f"lrm: 1.00 | dt: 318ms | tok/sec: 1,648,123 | mfu: 39.8% | epoch: 1 | "
                f"remaining: {{remaining:.0f}}s    ")
    if len(held) >= LINES_PER_WRITE or step == steps - 1:
        sys.stdout.write("".join(held))
        sys.stdout.flush()
        held.clear()
delay = T0 + DURATION - time.monotonic()
if delay > 0:
    time.sleep(delay)
print()
print("---")
print(f"val_bpb:          {{1.0 - knobs:.6f}}")
print(f"training_seconds: {{DURATION:.1f}}")
print(f"total_seconds:    {{time.monotonic() - T0:.1f}}")
print("peak_vram_mb:     45000.0")
print("mfu_percent:      39.80")
print("total_tokens_M:   499.1")
print(f"num_steps:        {{steps}}")
print("num_params_M:     50.3")
print("depth:            8")
print(f"child_start_mono: {{T0!r}}")
print(f"child_end_mono:   {{time.monotonic()!r}}", flush=True)
'''


def make_repo(root: Path, duration: float, rate: float, knobs: int, lines_per_write: int = 1) -> Path:
    root.mkdir(parents=True)
    (root / "train.py").write_text(trainer_source(duration, rate, knobs, lines_per_write))
    (root / "prepare.py").write_text("# the fixed harness\n")
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "start"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)
    return root


def set_knob(path: Path, knob: int, value: float) -> None:
    prefix = f"KNOB_{knob:03d} = "
    lines = path.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(prefix):
            lines[i] = f"{prefix}{value!r}\n"
            break
    else:
        raise ProposalError(f"KNOB_{knob:03d} is not in train.py")
    path.write_text("".join(lines))


# Changes to val_bpb, in turn. The noise floor is 0.001 and the baselines agree exactly (no
# noise), so positives above 0.001 are kept and the rest discarded: about one in three kept.
VALUES = (0.004, -0.003, 0.0005, -0.006, 0.002, -0.001)


class SleepyProposer:
    """A real proposer that thinks for `latency` seconds (an LLM call), then sets the next
    unused knob. Called from several lanes' threads at once, as the Proposer protocol says."""

    name = "bench-sleeper"

    def __init__(self, latency: float, knobs: int):
        self.latency, self.knobs = latency, knobs
        self._lock = threading.Lock()
        self._next = 0

    def propose(self, request):
        if self.latency > 0:
            time.sleep(self.latency)
        with self._lock:
            knob, self._next = self._next, self._next + 1
        if knob >= self.knobs:
            raise ProposalError("every knob has been tried")
        value = VALUES[knob % len(VALUES)]
        set_knob(request.worktree / "train.py", knob, value)
        description = f"KNOB_{knob:03d} = {value}"
        return Proposal(description=description, hypothesis="bench", change=description, agent=self.name)


# -- watching the engine --------------------------------------------------------------------------------

@dataclass
class RunTimes:
    lane: int
    kind: str
    started: float  # time.monotonic() when the sink saw RunStarted
    finished: float | None = None  # ... and RunFinished
    child_start: float | None = None  # the trainer's own clock: its first line of code
    child_end: float | None = None  # ... and its last
    status: str = ""


class Recorder:
    """The sink: timestamps run starts and ends as the engine emits them, counts progress
    events, then hands every event to the consumer being measured (or none)."""

    def __init__(self, inner=None, lanes: int = 0):
        self.inner = inner
        self.lanes = lanes
        self.runs: dict[int, RunTimes] = {}
        self.progress = 0
        self.decisions: dict[str, int] = {}
        self.notices: list[str] = []
        self.all_started = threading.Event()  # every lane has had a run start
        self.first_finished = threading.Event()
        self._lanes_started: set[int] = set()

    def __call__(self, event) -> None:
        now = time.monotonic()
        kind = type(event)
        if kind is events.RunProgress:
            self.progress += 1
        elif kind is events.RunStarted:
            self.runs[event.experiment.id] = RunTimes(event.lane, event.experiment.kind, now)
            self._lanes_started.add(event.lane)
            if len(self._lanes_started) >= self.lanes:
                self.all_started.set()
        elif kind is events.RunFinished:
            exp = event.experiment
            run = self.runs.get(exp.id)
            if run is not None:
                run.finished, run.status = now, exp.status.value
                run.child_start = _float(exp.extra.get("child_start_mono"))
                run.child_end = _float(exp.extra.get("child_end_mono"))
            self.first_finished.set()
        elif kind is events.Decided:
            self.decisions[event.decision] = self.decisions.get(event.decision, 0) + 1
        elif kind is events.Notice and event.level != "info":
            self.notices.append(f"{event.level}: {event.message}")
        if self.inner is not None:
            self.inner(event)


def _float(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[k]


class MainThreadTimer:
    """Wraps some methods of the engine's collaborators (on the instances, not the classes) to
    record when the supervisor's own thread spends time in them, so each gap can be split into
    git, DuckDB, spawning and the rest. Only outermost calls count: a flush inside
    save_experiment is part of save_experiment."""

    def __init__(self):
        self.intervals: list[tuple[float, float, str]] = []
        self._depth = 0
        self._main = threading.main_thread()

    def wrap(self, obj, name: str, label: str) -> None:
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            if threading.current_thread() is not self._main:
                return original(*args, **kwargs)
            self._depth += 1
            t0 = time.monotonic()
            try:
                return original(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.intervals.append((t0, time.monotonic(), label))

        setattr(obj, name, timed)

    def within(self, start: float, end: float) -> dict[str, float]:
        """Seconds per label spent inside [start, end]."""
        out: dict[str, float] = {}
        for t0, t1, label in self.intervals:
            overlap = min(t1, end) - max(t0, start)
            if overlap > 0:
                out[label] = out.get(label, 0.0) + overlap
        return out


def instrument(sup: Supervisor) -> MainThreadTimer:
    timer = MainThreadTimer()
    for name in ("checkout", "replay", "keep_commit", "advance", "is_ancestor"):
        timer.wrap(sup.ws, name, f"git: {name}")
    for name in ("save_experiment", "record_decision", "add_experiment", "add_event", "add_metric", "flush"):
        timer.wrap(sup.store, name, f"store: {name}")
    timer.wrap(sup.executor, "start", "spawn: executor.start (Popen, watcher thread)")
    return timer


def build(tmp: Path, name: str, *, lanes: list[Gpu], duration: float, rate: float, latency: float,
          max_experiments: int, sink, lines_per_write: int = 1,
          sandbox: SandboxChoice | None = None, executor=None) -> tuple[Supervisor, Store, SleepyProposer]:
    knobs = 2 * max_experiments + 16  # enough for every proposal, redrafts included
    repo = make_repo(tmp / name / "repo", duration, rate, knobs, lines_per_write)
    # Two baselines, as when these figures were first taken: the engine's default (two rounds of
    # the lanes) would change what the pipelining part measures, not how the engine pipelines.
    # No claim at the end (scheduler/engine/confirmation.py): it starts once every lane's last run
    # is judged, so the lanes that finish first wait up to a run for it, once a night; that is the
    # claim's cost, not the pipelining this measures.
    config = Config(repo=repo, tag="bench", target=UPSTREAM_TARGET, max_experiments=max_experiments,
                    hung_seconds=max(60.0, 4 * duration), timeout_seconds=4 * duration + 60,
                    baseline_runs=BASELINES, confirm=False)
    store = Store(tmp / name / "results.duckdb")
    proposer = SleepyProposer(latency, knobs)
    sup = Supervisor(config, store, Workspace(repo, config.tag, config.target.editable), lanes, proposer, sink,
                     telemetry=False, sandbox=sandbox, executor=executor)
    return sup, store, proposer


# -- [1] pipelining ----------------------------------------------------------------------------------------

@contextlib.contextmanager
def bad_receivers():
    """A Notifier (autoresearch_tui/notify.py) whose receivers are a closed port and a server on
    127.0.0.1 that sleeps 10 s before each answer; closed (waiting at most 1 s) on exit."""
    import socket
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from autoresearch_tui.notify import Destination, Notifier

    class Slow(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            time.sleep(10)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    notifier = Notifier([Destination.parse(f"http://127.0.0.1:{closed}/down"),
                         Destination.parse(f"http://127.0.0.1:{server.server_address[1]}/slow")], "bench")
    try:
        yield notifier
    finally:
        notifier.close(wait_s=1.0)
        server.shutdown()
        server.server_close()


@dataclass
class LaneFigures:
    lane: int
    runs: int
    span: float
    busy: float  # engine view
    child_busy: float | None
    gaps: list[float] = field(default_factory=list)
    child_gaps: list[float] = field(default_factory=list)


def lane_figures(recorder: Recorder) -> list[LaneFigures]:
    by_lane: dict[int, list[RunTimes]] = {}
    for run in recorder.runs.values():
        if run.finished is not None:
            by_lane.setdefault(run.lane, []).append(run)
    out = []
    for lane, runs in sorted(by_lane.items()):
        runs.sort(key=lambda r: r.started)
        span = runs[-1].finished - runs[0].started
        busy = sum(r.finished - r.started for r in runs) / span if span > 0 else 0.0
        gaps = [b.started - a.finished for a, b in zip(runs, runs[1:])]
        child_busy, child_gaps = None, []
        if all(r.child_start is not None and r.child_end is not None for r in runs):
            child_span = runs[-1].child_end - runs[0].child_start
            child_busy = sum(r.child_end - r.child_start for r in runs) / child_span if child_span > 0 else 0.0
            child_gaps = [b.child_start - a.child_end for a, b in zip(runs, runs[1:])]
        out.append(LaneFigures(lane, len(runs), span, busy, child_busy, gaps, child_gaps))
    return out


def bench_pipelining(tmp: Path, T: float, L: float, N: int, sandbox: SandboxChoice | None = None,
                     cluster=None, notify: bool = False) -> dict:
    """`cluster`: a RayCluster (scheduler/cluster/raycluster.py) whose GPUs are the lanes, else CPU lanes here.
    `notify`: the sink also feeds --notify's Notifier, whose two receivers are a closed port and
    one that takes 10 s to answer each POST: the lanes must not notice."""
    lanes = cluster.lanes(str(PIPELINE_LANES)) if cluster else [Gpu(i, None, None, "cpu") for i in range(PIPELINE_LANES)]
    receivers = contextlib.ExitStack()
    notifier = receivers.enter_context(bad_receivers()) if notify else None
    recorder = Recorder(inner=notifier, lanes=len(lanes))
    # A few progress lines per second, as a real trainer prints about one per step.
    sup, store, _ = build(tmp, "pipelining", lanes=lanes, duration=T, rate=4.0, latency=L,
                          max_experiments=PIPELINE_LANES * N, sink=recorder, sandbox=sandbox,
                          executor=cluster.executor(UPSTREAM_TARGET.command) if cluster else None)
    timer = instrument(sup)
    t0, cpu0 = time.monotonic(), time.process_time()
    code = sup.run()
    # The supervisor process's CPU over the whole session, every thread (on Ray, its driver's too).
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    couriers = notifier.couriers if notifier is not None else []
    receivers.close()
    rows = store.experiments()
    store.close()
    figures = lane_figures(recorder)
    statuses: dict[str, int] = {}
    for run in recorder.runs.values():
        statuses[run.status or "unfinished"] = statuses.get(run.status or "unfinished", 0) + 1
    kinds: dict[str, int] = {}
    for run in recorder.runs.values():
        kinds[run.kind] = kinds.get(run.kind, 0) + 1
    # Where each gap went, summed over every gap of every lane, and the two stretches the
    # trainer's clock adds: its end to RunFinished (exit, EOF, wait, inbox, saving the result)
    # and RunStarted to its first line (interpreter start).
    parts: dict[str, float] = {}
    total_gap = 0.0
    by_lane: dict[int, list[RunTimes]] = {}
    for run in recorder.runs.values():
        if run.finished is not None:
            by_lane.setdefault(run.lane, []).append(run)
    notice, startup = [], []
    for runs in by_lane.values():
        runs.sort(key=lambda r: r.started)
        for a, b in zip(runs, runs[1:]):
            total_gap += b.started - a.finished
            for label, seconds in timer.within(a.finished, b.started).items():
                parts[label] = parts.get(label, 0.0) + seconds
        for r in runs:
            if r.child_end is not None:
                notice.append(r.finished - r.child_end)
            if r.child_start is not None:
                startup.append(r.child_start - r.started)
    return {"code": code, "wall": wall, "lanes": figures, "recorder": recorder, "statuses": statuses, "kinds": kinds,
            "gap_parts": parts, "gap_total": total_gap, "gap_count": sum(max(0, len(r) - 1) for r in by_lane.values()),
            "notice": notice, "startup": startup,
            "rebased": sum(1 for e in rows if e.drafted_on is not None),
            "rejected": sum(1 for e in rows if e.status.value == "rejected"),
            "exit_reason": sup.exit_reason, "cpu_pct": 100 * cpu / wall,
            "transfers": list(getattr(sup.executor, "transfers", [])),
            "notified": [(c.destination.shown, c.sent, c.failed, c.queue.qsize()) for c in couriers]}


def print_pipelining(res: dict, T: float, L: float) -> None:
    print(f"  supervisor exit {res['code']} ({res['exit_reason']}), wall {res['wall']:.1f} s")
    print(f"  runs by kind {res['kinds']}, by status {res['statuses']}")
    print(f"  decisions {res['recorder'].decisions}; proposals replayed on a moved frontier {res['rebased']}, "
          f"rejected {res['rejected']}")
    for notice in res["recorder"].notices:
        print(f"  ! {notice}")
    for shown, sent, failed, waiting in res["notified"]:
        print(f"  --notify {shown}: {sent} delivered, {failed} failed, {waiting} still queued at the end")
    print(f"  {'lane':>4} {'runs':>5} {'span s':>8} {'busy':>8} {'busy(child)':>12} {'gaps s (engine view)':<40}")
    for f in res["lanes"]:
        child = f"{f.child_busy:.2%}" if f.child_busy is not None else "n/a"
        gaps = " ".join(f"{g:.3f}" for g in f.gaps)
        print(f"  {f.lane:>4} {f.runs:>5} {f.span:8.2f} {f.busy:8.2%} {child:>12} {gaps}")
    gaps = [g for f in res["lanes"] for g in f.gaps]
    child_gaps = [g for f in res["lanes"] for g in f.child_gaps]
    if gaps:
        print(f"  gap, engine view (RunFinished -> next RunStarted): median {statistics.median(gaps) * 1000:.0f} ms, "
              f"p99 {pct(gaps, 99) * 1000:.0f} ms, max {max(gaps) * 1000:.0f} ms (n={len(gaps)})")
    if child_gaps:
        print(f"  gap, child view (trainer's last line -> next trainer's first line): "
              f"median {statistics.median(child_gaps) * 1000:.0f} ms, p99 {pct(child_gaps, 99) * 1000:.0f} ms, "
              f"max {max(child_gaps) * 1000:.0f} ms")
    if res["gap_count"]:
        n, total = res["gap_count"], res["gap_total"]
        print(f"  where the engine-view gaps go (mean per gap, {total / n * 1000:.1f} ms; "
              f"main-thread time in each call):")
        for label, seconds in sorted(res["gap_parts"].items(), key=lambda kv: -kv[1]):
            print(f"    {label:<50} {seconds / n * 1000:7.1f} ms")
        rest = total - sum(res["gap_parts"].values())
        print(f"    {'the rest (judging, bookkeeping, waiting for the GIL)':<50} {rest / n * 1000:7.1f} ms")
    if res["notice"] and res["startup"]:
        print(f"  trainer's last line -> RunFinished: median {statistics.median(res['notice']) * 1000:.0f} ms "
              f"(exit, EOF, wait, inbox, result saved); RunStarted -> trainer's first line: median "
              f"{statistics.median(res['startup']) * 1000:.0f} ms (interpreter start, less the UPDATE after Popen)")
    print(f"  supervisor process CPU over the session: {res['cpu_pct']:.1f}% of one core (every thread; "
          f"git, proposals and judging included)")
    if res["transfers"]:
        sent = res["transfers"]
        trees = [t.tree_bytes for t in sent if t.tree_bytes]
        print(f"  to the nodes: {len(trees)} tree(s) for {len(sent)} runs ({sum(trees) / 1e3:.0f} kB), and per run "
              f"its changed files: median {statistics.median(t.change_bytes for t in sent) / 1e3:.1f} kB "
              f"(a whole tree is {max(trees, default=0) / 1e3:.0f} kB)")
    print(f"  sequential reference (propose, then train): T/(T+L) = {T:g}/({T:g}+{L:g}) = {T / (T + L):.1%} "
          f"(sequential agent loops reach 60-80%)")


# -- [2] supervisor CPU ------------------------------------------------------------------------------------

def thread_cpu() -> dict[int, tuple[str, float, float]]:
    """(name, user s, system s) of each thread of this process, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    out = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # it ended meanwhile
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        rest = stat[stat.rindex(")") + 2:].split()  # rest[0] is field 3 (state): utime is field 14
        out[int(tid)] = (names.get(int(tid), f"[{comm}]"), int(rest[11]) / tick, int(rest[12]) / tick)
    return out


def group_of(name: str) -> str:
    if name == "MainThread":
        return "supervisor loop (main thread)"
    if name.startswith("run-"):
        return "run watchers (read, log, parse)"
    if name.startswith("store-snapshots"):
        return "store snapshot thread"
    if name.startswith("propose"):
        return "proposal threads"
    if name.startswith("bench-"):
        return "bench's own threads (injector, meter)"
    return "other native threads (DuckDB, ...)"


@dataclass
class Reading:
    wall: float
    process: float  # time.process_time(): every thread of this process, children excluded
    rusage_self: float
    threads: dict[int, tuple[str, float, float]]
    progress: int
    samples: int

    @staticmethod
    def take(recorder: Recorder, injector: "Injector") -> "Reading":
        me = resource.getrusage(resource.RUSAGE_SELF)  # a cross-check of process_time()
        return Reading(time.monotonic(), time.process_time(), me.ru_utime + me.ru_stime, thread_cpu(),
                       recorder.progress, injector.sent)


class Injector:
    """Stands in for the NVML sampler: once a second, one GpuSample per GPU onto the inbox,
    exactly the message TelemetrySampler's callback puts there."""

    def __init__(self, sup: Supervisor, gpus: list[Gpu]):
        self.sup, self.gpus = sup, gpus
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-injector", daemon=True)

    def _run(self) -> None:
        next_tick = time.monotonic()
        while not self.stop.is_set():
            for gpu in self.gpus:
                self.sup.inbox.put(GpuSampleTaken(GpuSample(
                    t=utcnow(), gpu_index=gpu.index, gpu_uuid=gpu.uuid, util_pct=98.0, mem_used_mb=45012.5,
                    mem_total_mb=81559.0, temp_c=64.0, power_w=652.3, sm_clock_mhz=1980.0, throttle_reasons=None)))
                self.sent += 1
            next_tick = max(next_tick + 1.0, time.monotonic())
            self.stop.wait(next_tick - time.monotonic())


def bench_cpu(tmp: Path, name: str, D: float, rate: float, consumer, profile: bool = False,
              lines_per_write: int = 1) -> dict:
    gpus = [Gpu(i, i, f"GPU-{i}", "Fake GPU") for i in range(CPU_LANES)]
    recorder = Recorder(consumer, lanes=len(gpus))
    # One run per lane, and nothing scheduled during the window: it holds only what a long
    # night holds between runs -- streaming, telemetry, store flushes. The budget has room for
    # the two proposals lanes 0 and 1 draft while their baselines run: with max_experiments=8
    # those two drafts would take the last two slots and lanes 6 and 7 would never start
    # (_budget_spoken_for counts drafts of busy lanes first). A graceful quit after the window
    # means those two drafts never run.
    sup, store, _ = build(tmp, name, lanes=gpus, duration=D, rate=rate, latency=0.0,
                          max_experiments=CPU_LANES + BASELINES, sink=recorder,
                          lines_per_write=lines_per_write)
    injector = Injector(sup, gpus)
    readings: dict[str, Reading] = {}

    def meter():
        if not recorder.all_started.wait(D + 60):
            return
        first_start = min(r.started for r in recorder.runs.values())
        time.sleep(1.0)  # let the last run to start settle into streaming
        readings["a"] = Reading.take(recorder, injector)
        # Every run streams until at least first_start + D; stop a second before that.
        time.sleep(max(0.0, first_start + D - 1.0 - time.monotonic()))
        readings["b"] = Reading.take(recorder, injector)
        sup.submit(control.Quit(now=False))
        recorder.first_finished.wait(D + 60)
        injector.stop.set()  # no sample after the first run ends, so every one sent is handled

    meter_thread = threading.Thread(target=meter, name="bench-meter", daemon=True)
    meter_thread.start()
    injector.thread.start()
    profiler = cProfile.Profile() if profile else None
    t0 = time.monotonic()
    if profiler is not None:
        profiler.enable()
    code = sup.run()
    if profiler is not None:
        profiler.disable()
    wall = time.monotonic() - t0
    injector.stop.set()
    injector.thread.join(5)
    meter_thread.join(5)
    con = store.con
    stored_metrics = con.execute("SELECT count(*) FROM metrics").fetchone()[0]
    stored_samples = con.execute("SELECT count(*) FROM telemetry").fetchone()[0]
    printed = sum(e.summary.get("num_steps") or 0 for e in store.experiments())
    store.close()
    res = {"code": code, "wall": wall, "exit_reason": sup.exit_reason, "recorder": recorder,
           "stored_metrics": stored_metrics, "stored_samples": stored_samples, "printed_lines": printed,
           "sent_samples": injector.sent, "notices": recorder.notices}
    if "a" in readings and "b" in readings:
        a, b = readings["a"], readings["b"]
        span = b.wall - a.wall
        res.update(window=span, cpu_pct=100 * (b.process - a.process) / span,
                   rusage_pct=100 * (b.rusage_self - a.rusage_self) / span,
                   lines_per_s=(b.progress - a.progress) / span, samples_per_s=(b.samples - a.samples) / span)
        groups: dict[str, list[float]] = {}
        for tid, (tname, user, system) in b.threads.items():
            _, user0, system0 = a.threads.get(tid, (tname, 0.0, 0.0))
            group = groups.setdefault(group_of(tname), [0.0, 0.0])
            group[0] += user - user0
            group[1] += system - system0
        res["groups"] = {g: (100 * u / span, 100 * k / span)
                         for g, (u, k) in sorted(groups.items(), key=lambda kv: -sum(kv[1]))}
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
        res["profile"] = out.getvalue()
    return res


class EncodeOnly:
    """The JSON printer's work without its write: each event encoded and described, nothing
    written. Against the real printer it separates the encoding from the write and flush."""

    def __call__(self, event) -> None:
        events.to_json(event)
        describe(event)


def print_cpu(res: dict, label: str) -> None:
    print(f"  [{label}] supervisor exit {res['code']} ({res['exit_reason']}), wall {res['wall']:.1f} s")
    for notice in res["notices"]:
        print(f"  ! {notice}")
    if "cpu_pct" not in res:
        print("  no measurement window (the runs did not all start)")
        return
    print(f"  window {res['window']:.1f} s with all {CPU_LANES} lanes streaming: {res['lines_per_s']:.0f} progress "
          f"events/s, {res['samples_per_s']:.1f} GPU samples/s")
    print(f"  supervisor process CPU: {res['cpu_pct']:.2f}% of one core (process_time; getrusage(SELF) "
          f"{res['rusage_pct']:.2f}%; the trainers are children and not counted)")
    print(f"  by thread (from /proc, 10 ms ticks)        {'total':>7} {'user':>7} {'system':>7}")
    for group, (user, system) in res["groups"].items():
        print(f"    {group:<40} {user + system:6.2f}% {user:6.2f}% {system:6.2f}%")
    print(f"  stored: {res['stored_metrics']:,} metric rows for {res['printed_lines']:,} progress lines printed "
          f"({res['recorder'].progress:,} progress events); {res['stored_samples']:,} telemetry rows for "
          f"{res['sent_samples']:,} samples sent")


# -- main ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def local_ray(address: str | None):
    """A RayCluster on `address`, or on a head node started here (4 logical GPUs) and stopped after."""
    from scheduler.cluster.raycluster import RayCluster

    ray_cli = str(Path(sys.executable).with_name("ray"))
    started = address is None
    if started:
        port = 6400 + os.getpid() % 1000
        subprocess.run([ray_cli, "start", "--head", "--port", str(port), "--num-cpus", str(PIPELINE_LANES + 2),
                        "--num-gpus", str(PIPELINE_LANES), "--include-dashboard=false", "--disable-usage-stats"],
                       check=True, capture_output=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        address = f"127.0.0.1:{port}"
    cluster = RayCluster(address)
    try:
        yield cluster
    finally:
        cluster.close()
        if started:
            subprocess.run([ray_cli, "stop", "--force"], capture_output=True)


def ray_memory_mb() -> float:
    """The resident memory of this machine's Ray processes (GCS, raylet, workers, the lanes' actors)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/status"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if b"ray" in cmdline and b"bench_engine" not in cmdline:
            total += next((int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="T=2, L=1, N=3, D=8 (about a minute)")
    ap.add_argument("--T", type=float, help="seconds per run in [1] (default 4)")
    ap.add_argument("--L", type=float, help="seconds per proposal in [1] (default 2; must be < T)")
    ap.add_argument("--N", type=int, help="runs per lane in [1] (default 6)")
    ap.add_argument("--D", type=float, help="seconds each run streams in [2] (default 30)")
    ap.add_argument("--rate", type=float, default=20.0, help="progress lines per second per run in [2]")
    ap.add_argument("--part", choices=("1", "2", "all"), default="all", help="run only [1] or only [2]")
    ap.add_argument("--skip-json", action="store_true", help="measure [2] with the no-op sink only")
    ap.add_argument("--profile", action="store_true",
                    help="one more pass of [2] under cProfile (main thread) and print the top functions")
    ap.add_argument("--diagnose", action="store_true",
                    help="extra passes of [2] that split its cost: lines written 5 at a time (fewer wakeups), "
                         "events JSON-encoded but not written, and --profile")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--notify", action="store_true",
                    help="[1] with --notify to a closed port and to a receiver that answers after 10 s")
    ap.add_argument("--executor", choices=("local", "ray"), default="local",
                    help="[1] on a Ray cluster's GPUs: --ray-address, or a local one started here (4 logical GPUs)")
    ap.add_argument("--ray-address", help="an existing Ray cluster for --executor ray")
    ap.add_argument("--sandbox", choices=("none", "bwrap"), default="none",
                    help="run [1]'s trainers in the sandbox (scheduler/runs/sandbox.py), to measure what it costs")
    args = ap.parse_args()
    quick = dict(T=2.0, L=1.0, N=3, D=8.0) if args.quick else dict(T=4.0, L=2.0, N=6, D=30.0)
    T = args.T if args.T is not None else quick["T"]
    L = args.L if args.L is not None else quick["L"]
    N = args.N if args.N is not None else quick["N"]
    D = args.D if args.D is not None else quick["D"]
    if not 0 <= L < T:
        ap.error("--L must be at least 0 and less than --T")
    if N < 1 or D < 4:
        ap.error("--N must be at least 1 and --D at least 4")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    print(f"machine : {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
    print(f"[1]     : {PIPELINE_LANES} lanes, T={T:g} s per run, L={L:g} s per proposal, N={N} runs per lane "
          f"(max_experiments={PIPELINE_LANES * N}, baselines included)")
    print(f"[2]     : {CPU_LANES} lanes streaming {args.rate:g} lines/s for D={D:g} s, 1 Hz telemetry for "
          f"{CPU_LANES} GPUs")
    tmp = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    try:
        pipe = cpu_noop = cpu_json = None
        diag: list[tuple[str, dict]] = []
        if args.part in ("1", "all"):
            print("\n[1] pipelining")
            sandbox = choose(SandboxMode(args.sandbox), tmp)  # the repository will be made inside tmp
            print(f"  training runs {'sandboxed' if sandbox.active else 'not sandboxed'}: {sandbox.summary}")
            if args.executor == "ray":
                with local_ray(args.ray_address) as cluster:
                    pipe = bench_pipelining(tmp, T, L, N, cluster=cluster)
                    pipe["ray_rss_mb"] = ray_memory_mb()
                print(f"  on Ray: the Ray processes of this machine held {pipe['ray_rss_mb']:.0f} MB (RSS) at the end")
            else:
                pipe = bench_pipelining(tmp, T, L, N, sandbox, notify=args.notify)
            print_pipelining(pipe, T, L)
        if args.part in ("2", "all"):
            print("\n[2] supervisor CPU")
            cpu_noop = bench_cpu(tmp, "cpu-noop", D, args.rate, None)
            print_cpu(cpu_noop, "no-op sink")
            if not args.skip_json:
                with open(os.devnull, "w") as devnull:
                    cpu_json = bench_cpu(tmp, "cpu-json", D, args.rate, JsonLinesPrinter(json_out=devnull))
                print_cpu(cpu_json, "JSON lines to /dev/null")
            if args.diagnose:
                # Same lines, but five per write: the watcher and the loop wake a fifth as often.
                diag.append(("noop, 5 lines per write", bench_cpu(tmp, "cpu-burst", D, args.rate, None,
                                                                  lines_per_write=5)))
                print_cpu(diag[-1][1], "no-op sink, trainer writes 5 lines at a time")
                diag.append(("JSON encoded, not written", bench_cpu(tmp, "cpu-encode", D, args.rate, EncodeOnly())))
                print_cpu(diag[-1][1], "events JSON-encoded and described, not written")
            if args.profile or args.diagnose:
                prof = bench_cpu(tmp, "cpu-profile", D, args.rate, None, profile=True)
                print(f"\n  cProfile of the supervisor loop, main thread, whole session (start-up included; "
                      f"{prof.get('cpu_pct', float('nan')):.2f}% of a core in the window under the profiler), "
                      f"top 25 by own time:")
                print("\n".join("    " + row for row in prof["profile"].splitlines()))

        # ---- results table --------------------------------------------------------------------------
        def verdict(ok: bool) -> str:
            return "PASS" if ok else "MISS"

        rows = []
        lanes = pipe["lanes"] if pipe is not None else []
        if lanes:
            worst = min(f.busy for f in lanes)
            rows.append(("[1] busy, worst lane (engine view)", f"{worst:.2%}", ">= 99%", verdict(worst >= TARGET_BUSY)))
            child = [f.child_busy for f in lanes if f.child_busy is not None]
            if child:
                rows.append(("[1] busy, worst lane (trainer's clock)", f"{min(child):.2%}", ">= 99%",
                             verdict(min(child) >= TARGET_BUSY)))
            gaps = [g for f in lanes for g in f.gaps]
            if gaps:
                rows.append(("[1] gap median (engine view)", f"{statistics.median(gaps) * 1000:.0f} ms", "< 1 s",
                             verdict(statistics.median(gaps) < TARGET_GAP_S)))
                rows.append(("[1] gap p99 (engine view)", f"{pct(gaps, 99) * 1000:.0f} ms", "< 1 s",
                             verdict(pct(gaps, 99) < TARGET_GAP_S)))
                rows.append(("[1] gap max (engine view)", f"{max(gaps) * 1000:.0f} ms", "< 1 s",
                             verdict(max(gaps) < TARGET_GAP_S)))
                # The gap does not grow with the run, so at upstream's 5-minute budget the same
                # gaps are a rounding error; the 99% target at T=4 s is a 40 ms budget per gap.
                mean_gap = statistics.fmean(gaps)
                rows.append(("[1] busy with 300 s runs, same gaps", f"{300 / (300 + mean_gap):.2%}",
                             "(extrapolated)", ""))
            child_gaps = [g for f in lanes for g in f.child_gaps]
            if child_gaps:
                rows.append(("[1] gap max (trainer's clock)", f"{max(child_gaps) * 1000:.0f} ms", "< 1 s",
                             verdict(max(child_gaps) < TARGET_GAP_S)))
        if pipe is not None:
            rows.append(("[1] sequential loop, T/(T+L) (analytic)", f"{T / (T + L):.1%}", "(reference)", ""))
        for label, res in (("no-op sink", cpu_noop), ("JSON printer", cpu_json)):
            if res is None:
                continue
            if "cpu_pct" in res:
                rows.append((f"[2] supervisor CPU, {label}", f"{res['cpu_pct']:.2f}%", "< 2% core",
                             verdict(res["cpu_pct"] < TARGET_CPU_PCT)))
            ok = res["stored_metrics"] == res["printed_lines"] and res["stored_samples"] == res["sent_samples"]
            stored = (f"{res['stored_metrics']}/{res['printed_lines']} + "
                      f"{res['stored_samples']}/{res['sent_samples']}")
            rows.append((f"[2] rows stored, {label}", stored, "all", verdict(ok)))

        for label, res in diag:
            if "cpu_pct" in res:
                rows.append((f"[2] CPU, {label}", f"{res['cpu_pct']:.2f}%", "(diagnostic)", ""))
        print("\n" + "=" * 88)
        print(f"{'figure':<44} {'value':>20} {'target':>14} {'':>6}")
        print("-" * 88)
        for label, value, target, v in rows:
            print(f"{label:<44} {value:>20} {target:>14} {v:>6}")
        print("-" * 88)
        print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}; T={T:g} s, L={L:g} s, N={N}, D={D:g} s, "
              f"{args.rate:g} lines/s")
        print("engine view: RunStarted/RunFinished as the sink sees them; trainer's clock: the child's own first and")
        print("last line (it also counts interpreter exit/start and the watcher noticing the end).")
        print("rows stored: metric rows / progress lines printed + telemetry rows / samples sent.")
        print("=" * 88)
        return 0
    finally:
        # The engine's objects hold each other in cycles (futures' callbacks, lanes); collect
        # them while DuckDB is still loaded, or its bindings report "leaks" at exit.
        gc.collect()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
