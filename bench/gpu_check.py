"""The first night, in ten minutes on one GPU: data, doctor, a steady-state training run, and the
supervisor itself for two short experiments, with every figure printed.

    bash bench/gpu_check.sh [WHEEL_DIR]     # the wrapper installs carried wheels, then runs this

Steps (each prints `== name`, its figures, and its seconds):
1. prepare the `full` profile offline (`prepare.py --synthetic`, GPU_CHECK_SHARDS shards);
2. `autoresearch-tui doctor --gpus 0` on a throwaway research repository with this trainer;
3. the trainer alone on the `full` profile for GPU_CHECK_TRAIN_S seconds (default 120):
   attention backend, start-up (compile) seconds, tok/s, MFU, steps, peak VRAM, val_bpb;
4. the supervisor headless on GPU 0 for two experiments of GPU_CHECK_RUN_S seconds (a baseline
   and one offline-mutator proposal): what each run measured, the NVML samples the lane
   recorded, and the seconds the GPU sat between the runs.

Where there is no GPU it says so in one line and exits 3 before doing anything."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHARDS = int(os.environ.get("GPU_CHECK_SHARDS", "2"))
TRAIN_S = float(os.environ.get("GPU_CHECK_TRAIN_S", "120"))
RUN_S = float(os.environ.get("GPU_CHECK_RUN_S", "20"))
NO_GPU = 3


def main() -> int:
    try:
        import torch
    except ImportError as e:
        print(f"gpu_check: torch cannot be imported ({e}); nothing was checked.")
        return NO_GPU
    if not torch.cuda.is_available():
        print(f"gpu_check: no GPU: torch {torch.__version__} sees no CUDA device here "
              f"(CUDA build: {torch.version.cuda or 'none'}); nothing was checked.")
        return NO_GPU
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"Python {sys.version.split()[0]}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    env.setdefault("AUTORESEARCH_CACHE", str(Path(tempfile.gettempdir()) / "gpu-check-cache"))
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    failures = 0

    def step(name: str, argv: list[str], cwd: Path, timeout: float, extra_env: dict | None = None):
        nonlocal failures
        print(f"\n== {name}", flush=True)
        t0 = time.monotonic()
        try:
            done = subprocess.run(argv, cwd=cwd, env={**env, **(extra_env or {})}, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            failures += 1
            print(f"   TIMED OUT after {timeout:.0f} s")
            return None
        seconds = time.monotonic() - t0
        if done.returncode != 0:
            failures += 1
            print(f"   exit {done.returncode} after {seconds:.1f} s; last output:\n{(done.stdout + done.stderr)[-3000:]}")
            return done
        print(f"   ok in {seconds:.1f} s")
        return done

    # 1. data
    prepared = step("prepare the full profile (synthetic, offline)",
                    [sys.executable, "prepare.py", "--synthetic", "--num-shards", str(SHARDS)], ROOT, 300)
    if prepared is None or prepared.returncode != 0:
        return 1
    # a research repository: this trainer and harness, committed once
    repo = _research_repo(work / "repo")

    # 2. doctor
    doctor = step("doctor --gpus 0", [sys.executable, "-m", "autoresearch_tui.cli", "doctor", "--gpus", "0", "--repo",
                                      str(repo), "--json"], ROOT, 300)
    if doctor is not None and doctor.stdout.strip():
        try:
            report = json.loads(doctor.stdout)
            for c in report["checks"]:
                print(f"   {c['verdict']:<7} {c['area']} {c['name']}: {c['detail']}")
        except (ValueError, KeyError):
            print(doctor.stdout[-2000:])

    # 3. the trainer alone, steady state
    train = step(f"trainer, full profile, {TRAIN_S:g} s", [sys.executable, "-m", "trainer.train"], repo, TRAIN_S + 400,
                 {"AUTORESEARCH_TIME_BUDGET": f"{TRAIN_S:g}", "CUDA_VISIBLE_DEVICES": "0"})
    if train is not None:
        # The header (device, attention backend, model, budget) and the progress rates are said
        # even when the run failed later: a crash at eval must not hide how training went.
        for line in train.stdout.replace("\r", "\n").splitlines():
            if line.startswith(("device:", "model:", "budget:")):
                print(f"   {line}")
        rates = _progress_rates(train.stdout)
        if rates:
            print(f"   tok/s per step, steady state (median of the later half): {statistics.median(rates):,.0f}")
    if train is not None and train.returncode == 0:
        summary = _summary(train.stdout)
        for key in ("attention_backend", "startup_seconds", "num_steps", "training_seconds", "total_tokens_M",
                    "mfu_percent", "peak_vram_mb", "val_bpb", "eval_seconds", "device_name"):
            print(f"   {key}: {summary.get(key)}")
        tokens, seconds = _float(summary.get("total_tokens_M")), _float(summary.get("training_seconds"))
        if tokens and seconds:
            print(f"   tok/s: {tokens * 1e6 / seconds:,.0f}")

    # 4. the supervisor, two experiments
    db = work / "log.duckdb"
    night = step(f"supervisor --no-ui --gpus 0, 2 experiments of {RUN_S:g} s",
                 [sys.executable, "-m", "autoresearch_tui.cli", "--no-ui", "--gpus", "0", "--repo", str(repo), "--tag",
                  "gpucheck", "--budget", f"{RUN_S:g}", "--max-experiments", "2", "--baseline-runs", "1", "--db",
                  str(db)], ROOT, 2 * (RUN_S + 300))
    if night is not None and db.exists():
        _night_figures(db)
    print(f"\ngpu_check: {'all steps ran' if not failures else f'{failures} step(s) failed'}")
    return 1 if failures else 0


def _research_repo(root: Path) -> Path:
    import shutil

    (root / "trainer").mkdir(parents=True)
    shutil.copy2(ROOT / "trainer" / "__init__.py", root / "trainer" / "__init__.py")
    shutil.copy2(ROOT / "trainer" / "train.py", root / "trainer" / "train.py")
    shutil.copy2(ROOT / "prepare.py", root / "prepare.py")
    (root / ".gitignore").write_text("__pycache__/\n.autoresearch/\n")
    ident = {"GIT_AUTHOR_NAME": "gpu-check", "GIT_AUTHOR_EMAIL": "g@c", "GIT_COMMITTER_NAME": "gpu-check",
             "GIT_COMMITTER_EMAIL": "g@c"}
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "the trainer"]):
        subprocess.run(["git", *args], cwd=root, check=True, env={**os.environ, **ident})
    return root


def _summary(stdout: str) -> dict:
    lines = stdout.replace("\r", "\n").splitlines()
    if "---" not in lines:
        return {}
    out = {}
    for line in lines[lines.index("---") + 1:]:
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def _progress_rates(stdout: str) -> list[float]:
    from scheduler.runs.runparse import parse_progress

    rates = [p.tok_per_sec for p in map(parse_progress, stdout.replace("\r", "\n").splitlines())
             if p is not None and p.tok_per_sec]
    return rates[len(rates) // 2:]


def _float(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _night_figures(db: Path) -> None:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT id, kind, status, val_bpb, training_seconds, num_steps, mfu_percent, peak_vram_mb, "
                       "startup_seconds, attention_backend, started_at, finished_at FROM experiments ORDER BY id"
                       ).fetchall()
    for r in rows:
        print(f"   #{r[0]} {r[1]} {r[2]}: val_bpb {r[3]}, {r[4]} s, {r[5]} steps, MFU {r[6]}%, peak {r[7]} MB, "
              f"startup {r[8]} s, attention {r[9]}")
    ends = [(r[10], r[11]) for r in rows if r[10] and r[11]]
    for (_, end), (start, _) in zip(ends, ends[1:]):
        print(f"   the GPU waited {(start - end).total_seconds():.2f} s between two runs")
    samples = con.execute("SELECT count(*), round(avg(util_pct), 1), max(mem_used_mb), max(temp_c), max(power_w) "
                          "FROM telemetry").fetchall()[0]
    print(f"   NVML samples: {samples[0]} (util mean {samples[1]}%, memory max {samples[2]} MB, "
          f"temperature max {samples[3]} C, power max {samples[4]} W)")
    con.close()


if __name__ == "__main__":
    sys.exit(main())
