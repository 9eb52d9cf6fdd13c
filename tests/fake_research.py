"""A small research repository for the engine's tests: an upstream-style `train.py` that
prints the run contract quickly and can be told (by the constants a proposer edits) to crash,
run out of memory, diverge, hang, ignore SIGTERM or report what its environment looks like."""

import os
import subprocess
import threading
from pathlib import Path

from agents.proposer import Proposal, ProposalError

FAKE_TRAIN = '''\
import os, signal, sys, time

# Hyperparameters (the offline mutator perturbs these). Spaced apart so that changes to two
# of them merge without a conflict, as changes to a real trainer's distant lines would.
VALUE = 1.0  # what val_bpb will be

# ---
DURATION = 0.3  # seconds of "training"

# ---
STEP_COUNT = 4

# ---
BONUS = 0.0  # subtracted from VALUE: a second knob, far from the first

# ---
MODE = "ok"  # ok | crash | oom | nan | hang | stubborn | slow

SECRET_MARK = "hunter2"
if MODE == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if MODE in ("hang", "stubborn"):
    print("starting", flush=True)
    time.sleep(600)
if MODE == "crash":
    raise RuntimeError("the model exploded in a way nobody expected")
if MODE == "oom":
    print("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr, flush=True)
    sys.exit(1)
steps = 10**6 if MODE == "slow" else STEP_COUNT
for step in range(steps):
    time.sleep(DURATION / STEP_COUNT)
    print(f"\\rstep {step:05d} ({100 * step / STEP_COUNT:.1f}%) | loss: {3.0 - step / 10:.6f} | lrm: 1.00 | dt: 80ms | "
          f"tok/sec: 1,000 | mfu: 1.0% | epoch: 1 | remaining: 1s    ", end="", flush=True)
    if MODE == "nan" and step == 1:
        print("\\nFAIL", flush=True)
        sys.exit(1)
print()
leaked = sorted(k for k, v in os.environ.items() if SECRET_MARK in v)
offset = 0.0
offsets_file = os.environ.get("AUTORESEARCH_FAKE_OFFSETS")
if offsets_file:  # run-to-run noise a test controls: each run takes the next line
    import fcntl
    with open(offsets_file, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        lines = f.read().splitlines()
        offset = float(lines.pop(0)) if lines else 0.0
        f.seek(0); f.truncate(); f.write("\\n".join(lines))
print("---")
print(f"val_bpb:          {VALUE - BONUS + offset:.6f}")
print("training_seconds: 0.3")
print("total_seconds:    0.4")
print("peak_vram_mb:     1024.0")
print("mfu_percent:      1.00")
print("total_tokens_M:   0.1")
print(f"num_steps:        {STEP_COUNT}")
print("num_params_M:     1.0")
print("depth:            2")
print(f"cuda_visible:     [{os.environ.get('CUDA_VISIBLE_DEVICES')}]")
print(f"device_order:     {os.environ.get('CUDA_DEVICE_ORDER')}")
print(f"cwd:              {os.getcwd()}")
print(f"leaked:           [{','.join(leaked)}]")
'''


def make_repo(root: Path, files: dict[str, str] | None = None) -> Path:
    """A git repository whose target is `train.py` (upstream's layout) plus a prepare.py that
    nobody may edit; `files` (name -> text) in their place."""
    root.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {"train.py": FAKE_TRAIN,
                                 "prepare.py": "# the fixed harness\nMAX_SEQ_LEN = 2048\n"}).items():
        (root / name).write_text(text)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "start"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)
    return root


def set_constants(path: Path, **values) -> None:
    lines = path.read_text().splitlines(keepends=True)
    for name, value in values.items():
        for i, line in enumerate(lines):
            if line.startswith(f"{name} = "):
                lines[i] = f"{name} = {value!r}\n"
                break
        else:
            raise AssertionError(f"{name} not in {path}")
    path.write_text("".join(lines))


class ScriptedProposer:
    """A real proposer that makes the changes a test lists, in order, one per call. A step is
    a dict of train.py constants, or {"edit": "prepare.py"} to touch a file it may not."""

    name = "scripted"

    def __init__(self, steps):
        self.steps = list(steps)
        self._lock = threading.Lock()
        self.requests = []

    def propose(self, request):
        with self._lock:
            if not self.steps:
                raise ProposalError("the script is over", exhausted=True)
            step = self.steps.pop(0)
            self.requests.append(request)
        step = dict(step)
        description = step.pop("description", None) or ", ".join(f"{k}={v}" for k, v in step.items())
        if "edit" in step:
            target = request.worktree / step.pop("edit")
            target.write_text(target.read_text() + "MAX_SEQ_LEN = 4096  # a shortcut to a better number\n")
        if step:
            set_constants(request.worktree / "train.py", **step)
        return Proposal(description=description, hypothesis="scripted", change=description, agent="scripted")
