"""Benchmark of the experiment store (results/store.py) at the size of a long campaign.

    python bench/bench_store.py [--experiments 100000] [--metrics 10000000] [--db PATH]

Builds a fresh DuckDB file through `Store`, fills it in SQL (set-up, not measured against a
target), then measures what the supervisor and the TUI do all night: the leaderboard query,
appending one experiment and making it durable, and the batched write rate of progress
lines. Prints a table with the targets and PASS/MISS per line. See bench/README.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from results.records import Decision, DecisionSource, Experiment, MetricPoint, Status  # noqa: E402
from results.schema import TABLES  # noqa: E402
from results.store import Reader, Store, snapshot_root  # noqa: E402

GPU_NAME = "NVIDIA H100 80GB HBM3"
LANES = 8
RUNS = 10

TARGET_LEADERBOARD_MS = 100.0
TARGET_APPEND_MS = 20.0
TARGET_METRIC_ROWS_S = 50_000.0


# -- helpers ---------------------------------------------------------------------------------

def ms(seconds: float) -> float:
    return seconds * 1000.0


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def summary(values_s: list[float]) -> tuple[float, float]:
    """(median ms, p95 ms) of a list of durations in seconds."""
    return ms(statistics.median(values_s)), ms(pct(values_s, 95))


def timed(fn, reps: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def line(label: str, values_s: list[float]) -> str:
    med, p95 = summary(values_s)
    return f"  {label:<52} median {med:9.2f} ms   p95 {p95:9.2f} ms   (n={len(values_s)})"


def size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# -- set-up: population in SQL -------------------------------------------------------------------

def populate(store: Store, n_exp: int, n_metrics: int) -> dict[str, float]:
    """Fill runs, experiments and metrics with realistic rows generated inside DuckDB."""
    con = store.con
    timings = {}
    t0 = time.perf_counter()
    con.execute(
        """
        INSERT INTO runs (id, tag, repo, started_at, finished_at, host, config)
        SELECT printf('run-%02d', i), printf('night-%02d', i), '/home/me/autoresearch',
               TIMESTAMP '2025-01-01' + to_days(i::INTEGER),
               TIMESTAMP '2025-01-01' + to_days(i::INTEGER) + INTERVAL 20 HOUR,
               'workstation', '{"lanes": 8}'
        FROM range($runs) t(i)
        """, {"runs": RUNS})
    per_run = max(1, -(-n_exp // RUNS))
    # Deterministic pseudo-random numbers from hash(i, salt): u(i, s) in [0, 1).
    con.execute(
        f"""
        INSERT INTO experiments (id, run_id, lane, kind, gpu_index, gpu_uuid, gpu_name, worktree, branch,
            parent_commit, "commit", description, hypothesis, agent, status, decision, decision_source,
            decision_reason, val_bpb, training_seconds, total_seconds, peak_vram_mb, mfu_percent,
            total_tokens_M, num_steps, num_params_M, depth, attention_backend, startup_seconds, seed,
            device_name, extra, started_at, finished_at, log_path, exit_code, error)
        WITH base AS (
            SELECT i,
                   (hash(i, 1) % 1000000) / 1e6 AS u1,
                   (hash(i, 2) % 1000000) / 1e6 AS u2,
                   (hash(i, 3) % 1000000) / 1e6 AS u3,
                   i % {per_run} = 0 OR i % 2500 = 0 AS is_baseline
            FROM range($n) t(i)
        ), shaped AS (
            SELECT *,
                   CASE WHEN is_baseline OR u1 < 0.88 THEN 'ok' WHEN u1 < 0.96 THEN 'crash' ELSE 'oom' END AS st,
                   CASE WHEN is_baseline THEN 0.995 + 0.01 * u2 ELSE 0.95 + 0.10 * u2 END AS bpb
            FROM base
        )
        SELECT i + 1,
               printf('run-%02d', least(i // {per_run}, {RUNS - 1})),
               i % {LANES},
               CASE WHEN is_baseline THEN 'baseline' ELSE 'proposal' END,
               i % {LANES},
               printf('GPU-%08x-bench-%d', hash(i % {LANES}) % 4294967296, i % {LANES}),
               '{GPU_NAME}',
               printf('/home/me/autoresearch/.worktrees/lane-%d', i % {LANES}),
               printf('autoresearch/lane-%d', i % {LANES}),
               substr(md5((i - 1)::VARCHAR), 1, 7),
               substr(md5(i::VARCHAR), 1, 7),
               CASE WHEN is_baseline THEN 'baseline: unmodified train.py'
                    ELSE printf('try %s: %s %s', ['lr', 'warmup', 'depth', 'rope base', 'batch size',
                                 'weight decay', 'muon momentum', 'window pattern'][1 + (i % 8)],
                                ['raise', 'lower', 'retune'][1 + (hash(i, 4) % 3)::INTEGER],
                                round(u3 * 10, 2)::VARCHAR) END,
               'a smaller change should keep the loss curve smooth and end lower',
               CASE WHEN is_baseline THEN NULL ELSE 'claude-worker' END,
               st,
               CASE WHEN is_baseline THEN NULL WHEN st = 'ok' AND bpb < 0.975 THEN 'keep' ELSE 'discard' END,
               CASE WHEN is_baseline THEN NULL ELSE 'auto' END,
               CASE WHEN is_baseline THEN NULL WHEN st <> 'ok' THEN 'the run failed'
                    WHEN bpb < 0.975 THEN 'improves on the best so far' ELSE 'no improvement' END,
               CASE WHEN st = 'ok' THEN bpb END,
               CASE WHEN st = 'ok' THEN 300.0 + u3 END,
               CASE WHEN st = 'ok' THEN 330.0 + 10 * u3 ELSE 20.0 + 100 * u3 END,
               CASE WHEN st = 'ok' THEN 40000 + 30000 * u2 WHEN st = 'oom' THEN 81000 END,
               CASE WHEN st = 'ok' THEN 38 + 8 * u3 END,
               CASE WHEN st = 'ok' THEN 480 + 40 * u3 END,
               CASE WHEN st = 'ok' THEN 950 + (hash(i, 5) % 100)::INTEGER END,
               CASE WHEN st = 'ok' THEN 50.3 END,
               CASE WHEN st = 'ok' THEN 8 END,
               CASE WHEN st = 'ok' THEN 'flex' END,
               CASE WHEN st = 'ok' THEN 25 + 5 * u3 END,
               (hash(i, 6) % 100000)::VARCHAR,
               CASE WHEN st = 'ok' THEN '{GPU_NAME}' END,
               NULL,
               TIMESTAMP '2025-01-01' + to_seconds((i * 45)::BIGINT),
               TIMESTAMP '2025-01-01' + to_seconds((i * 45 + 340)::BIGINT),
               printf('/home/me/autoresearch/.logs/%08d.log', i + 1),
               CASE WHEN st = 'ok' THEN 0 ELSE 1 END,
               CASE st WHEN 'crash' THEN 'Traceback (most recent call last): RuntimeError: shape mismatch'
                       WHEN 'oom' THEN 'torch.OutOfMemoryError: CUDA out of memory' END
        FROM shaped
        """, {"n": n_exp})
    timings["experiments"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    per_exp = max(1, -(-n_metrics // n_exp))  # progress lines per experiment (100 at the defaults)
    con.execute(
        f"""
        INSERT INTO metrics (experiment_id, step, t, pct, loss, lrm, dt_ms, tok_per_sec, mfu, epoch, remaining_s)
        SELECT (i // {per_exp}) % $n_exp + 1 AS experiment_id,
               (i % {per_exp}) * 10 AS step,
               TIMESTAMP '2025-01-01' + to_seconds(((i // {per_exp}) * 45 + (i % {per_exp}) * 3)::BIGINT),
               100.0 * (i % {per_exp}) / {per_exp},
               1.0 + 5.0 / (1 + (i % {per_exp})) + (hash(i) % 1000) / 20000.0,
               CASE WHEN (i % {per_exp}) < {per_exp} * 0.8 THEN 1.0 ELSE 1.0 - ((i % {per_exp}) - {per_exp} * 0.8) / ({per_exp} * 0.2) END,
               310 + (hash(i, 1) % 1000) / 100.0,
               1580000 + (hash(i, 2) % 20000),
               40 + (hash(i, 3) % 500) / 100.0,
               0,
               300.0 * (1 - (i % {per_exp}) / {per_exp})
        FROM range($m) t(i)
        """, {"m": n_metrics, "n_exp": n_exp})
    timings["metrics"] = time.perf_counter() - t0
    return timings


# -- measurements ------------------------------------------------------------------------------------

def new_experiment(lane: int) -> Experiment:
    return Experiment(run_id="run-00", lane=lane, description="bench: raise lr 3%", status=Status.RUNNING,
                      gpu_index=lane, gpu_uuid=f"GPU-bench-{lane}", gpu_name=GPU_NAME,
                      worktree=f"/tmp/lane-{lane}", branch=f"autoresearch/lane-{lane}", parent_commit="abc1234",
                      hypothesis="a slightly higher lr converges faster", agent="claude-worker",
                      started_at=datetime.now())


def finished(exp: Experiment, i: int) -> Experiment:
    return replace(exp, status=Status.OK, commit=f"{i:07x}", decision=Decision.DISCARD,
                   decision_source=DecisionSource.AUTO, decision_reason="no improvement",
                   summary={"val_bpb": 0.99 + i * 1e-5, "training_seconds": 300.1, "total_seconds": 331.0,
                            "peak_vram_mb": 45000.0, "mfu_percent": 41.2, "total_tokens_M": 499.1,
                            "num_steps": 953, "num_params_M": 50.3, "depth": 8, "attention_backend": "flex",
                            "startup_seconds": 27.0, "seed": "42", "device_name": GPU_NAME},
                   finished_at=datetime.now(), exit_code=0, log_path=f"/tmp/{i}.log")


def bench_append(store: Store, reps: int) -> dict:
    """One experiment appended and made durable: add_experiment, then save_experiment finished."""
    add, save, total = [], [], []
    for i in range(reps + 1):  # the first is a warm-up
        t0 = time.perf_counter()
        exp = store.add_experiment(new_experiment(i % LANES))
        t1 = time.perf_counter()
        store.save_experiment(finished(exp, i))
        t2 = time.perf_counter()
        if i:
            add.append(t1 - t0)
            save.append(t2 - t1)
            total.append(t2 - t0)

    # Breakdown: the UPDATE alone, and how long a reader waits for the snapshot that shows a result.
    update_only, snapshot_only = [], []
    for i in range(reps):
        exp = store.add_experiment(new_experiment(i % LANES))
        t0 = time.perf_counter()
        store.save_experiment(replace(exp, description="bench: still running"))  # not finished: UPDATE only
        update_only.append(time.perf_counter() - t0)
    snapshot_only = timed(store.refresh_snapshot, reps)

    # Per table: what a snapshot re-exports each time (the big tables are hard-linked).
    per_table = {}
    scratch = Path(tempfile.mkdtemp(prefix="bench-copy-", dir=store.path.parent))
    try:
        for table in TABLES:
            target = scratch / f"{table}.parquet"
            per_table[table] = timed(
                lambda: store.con.execute(f"COPY (SELECT * FROM {table}) TO '{target}' (FORMAT parquet)"),
                reps=5 if table not in ("metrics", "telemetry") else 1, warmup=0)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"add": add, "save": save, "total": total, "update_only": update_only,
            "snapshot_only": snapshot_only, "per_table": per_table}


def bench_metrics(store: Store, n_rows: int, n_exp: int) -> dict:
    """Batched writer: add_metric at default flush settings, then flush()."""
    flush_time = [0.0]
    flush_count = [0]
    real_flush = store.flush

    def counting_flush():
        t0 = time.perf_counter()
        real_flush()
        flush_time[0] += time.perf_counter() - t0
        flush_count[0] += 1

    store.flush = counting_flush  # instance attribute: _maybe_flush and refresh_snapshot call it
    try:
        start = datetime(2025, 6, 1)
        out = {}

        # (1) as a live run would: each progress line built as it arrives, then handed over.
        flush_time[0], flush_count[0] = 0.0, 0
        t0 = time.perf_counter()
        for i in range(n_rows):
            store.add_metric(MetricPoint(experiment_id=i % n_exp + 1, step=i, t=start + timedelta(seconds=i),
                                         pct=50.0, loss=2.5, lrm=1.0, dt_ms=310.0, tok_per_sec=1.6e6, mfu=41.0,
                                         epoch=0, remaining_s=120.0))
        store.flush()
        elapsed = time.perf_counter() - t0
        out["live"] = {"rows": n_rows, "seconds": elapsed, "flush_seconds": flush_time[0],
                       "flushes": flush_count[0]}

        # (2) as fast as possible: points built beforehand, a bare loop of add_metric calls.
        points = [MetricPoint(experiment_id=i % n_exp + 1, step=i, t=start + timedelta(seconds=i), pct=50.0,
                              loss=2.5, lrm=1.0, dt_ms=310.0, tok_per_sec=1.6e6, mfu=41.0, epoch=0,
                              remaining_s=120.0) for i in range(n_rows)]
        add = store.add_metric
        flush_time[0], flush_count[0] = 0.0, 0
        t0 = time.perf_counter()
        for p in points:
            add(p)
        store.flush()
        elapsed = time.perf_counter() - t0
        out["tight"] = {"rows": n_rows, "seconds": elapsed, "flush_seconds": flush_time[0],
                        "flushes": flush_count[0]}
        del points
        return out
    finally:
        del store.flush


def live_reader_child(path: str, reps: int) -> None:
    """Run in a subprocess while the Store holds the file: Reader falls back to the snapshot."""
    t0 = time.perf_counter()
    reader = Reader(path)
    opened = time.perf_counter() - t0
    times = timed(lambda: reader.leaderboard(limit=20), reps)
    print(json.dumps({"live": reader.live, "open": opened, "times": times}))
    reader.close()


def bench_live_reader(path: Path, reps: int) -> dict | None:
    try:
        proc = subprocess.run([sys.executable, __file__, "--_live-reader", str(path), "--reps-leaderboard", str(reps)],
                              capture_output=True, text=True, timeout=300)
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except Exception as e:  # noqa: BLE001 - an extra figure; never fail the benchmark for it
        print(f"  (live snapshot reader failed: {e!r})")
        return None


# -- main ---------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", type=int, default=100_000, help="experiments in the file (default 100,000)")
    ap.add_argument("--metrics", type=int, default=10_000_000, help="progress lines in the file (default 10,000,000)")
    ap.add_argument("--db", type=Path, help="where to build the file (must not exist); default: a temporary folder")
    ap.add_argument("--metric-push", type=int, default=2_000_000, help="rows pushed through add_metric per mode")
    ap.add_argument("--reps-leaderboard", type=int, default=30)
    ap.add_argument("--reps-append", type=int, default=50)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--_live-reader", dest="live_reader", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.live_reader:
        live_reader_child(args.live_reader, args.reps_leaderboard)
        return 0

    if args.experiments < RUNS:
        ap.error(f"--experiments must be at least {RUNS}")
    tmpdir = None
    if args.db:
        path = args.db.resolve()
        if path.exists() or snapshot_root(path).exists():
            ap.error(f"{path} (or its .snapshots folder) already exists; the benchmark needs a fresh file")
    else:
        tmpdir = Path(tempfile.mkdtemp(prefix="bench-store-"))
        path = tmpdir / "results.duckdb"

    print(f"machine : {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}")
    print(f"duckdb  : {duckdb.__version__}")
    print(f"file    : {path}")
    print(f"size    : {args.experiments:,} experiments, {args.metrics:,} metric rows")
    results: dict = {}
    try:
        # ---- set-up --------------------------------------------------------------------------------
        print("\n[set-up]")
        t_all = time.perf_counter()
        t0 = time.perf_counter()
        store = Store(path)
        print(f"  Store() on an empty file (schema; snapshot in background) {ms(time.perf_counter() - t0):9.1f} ms")
        pop = populate(store, args.experiments, args.metrics)
        print(f"  INSERT ... SELECT FROM range(): runs + experiments        {pop['experiments']:9.2f} s")
        print(f"  INSERT ... SELECT FROM range(): metrics                   {pop['metrics']:9.2f} s")
        t0 = time.perf_counter()
        store.close()  # flush, stop the snapshot thread, checkpoint
        close_s = time.perf_counter() - t0
        print(f"  Store.close() (checkpoint)                                {close_s:9.2f} s")
        t0 = time.perf_counter()
        # As in a live run: the big tables are hard-linked between full snapshots.
        store = Store(path, full_snapshot_seconds=1e9)
        open_s = time.perf_counter() - t0
        print(f"  Store() on the populated file (writer ready)              {open_s:9.2f} s")
        t0 = time.perf_counter()
        store._snapshots.wait(1)  # the first request, made by Store(): a full export
        first_snapshot_s = time.perf_counter() - t0
        print(f"  first snapshot after open, every table (background)       {first_snapshot_s:9.2f} s")
        results["first_snapshot_s"] = first_snapshot_s
        setup_s = time.perf_counter() - t_all
        print(f"  set-up total                                              {setup_s:9.2f} s")
        print(f"  file {human_bytes(size_of(path))}, snapshots {human_bytes(size_of(snapshot_root(path)))}")
        results["setup_s"] = setup_s
        results["open_s"] = open_s
        results["close_s"] = close_s

        # ---- (a) leaderboard through the writer ---------------------------------------------------
        print("\n[a] leaderboard(limit=20)")
        lb = store.leaderboard(limit=20)
        assert len(lb) == 20 and lb[0].val_bpb <= lb[-1].val_bpb, "leaderboard returned unexpected rows"
        assert any(r.delta is not None for r in lb), "leaderboard has no delta against the baselines"
        t_store = timed(lambda: store.leaderboard(limit=20), args.reps_leaderboard)
        print(line("Store.leaderboard (writer connection)", t_store))
        results["lb_store"] = t_store
        live = bench_live_reader(path, args.reps_leaderboard)
        if live:
            print(f"  Reader while the Store holds the file: live={live['live']}, "
                  f"open {ms(live['open']):.1f} ms")
            print(line("Reader.leaderboard (Parquet snapshot, other process)", live["times"]))
            results["lb_live"] = live["times"]

        # ---- (b) append one experiment, durable -------------------------------------------------------
        print("\n[b] one experiment appended and durable")
        ap_res = bench_append(store, args.reps_append)
        print(line("add_experiment (INSERT, autocommit)", ap_res["add"]))
        print(line("save_experiment(finished) (flush+UPDATE; snapshot asked)", ap_res["save"]))
        print(line("add_experiment + save_experiment(finished)", ap_res["total"]))
        print("  breakdown:")
        print(line("save_experiment(not finished) = UPDATE only", ap_res["update_only"]))
        print(line("snapshot lag: refresh_snapshot() and wait (background)", ap_res["snapshot_only"]))
        for table, values in ap_res["per_table"].items():
            print(line(f"  COPY {table} TO parquet", values))
        results["append"] = ap_res

        # ---- (c) batched writer ------------------------------------------------------------------------
        print(f"\n[c] batched writer: {args.metric_push:,} rows per mode through add_metric "
              f"(flush_rows={store.flush_rows}, flush_seconds={store.flush_seconds})")
        met = bench_metrics(store, args.metric_push, args.experiments)
        for key, label in (("live", "points built in the loop (as a live run)"),
                           ("tight", "prebuilt points, bare add_metric loop")):
            r = met[key]
            rate = r["rows"] / r["seconds"]
            flush_share = r["flush_seconds"] / r["seconds"]
            print(f"  {label:<44} {rate:12,.0f} rows/s   ({r['seconds']:.1f} s, {r['flushes']} flushes, "
                  f"{flush_share:.0%} of it in flush)")
        results["metrics"] = met

        t0 = time.perf_counter()
        store.close()
        close2_s = time.perf_counter() - t0
        print(f"\n  Store.close() after the run (checkpoint)                  {close2_s:9.2f} s")

        # ---- (a') leaderboard through a Reader on the closed file ----------------------------------------
        t0 = time.perf_counter()
        reader = Reader(path)
        reader_open = time.perf_counter() - t0
        t_reader = timed(lambda: reader.leaderboard(limit=20), args.reps_leaderboard)
        reader.close()
        print(f"\n[a] Reader on the closed file (open {ms(reader_open):.1f} ms)")
        print(line("Reader.leaderboard (read-only file)", t_reader))
        results["lb_reader"] = t_reader

        # ---- results table ---------------------------------------------------------------------------------
        rows = []

        def verdict(ok: bool) -> str:
            return "PASS" if ok else "MISS"

        for key, label in (("lb_store", "leaderboard, Store (writer)"), ("lb_reader", "leaderboard, Reader (closed file)"),
                           ("lb_live", "leaderboard, Reader (live snapshot)")):
            if key in results:
                med, p95 = summary(results[key])
                rows.append((label, f"{med:.1f} ms", f"{p95:.1f} ms", "< 100 ms", verdict(p95 < TARGET_LEADERBOARD_MS)))
        med, p95 = summary(ap_res["total"])
        rows.append(("append + durable (add+save finished)", f"{med:.1f} ms", f"{p95:.1f} ms", "< 20 ms",
                     verdict(p95 < TARGET_APPEND_MS)))
        med, p95 = summary(ap_res["add"])
        rows.append(("  of which add_experiment INSERT", f"{med:.1f} ms", f"{p95:.1f} ms", "< 20 ms",
                     verdict(p95 < TARGET_APPEND_MS)))
        for key, label in (("live", "metric rows/s (built in loop)"), ("tight", "metric rows/s (prebuilt, tight)")):
            r = met[key]
            rate = r["rows"] / r["seconds"]
            rows.append((label, f"{rate:,.0f}", "", ">= 50,000", verdict(rate >= TARGET_METRIC_ROWS_S)))

        print("\n" + "=" * 92)
        print(f"{'figure':<40} {'median':>12} {'p95':>12} {'target':>12} {'':>6}")
        print("-" * 92)
        for label, a, b, target, v in rows:
            print(f"{label:<40} {a:>12} {b:>12} {target:>12} {v:>6}")
        print("-" * 92)
        print(f"set-up {setup_s:.1f} s; Store() open on the full file {open_s:.2f} s; close {close2_s:.2f} s")
        lag_med, lag_p95 = summary(ap_res["snapshot_only"])
        print(f"a live reader sees a finished experiment {lag_med:.0f} ms later (median; p95 {lag_p95:.0f} ms); "
              f"first full snapshot {first_snapshot_s:.1f} s after open")
        print(f"machine: {os.cpu_count()} CPUs, {platform.platform()}; duckdb {duckdb.__version__}")
        print("PASS/MISS is judged on p95 for latencies.")
        print("=" * 92)
        return 0
    finally:
        if tmpdir is not None and not args.keep:
            shutil.rmtree(tmpdir, ignore_errors=True)
        elif tmpdir is not None:
            print(f"kept {tmpdir}")


if __name__ == "__main__":
    sys.exit(main())
