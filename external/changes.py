"""Checking what an external agent hands in, before the engine sees it: a patch's paths, whether
it applies, what the worktree now changes, and a key for the change so that the same diff is
never run twice on one frontier. Each refusal is one sentence the agent can act on."""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path, PurePosixPath


class Refused(Exception):
    """A submission that may not run; the message says why and what to do."""


def _git(worktree: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=worktree, input=stdin, capture_output=True, text=True, timeout=60)


def patch_paths(worktree: Path, patch: str) -> list[str]:
    """The files a unified diff touches, as git reads it (both sides of a rename)."""
    done = _git(worktree, "apply", "--numstat", "-z", "-", stdin=patch)
    if done.returncode != 0:
        raise Refused(f"the patch is not a unified diff git can read: {_first_line(done.stderr)}")
    paths: list[str] = []
    fields = done.stdout.split("\0")
    i = 0
    while i < len(fields):
        entry = fields[i]
        if not entry:
            i += 1
            continue
        name = entry.split("\t", 2)[2] if entry.count("\t") >= 2 else ""
        if name:
            paths.append(name)
            i += 1
        else:  # a rename: the next two fields are its source and destination
            paths += [fields[i + 1], fields[i + 2]]
            i += 3
    return paths


def check_paths(paths: list[str], editable: tuple[str, ...]) -> None:
    for path in paths:
        pure = PurePosixPath(path)
        if pure.is_absolute() or ".." in pure.parts:
            raise Refused(f"the patch names {path}, a path outside the worktree; only {', '.join(editable)} may change")
    forbidden = sorted({p for p in paths if p not in editable})
    if forbidden:
        raise Refused(f"the change touches {', '.join(forbidden)}, which only a person may edit; "
                      f"only {', '.join(editable)} may change")


def apply_patch(worktree: Path, patch: str, editable: tuple[str, ...]) -> None:
    """Apply `patch` in the worktree, or refuse with nothing applied."""
    if not patch.endswith("\n"):
        patch += "\n"  # a diff pasted without its last newline is still the same diff
    check_paths(patch_paths(worktree, patch), editable)
    with tempfile.NamedTemporaryFile("w", suffix=".diff", delete=False) as f:
        f.write(patch)
        name = f.name
    try:
        done = _git(worktree, "apply", "--check", name)
        if done.returncode != 0:
            raise Refused(f"the patch does not apply to the frontier: {_first_line(done.stderr)}; "
                          f"read_frontier shows the file as it is")
        done = _git(worktree, "apply", name)
        if done.returncode != 0:
            raise Refused(f"the patch does not apply: {_first_line(done.stderr)}")
    finally:
        Path(name).unlink(missing_ok=True)


def revert_patch(worktree: Path, patch: str) -> None:
    _git(worktree, "apply", "-R", "-", stdin=patch if patch.endswith("\n") else patch + "\n")


def change_key(worktree: Path, editable: tuple[str, ...]) -> str:
    """The same diff always gets the same key, whoever wrote it and however."""
    diff = _git(worktree, "diff", "--no-color", "--no-ext-diff", "HEAD", "--", *editable).stdout
    return "diff:" + hashlib.sha256(diff.encode()).hexdigest()[:16]


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0].removeprefix("error: ") if lines else "git said nothing"
