"""What `autoresearch-tui report` prints or writes: a leaderboard, upstream's results.tsv,
JSON, and the progress plot."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from .claim import Claim
from .metric import Metric, running_best
from .records import Decision, Experiment, Kind, LeaderboardRow, NoiseRow, SpendingRow, Status


def tsv_header(metric: Metric) -> str:
    return f"commit\t{metric.name}\tmemory_gb\tstatus\tdescription\n"



def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def results_tsv(experiments: list[Experiment], metric: Metric | None = None) -> str:
    """Upstream autoresearch's results.tsv, in the order the experiments ran: short commit,
    the metric (val_bpb) to 6 decimals, peak memory in GB to 1 decimal, keep/discard/crash,
    description. A run that did not finish cleanly is a crash with 0.000000 and 0.0.
    Experiments that never ran (queued, running, rejected, not run) have no line, and neither have the
    claim's side-by-side runs (upstream's format has no word for them; the claim says them)."""
    metric = metric or Metric()
    out = [tsv_header(metric)]
    for e in experiments:
        if not e.status.ran or e.kind is Kind.CLAIM:
            continue
        value = metric.value(e)
        if e.status is not Status.OK or value is None:
            status, value, gb = "crash", 0.0, 0.0
        else:
            status = "keep" if e.decision is Decision.KEEP else "discard"
            gb = (e.summary.get("peak_vram_mb") or 0.0) / 1024
        out.append(f"{(e.commit or '')[:7]}\t{value:.6f}\t{gb:.1f}\t{status}\t{_one_line(e.description)}\n")
    return "".join(out)


def leaderboard_table(rows: list[LeaderboardRow], width: int = 100, metric: Metric | None = None) -> str:
    if not rows:
        return "No finished experiments yet.\n"
    name = (metric or Metric()).name[:10]
    header = f"{'#':>3}  {'id':>5}  {name:>10}  {'delta':>9}  {'status':<11}  {'decision':<8}  {'lane':>4}  description"
    lines = [header, "-" * min(width, len(header) + 30)]
    fixed = len(header) - len("description")
    for r in rows:
        value = f"{r.value:.6f}" if r.value is not None else "-"
        delta = f"{r.delta:+.6f}" if r.delta is not None else "-"
        decision = r.decision.value if r.decision else "-"
        description = _one_line(r.description)[: max(10, width - fixed)]
        lines.append(f"{r.rank:>3}  {r.experiment_id:>5}  {value:>10}  {delta:>9}  {r.status.value:<11}  "
                     f"{decision:<8}  {r.lane:>4}  {description}")
    return "\n".join(lines) + "\n"


def noise_lines(rows: list[NoiseRow]) -> str:
    """What every keep and discard was measured against, per GPU model."""
    out = []
    for r in rows:
        if r.sigma is None:
            out.append(f"noise on {r.gpu_model}: not measured (no code ran twice)\n")
            continue
        bound = f", {r.sigma_used:.4f} used at few dof" if r.sigma_used not in (None, r.sigma) else ""
        margin = f"; a single run had to beat the frontier by {r.margin:.4f}" if r.margin is not None else ""
        out.append(f"noise on {r.gpu_model}: sigma {r.sigma:.4f} from {r.dof} dof{bound}{margin}\n")
    return "".join(out)


def spending_lines(row: SpendingRow) -> str:
    """The LLM bill: tokens, cost, and cost per experiment run and per experiment kept."""
    if not row.calls:
        return ""
    cached = f" ({_count(row.cache_read_tokens)} from the cache)" if row.cache_read_tokens else ""
    line = (f"LLM: {row.calls} calls, {_count(row.input_tokens)} tokens in{cached}, "
            f"{_count(row.output_tokens)} out, ")
    if row.cost_usd is None:
        return line + "cost unknown (no price for the model)\n"
    at_least = "at least " if row.unpriced_calls else ""
    line += f"{at_least}${row.cost_usd:.2f}"
    for count, what in ((row.experiments, "experiment run"), (row.kept, "experiment kept")):
        each = row.per(count)
        line += f"; ${each:.2f} per {what} ({count})" if each is not None else f"; no {what}"
    return line + "\n"


def claim_lines(claims: list[Claim]) -> str:
    """The last claim measured: the frontier against the start, with its interval (results/claim.py)."""
    if not claims:
        return ""
    claim = claims[-1]
    line = f"claim: {claim.text()} (frontier {claim.frontier[:8]} vs start {claim.start[:8]})\n"
    held = claim.heldout or {}
    if held.get("gain") is not None:
        line += f"held-out: {claim.metric} better by {held['gain']:+.4f} on the split the judge never read\n"
    if held.get("warning"):
        line += f"warning: {held['warning']}\n"
    return line


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _jsonable(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "value"):  # enums
        return value.value
    return value


def experiments_json(experiments: list[Experiment]) -> str:
    records = [{k: _jsonable(v) for k, v in asdict(e).items()} for e in experiments]
    for record, e in zip(records, experiments):
        record["status"], record["decision"] = e.status.value, e.decision.value if e.decision else None
        record["decision_source"] = e.decision_source.value if e.decision_source else None
    return json.dumps(records, indent=2, default=_jsonable) + "\n"


def progress_plot(experiments: list[Experiment], path: Path, title: str = "autoresearch progress",
                  metric: Metric | None = None) -> Path:
    """Every finished experiment as a point in the order it ran, kept ones highlighted, and the
    running best of the kept ones as a step line -- the picture upstream's notebook draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric or Metric()
    done = [e for e in experiments if e.status.ran and e.kind is not Kind.CLAIM]
    best = running_best(done, metric)
    scored = [(i, e, v) for i, e in enumerate(done) if e.status is Status.OK for v in [metric.value(e)] if v is not None]
    kept = [(i, v) for i, e, v in scored if e.decision is Decision.KEEP]
    others = [(i, v) for i, e, v in scored if e.decision is not Decision.KEEP]
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=120)
    if others:
        ax.scatter([i for i, _ in others], [v for _, v in others], s=14, color="#b0b0b0",
                   label="discarded", zorder=2)
    if kept:
        ax.scatter([i for i, _ in kept], [v for _, v in kept], s=40, color="#2ca02c", edgecolor="black",
                   linewidth=0.5, label="kept", zorder=3)
        steps = [(i, b) for i, b in enumerate(best) if b is not None]
        ax.step([i for i, _ in steps], [b for _, b in steps], where="post", color="#2ca02c", linewidth=1.5,
                label="running best", zorder=1)
    crashes = len(done) - len(scored)
    # The starting point's runs are recorded as kept (they are the frontier), but they are not
    # changes anyone kept: the title counts those.
    changes_kept = sum(1 for _, e, _ in scored if e.decision is Decision.KEEP and e.kind is not Kind.BASELINE)
    ax.set_xlabel("experiment (in the order run)")
    ax.set_ylabel(metric.label)
    ax.set_title(f"{title}: {len(done)} experiments, {changes_kept} changes kept, {crashes} crashed")
    ax.grid(alpha=0.3)
    if scored:
        ax.legend(loc="upper right" if metric.direction.value == "lower" else "lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
