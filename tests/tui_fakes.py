"""Deterministic research for the TUI's snapshot and view-model tests: the engine's own event
dataclasses, with fixed times, fixed telemetry and fixed loss curves, and no engine."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime, timedelta

from results.records import Decision, DecisionSource, Experiment, GpuSample, Status
from scheduler.engine import control, events
from scheduler.runs.runparse import Progress
from tui.link import EngineLink, LaneInfo

T0 = datetime(2026, 11, 21, 1, 0, 0)
H100 = "NVIDIA H100 80GB HBM3"
DESCRIPTIONS = ["MATRIX_LR 0.04 -> 0.05 (x1.25)", "WARMDOWN_RATIO 0.5 -> 0.4", "DEPTH 8 -> 10",
                "EMBEDDING_LR 0.6 -> 0.8 (x1.33)", "WEIGHT_DECAY 0.2 -> 0.1", "SCALAR_LR 0.5 -> 0.4",
                "UNEMBEDDING_LR 0.004 -> 0.005", "ADAM_BETA2 0.95 -> 0.99", "MUON_MOMENTUM 0.95 -> 0.9"]


class Recorder:
    """A stand-in for Supervisor.submit that remembers what the app sent."""

    def __init__(self):
        self.commands: list[control.Command] = []

    def __call__(self, command) -> None:
        self.commands.append(command)


def lanes(count: int, cpu: bool = False) -> list[LaneInfo]:
    if cpu:
        return [LaneInfo(i, None, "cpu") for i in range(count)]
    return [LaneInfo(i, i, H100, 81559.0) for i in range(count)]


def link(count: int = 2, *, review: bool = False, repo=None, cpu: bool = False) -> EngineLink:
    return EngineLink(tag="nov21", lanes=lanes(count, cpu), submit=Recorder(), repo=repo, review=review)


def experiment(eid: int, lane: int, description: str, *, kind: str = "proposal", status: Status = Status.RUNNING,
               value: float | None = None, commit: str | None = None, parent: str | None = None,
               model: str = H100, log_path: str | None = None, extra: dict | None = None) -> Experiment:
    summary = {}
    if value is not None:
        summary = {"val_bpb": value, "training_seconds": 300.1, "total_seconds": 331.4, "peak_vram_mb": 45060.2,
                   "mfu_percent": 39.8, "total_tokens_M": 499.6, "num_steps": 953, "num_params_M": 50.3, "depth": 8}
    started = T0 + timedelta(minutes=6 * eid)
    return Experiment(run_id="nov21-run", lane=lane, description=description, status=status, id=eid, kind=kind,
                      gpu_index=lane, gpu_uuid=f"GPU-{lane}", gpu_name=model, worktree=f"/w/lane-{lane}",
                      branch="autoresearch/nov21", parent_commit=parent or "a" * 40, commit=commit or f"{eid:x}" * 40,
                      hypothesis="a change of one constant", agent="offline-mutator",
                      summary=summary, extra=extra or {}, started_at=started,
                      finished_at=started + timedelta(seconds=331) if status.finished else None,
                      log_path=log_path, exit_code=0 if status is Status.OK else None)


def telemetry(lane: int, count: int = 60) -> list[events.GpuSampled]:
    out = []
    for i in range(count):
        phase = i / 6 + lane
        out.append(events.GpuSampled(lane, GpuSample(
            t=T0 + timedelta(seconds=i), gpu_index=lane, gpu_uuid=f"GPU-{lane}",
            util_pct=round(90 + 9 * math.sin(phase)), mem_used_mb=44000 + 900 * math.sin(phase / 2),
            mem_total_mb=81559.0, temp_c=round(66 + 5 * math.sin(phase / 3)), power_w=round(560 + 90 * math.sin(phase)))))
    return out


def progress(lane: int, eid: int, upto_pct: float, steps: int = 950) -> list[events.RunProgress]:
    out = []
    last = int(steps * upto_pct / 100)
    for step in range(0, last + 1, 5):
        pct = 100 * step / steps
        loss = 3.2 + 2.1 * math.exp(-step / 140) - 0.0003 * step
        out.append(events.RunProgress(lane, eid, Progress(
            step=step, pct=round(pct, 1), loss=round(loss, 6), lrm=1.0, dt_ms=318.0, tok_per_sec=1648123.0,
            mfu=39.8, epoch=1, remaining_s=round(300 * (1 - pct / 100)))))
    return out


def research(lane_count: int = 2) -> list:
    """A short night: two baselines, four judged proposals (a keep, a discard, an OOM and a
    person's keep), two running experiments, a proposal waiting, LLM calls, telemetry."""
    evs: list = [events.LaneChanged(i, "idle") for i in range(lane_count)]
    finished = [
        (1, 0, "baseline", "baseline", Status.OK, 0.998200, "keep", "auto", "baseline: the frontier as it is"),
        (2, 1 % lane_count, "baseline", "baseline", Status.OK, 0.997800, "keep", "auto",
         "baseline: the frontier as it is"),
        (3, 0, "proposal", DESCRIPTIONS[0], Status.OK, 0.991000, "keep", "auto", "better by 0.0070, margin 0.0011"),
        (4, 1 % lane_count, "proposal", DESCRIPTIONS[1], Status.OK, 0.999100, "discard", "auto",
         "worse by 0.0081"),
        (5, 0, "proposal", DESCRIPTIONS[2], Status.OOM, None, "discard", "auto", "oom: CUDA out of memory"),
        (6, 1 % lane_count, "proposal", DESCRIPTIONS[3], Status.OK, 0.988500, "keep", "user",
         "kept by ada via tui"),
    ]
    for eid, lane, kind, description, status, value, decision, source, reason in finished:
        exp = experiment(eid, lane, description, kind=kind, commit="a" * 40 if kind == "baseline" else None)
        evs.append(events.RunStarted(lane, exp, pid=1000 + eid))
        evs.append(events.LaneChanged(lane, "baseline" if kind == "baseline" else "training", description))
        evs.append(events.RunFinished(lane, experiment(eid, lane, description, kind=kind, status=status, value=value,
                                                       commit="a" * 40 if kind == "baseline" else None)))
        evs.append(events.Decided(eid, decision, source, reason))
        if eid == 2:  # the second baseline gives the first noise estimate: 1 dof, so its upper bound
            evs.append(events.NoiseEstimated("H100", 0.000283, 1, 0.001117, 0.002736))
        if decision == "keep" and kind != "baseline":
            evs.append(events.FrontierAdvanced(f"{eid:x}" * 40, "a" * 40, eid, value))
    for n in range(lane_count):
        evs.extend(telemetry(n))
    for i in range(3):
        evs.append(events.LlmCallFinished(0, "worker", "claude-sonnet-4-5", "ok", 5200 + 100 * i, 900, 0.0291, 8400.0))
    running = [(7 + n, n, DESCRIPTIONS[(4 + n) % len(DESCRIPTIONS)], (45 + 35 * n) % 100) for n in range(lane_count)]
    for eid, lane, description, pct in running:
        exp = experiment(eid, lane, description)
        evs.append(events.RunStarted(lane, exp, pid=1000 + eid))
        evs.append(events.LaneChanged(lane, "training", description))
        evs.extend(progress(lane, eid, pct))
    nxt = experiment(7 + lane_count, 0, DESCRIPTIONS[-1], status=Status.QUEUED)
    evs.append(events.ProposalReady(0, nxt))
    evs.append(events.LaneChanged(0, "training", nxt.description))
    return evs


A, B, C = "a" * 40, "b" * 40, "c" * 40


def tree_night() -> tuple[list[Experiment], list[tuple[str, str, int]]]:
    """A night with two frontier moves, a crash and a re-run, as the log holds it: the finished
    experiments (decided) and the frontier's moves (commit, previous, experiment id).

    #3 moves the frontier A -> B. #6, drafted on A, wins after it; measured again on B as the
    verification #7, it moves the frontier B -> C. #5 crashes on B; #8 runs #4 again at a
    person's request; #9 trains on C and #10 waits."""
    def done(eid, lane, description, value, decision, *, kind="proposal", status=Status.OK, commit=None,
             parent=A, **links):
        exp = experiment(eid, lane, description, kind=kind, status=status, value=value, commit=commit, parent=parent)
        return replace(exp, decision=Decision(decision), decision_source=DecisionSource.AUTO, **links)

    night = [
        done(1, 0, "baseline: the frontier as it is", 0.998200, "keep", kind="baseline", commit=A),
        done(2, 1, "baseline: the frontier as it is", 0.997800, "keep", kind="baseline", commit=A),
        done(3, 0, DESCRIPTIONS[0], 0.991000, "keep", commit=B),
        done(4, 1, DESCRIPTIONS[1], 0.999100, "discard"),
        done(5, 0, DESCRIPTIONS[2], None, "discard", status=Status.CRASH, parent=B,
             error="exit code 1: RuntimeError: shape mismatch in attention"),
        done(6, 1, DESCRIPTIONS[3], 0.990000, "discard"),
        done(7, 0, f"{DESCRIPTIONS[3]} (on the new frontier)", 0.985500, "keep", kind="verification", commit=C,
             parent=B, verifies=6),
        done(8, 1, DESCRIPTIONS[1], 0.999300, "discard", kind="rerun", commit="4" * 40, rerun_of=4),
        experiment(9, 0, DESCRIPTIONS[4], parent=C),
        experiment(10, 1, DESCRIPTIONS[5], parent=C, status=Status.QUEUED),
    ]
    return night, [(B, A, 3), (C, B, 7)]


def tree_events() -> list:
    """The same night as the engine's events, for the app."""
    night, moves = tree_night()
    evs: list = [events.LaneChanged(i, "idle") for i in range(2)]
    made = {eid: (commit, previous) for commit, previous, eid in moves}
    for exp in night:
        if exp.status is Status.QUEUED:
            evs.append(events.ProposalReady(exp.lane, exp))
            continue
        evs.append(events.RunStarted(exp.lane, replace(exp, status=Status.RUNNING, summary={}, decision=None,
                                                       decision_source=None), pid=1000 + exp.id))
        if exp.status is Status.RUNNING:
            evs.extend(progress(exp.lane, exp.id, 40))
            continue
        evs.append(events.RunFinished(exp.lane, replace(exp, decision=None, decision_source=None)))
        evs.append(events.Decided(exp.id, exp.decision.value, "auto", "as the rules said"))
        if exp.id in made:
            evs.append(events.FrontierAdvanced(*made[exp.id], exp.id, exp.summary.get("val_bpb")))
    return evs
