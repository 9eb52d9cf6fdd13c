"""`--no-ui`: the engine's events as JSON lines on stdout and a human log on stderr. (Signals
become quit commands in scheduler/engine/control.py, for the TUI and headless alike.)

Nothing here imports textual: a headless box never needs the TUI's dependencies to load."""

from __future__ import annotations

import logging
import sys
import threading

from results.metric import Metric
from scheduler.engine import events

log = logging.getLogger("autoresearch.headless")


class JsonLinesPrinter:
    """Writes each event as one JSON object per line. `json_out=None` leaves stdout alone and
    only logs (the plain terminal mode, until a TUI is available)."""

    def __init__(self, json_out=sys.stdout, metric: Metric | None = None):
        self.out = json_out
        self.metric = metric or Metric()
        self._lock = threading.Lock()

    def __call__(self, event) -> None:
        if self.out is not None:
            line = events.to_json(event)
            with self._lock:
                try:
                    self.out.write(line + "\n")
                    self.out.flush()
                except BrokenPipeError:
                    self.out = None  # `| head` closed the pipe; keep researching, stop printing
        human = describe(event, self.metric)
        if human:
            log.info(human)


def describe(event, metric: Metric | None = None) -> str | None:
    """One line for a person, or None for the high-rate events."""
    match event:
        case events.RunStarted(lane=lane, experiment=e):
            return f"lane {lane}: #{e.id} {e.kind.value} started: {e.description}"
        case events.RunFinished(lane=lane, experiment=e):
            metric = metric or Metric()
            value = metric.value(e)
            result = f"{metric.name} {value:.6f}" if value is not None else (e.error or e.status.value)
            return f"lane {lane}: #{e.id} {e.status.value}: {result}"
        case events.Decided(experiment_id=n, decision=d, source=s, reason=r):
            return f"#{n} {d.value.upper()} ({s.value}): {r}"
        case events.FrontierAdvanced(commit=c, previous=p, experiment_id=n):
            return f"frontier {p[:8]} -> {c[:8]}" + (f" (#{n})" if n is not None else "")
        case events.Notice(level=level, message=m):
            return m if level is events.Level.INFO else f"{level.value}: {m}"
        case events.ProposalReady(lane=lane, experiment=e):
            return f"lane {lane}: proposal #{e.id} ready: {e.description}"
        case events.Finished(reason=r, experiments=n, frontier=f, detail=detail):
            noise = "".join(f"; noise on {model}: sigma {d['sigma']:.4f} from {d['dof']} dof"
                            for model, d in detail.get("noise", {}).items() if d.get("sigma") is not None)
            return f"finished ({r}): {n} experiment(s) run, frontier {f[:8]}{noise}"
        case events.NoiseEstimated(gpu_model=model, sigma=sigma, dof=dof, margin=margin) if sigma is not None:
            return f"noise on {model}: sigma {sigma:.4f} from {dof} dof; a run must beat the frontier by {margin:.4f}"
    return None
