"""bench/gpu_check.sh, the first-night check for a lent GPU machine, on a machine without a GPU:
one clear line and a non-zero exit before it prepares or runs anything."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_without_a_gpu_the_check_says_so_and_exits_3_without_a_traceback(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the check would run for real")
    env = {**os.environ, "AUTORESEARCH_CACHE": str(tmp_path / "cache"), "TMPDIR": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 3
    out = done.stdout + done.stderr
    assert out.strip().splitlines() == [out.strip()]  # one line
    assert out.startswith("gpu_check: no GPU") and "nothing was checked" in out
    assert "Traceback" not in out
    assert not (tmp_path / "cache").exists() and not list(tmp_path.glob("gpu-check-*"))  # nothing prepared


def test_wheels_that_cannot_be_installed_are_one_sentence_and_exit_2(tmp_path):
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "broken-1.0-py3-none-any.whl").write_text("not a wheel")
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "wheels")], cwd=tmp_path,
                          env={**os.environ, "TMPDIR": str(tmp_path), "PYTHON": str(ROOT / ".venv" / "bin" / "python")
                               if (ROOT / ".venv" / "bin" / "python").exists() else "python3"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "installing the wheels" in done.stderr and "nothing was checked" in done.stderr
