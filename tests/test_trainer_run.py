"""The trainer as the supervisor will run it: a child process that prints the run contract."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import prepare

ROOT = Path(__file__).resolve().parent.parent
PROGRESS = re.compile(
    r"^step (\d{5}) \((\d+\.\d)%\) \| loss: (\d+\.\d{6}) \| lrm: \d+\.\d{2} \| dt: \d+ms \| "
    r"tok/sec: [\d,]+ \| mfu: (\d+\.\d%|n/a) \| epoch: \d+ \| remaining: \d+s$"
)
REQUIRED = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
            "total_tokens_M", "num_steps", "num_params_M", "depth",
            "attention_backend", "startup_seconds", "seed", "device_name"]


def parse_run(stdout):
    """The run contract: progress lines (split on \\r or \\n), then `---` and key: value lines."""
    lines = re.split(r"[\r\n]+", stdout)
    if "---" not in lines:
        return [], {}
    cut = lines.index("---")
    progress = [m for m in map(PROGRESS.match, lines[:cut]) if m]
    summary = dict(line.split(":", 1) for line in lines[cut + 1:] if ":" in line)
    return progress, {k.strip(): v.strip() for k, v in summary.items()}


def run_trainer(cwd, cache, budget="12", **env):
    full_env = {**os.environ, "AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_TIME_BUDGET": budget,
                "CUDA_VISIBLE_DEVICES": "", **env}
    return subprocess.run([sys.executable, "-m", "trainer.train"], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def finished_run(tiny_cache):
    return run_trainer(ROOT, tiny_cache)


def test_a_run_prints_progress_lines_and_the_full_summary(finished_run):
    assert finished_run.returncode == 0, finished_run.stderr[-2000:]
    progress, summary = parse_run(finished_run.stdout)
    assert len(progress) >= 3
    steps = [int(m.group(1)) for m in progress]
    assert steps == list(range(len(steps)))
    assert set(REQUIRED) <= set(summary)
    assert summary["attention_backend"] == "sdpa"
    assert summary["mfu_percent"] == "n/a"  # a CPU has no honest MFU figure
    assert int(summary["num_steps"]) == len(progress)
    assert float(summary["training_seconds"]) >= 12.0
    assert float(summary["total_seconds"]) > float(summary["training_seconds"])


def test_training_beats_the_untrained_model_by_a_wide_margin(finished_run, tiny_profile, tiny_tokenizer):
    from trainer import train

    _, summary = parse_run(finished_run.stdout)
    trained = float(summary["val_bpb"])
    torch.manual_seed(0)
    model = train.build_model(tiny_profile.max_seq_len, tiny_tokenizer.get_vocab_size(), device="cpu")
    model.eval()
    untrained = prepare.evaluate_bpb(model, tiny_tokenizer, 16, tiny_profile)
    print(f"untrained {untrained:.4f} -> trained {trained:.4f} bpb")
    assert trained < 0.6 * untrained


def test_the_printed_seed_replays_the_run(tiny_cache, finished_run):
    _, first = parse_run(finished_run.stdout)
    assert first["seed"].isdigit()
    # Same seed, same data order: the first logged loss must repeat exactly.
    again = run_trainer(ROOT, tiny_cache, budget="1", AUTORESEARCH_SEED=first["seed"])
    first_loss = parse_run(finished_run.stdout)[0][0].group(3)
    assert parse_run(again.stdout)[0][0].group(3) == first_loss
    assert parse_run(again.stdout)[1]["seed"] == first["seed"]


def test_a_budget_of_half_a_second_trains_half_a_second(tiny_cache):
    result = run_trainer(ROOT, tiny_cache, budget="0.5")
    assert result.returncode == 0, result.stderr[-2000:]
    _, summary = parse_run(result.stdout)
    assert summary["time_budget"] == "0.5"
    assert 0.5 <= float(summary["training_seconds"]) < 5.0  # not 0 (int("0.5") failed) nor a whole second more


def copy_of_repo(tmp_path):
    (tmp_path / "trainer").mkdir()
    shutil.copy(ROOT / "prepare.py", tmp_path / "prepare.py")
    shutil.copy(ROOT / "trainer" / "train.py", tmp_path / "trainer" / "train.py")
    (tmp_path / "trainer" / "__init__.py").write_text("")
    return tmp_path


def test_a_nan_loss_prints_fail_and_exits_1(tiny_cache, tmp_path):
    repo = copy_of_repo(tmp_path)
    src = (repo / "trainer" / "train.py").read_text()
    (repo / "trainer" / "train.py").write_text(src.replace("LOGIT_SOFTCAP = 15.0", "LOGIT_SOFTCAP = float('nan')"))
    result = run_trainer(repo, tiny_cache)
    assert result.returncode == 1
    assert "FAIL" in result.stdout.splitlines()
    assert "---" not in result.stdout.splitlines()


def test_missing_data_exits_2_saying_what_to_run(tmp_path):
    result = run_trainer(ROOT, tmp_path / "empty-cache")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert "uv run prepare.py --tiny" in errors[0]


def test_a_truncated_shard_exits_2_naming_the_shard(tiny_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_cache, cache)
    shard = cache / "tiny" / "data" / prepare.shard_name(0)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    result = run_trainer(ROOT, cache)
    assert result.returncode == 2
    assert str(shard) in result.stderr and "corrupt" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_profile_exits_2(tiny_cache):
    result = run_trainer(ROOT, tiny_cache, AUTORESEARCH_PROFILE="huge")
    assert result.returncode == 2
    assert "unknown profile 'huge'" in result.stderr


def test_prepare_refuses_an_unknown_profile_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "prepare.py", "--profile", "huge"], cwd=ROOT,
                            env={**os.environ, "AUTORESEARCH_CACHE": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "unknown profile" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_claim_run_also_measures_the_held_out_shard(tiny_cache, finished_run):
    """AUTORESEARCH_HELDOUT=1 (the claim's runs): evaluate_bpb also reads the held-out shard,
    which no keep was judged by, and its figure closes the summary; without it, no such line."""
    result = run_trainer(ROOT, tiny_cache, budget="1", AUTORESEARCH_HELDOUT="1", AUTORESEARCH_STEP_BUDGET="3")
    assert result.returncode == 0, result.stderr[-2000:]
    _, summary = parse_run(result.stdout)
    assert result.stdout.rstrip().splitlines()[-1].startswith("heldout_val_bpb:")
    heldout, val = float(summary["heldout_val_bpb"]), float(summary["val_bpb"])
    assert heldout != val and abs(heldout - val) < 0.1 * val  # other text of the same kind: near, not equal
    assert "heldout_val_bpb" not in parse_run(finished_run.stdout)[1]
