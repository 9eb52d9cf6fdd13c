"""The research line in git: the frontier branch, each lane's worktrees, experiment commits.

The frontier branch `autoresearch/<tag>` holds the best commit so far. Each lane has two
worktrees under the repository's git-ignored `.autoresearch/worktrees/<tag>/`: `lane-N`, where
its training run works, and `lane-N-draft`, where its next proposal is written while the run
trains. Every experiment commit is kept reachable by a ref `refs/autoresearch/<tag>/<id>`, so
`git gc` never takes a result's code away. Nothing here touches the user's own checkout."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import git

# Commits are made by the tool, so they do not depend on the user's git identity (CI has none).
_IDENTITY = {"GIT_AUTHOR_NAME": "autoresearch-tui", "GIT_AUTHOR_EMAIL": "autoresearch-tui@localhost",
             "GIT_COMMITTER_NAME": "autoresearch-tui", "GIT_COMMITTER_EMAIL": "autoresearch-tui@localhost"}


class WorkspaceError(Exception):
    """The repository cannot be used (not a git repository, no commit, a dirty target...); one
    sentence for the user."""


@dataclass(frozen=True)
class Draft:
    """A proposal committed in a draft worktree, not yet run."""

    commit: str
    parent: str
    touched: tuple[str, ...]


class Workspace:
    def __init__(self, repo: Path, tag: str, editable: tuple[str, ...]):
        try:
            self.repo = git.Repo(repo)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise WorkspaceError(f"{repo} is not a git repository; the research line lives on a git branch.") from None
        if self.repo.bare:
            raise WorkspaceError(f"{repo} is a bare repository; point --repo at a checkout.")
        try:
            self.repo.head.commit
        except ValueError:
            raise WorkspaceError(f"{repo} has no commit yet; commit the training program first.") from None
        self.root = Path(self.repo.working_tree_dir)
        self.tag = tag
        self.editable = editable
        self.branch = f"autoresearch/{tag}"
        self.worktrees = self.root / ".autoresearch" / "worktrees" / tag
        self._lock = threading.RLock()  # git's own locks (index, refs, worktrees) dislike concurrency
        self._ignore_state_folder()

    def _ignore_state_folder(self) -> None:
        exclude = Path(self.repo.git_dir) / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        lines = exclude.read_text().splitlines() if exclude.exists() else []
        if "/.autoresearch/" not in lines:
            with exclude.open("a") as f:
                f.write("\n/.autoresearch/\n")

    def _git(self, *args, cwd: Path | None = None) -> str:
        with self._lock:
            runner = git.Repo(cwd).git if cwd is not None else self.repo.git
            return runner.execute(["git", *args], env={**os.environ, **_IDENTITY})

    # -- the frontier -----------------------------------------------------------------------

    def exists(self) -> bool:
        return self._ref_commit(f"refs/heads/{self.branch}") is not None

    def ensure_frontier(self, start: str = "HEAD") -> str:
        """The frontier commit; a new tag starts its branch at `start`."""
        with self._lock:
            sha = self._ref_commit(f"refs/heads/{self.branch}")
            if sha is None:
                for path in self.editable:
                    if not (self.root / path).is_file() and not self._in_commit(start, path):
                        raise WorkspaceError(f"the editable file {path} is not in {self.root}; check the target.")
                sha = self.repo.commit(start).hexsha
                self._git("update-ref", f"refs/heads/{self.branch}", sha, "")
            return sha

    def starting_point(self) -> str:
        """The commit this tag's runs start from: its frontier, or HEAD for a new tag."""
        sha = self._ref_commit(f"refs/heads/{self.branch}") or self._ref_commit("HEAD")
        if sha is None:
            raise WorkspaceError(f"{self.root} has no commit to start from.")
        return sha

    def frontier(self) -> str:
        sha = self._ref_commit(f"refs/heads/{self.branch}")
        if sha is None:
            raise WorkspaceError(f"the frontier branch {self.branch} is missing.")
        return sha

    def advance(self, new: str, expected: str) -> bool:
        """Move the frontier to `new` if it is still at `expected` (compare-and-swap)."""
        try:
            self._git("update-ref", "-m", f"autoresearch: frontier -> {new[:8]}", f"refs/heads/{self.branch}", new, expected)
            return True
        except git.GitCommandError:
            return False

    def _ref_commit(self, ref: str) -> str | None:
        try:
            return self._git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip() or None
        except git.GitCommandError:
            return None

    def _in_commit(self, rev: str, path: str) -> bool:
        try:
            self._git("cat-file", "-e", f"{rev}:{path}")
            return True
        except git.GitCommandError:
            return False

    def keep_commit(self, experiment_id: int, sha: str) -> None:
        self._git("update-ref", f"refs/autoresearch/{self.tag}/{experiment_id}", sha)

    def is_ancestor(self, older: str, newer: str) -> bool:
        with self._lock:
            return self.repo.is_ancestor(older, newer)

    # -- worktrees -----------------------------------------------------------------------------

    def worktree(self, name: str) -> Path:
        """A detached worktree by this name, created on first use and reused after a restart."""
        path = self.worktrees / name
        with self._lock:
            if not (path / ".git").exists():
                self._git("worktree", "prune")
                path.parent.mkdir(parents=True, exist_ok=True)
                self._git("worktree", "add", "--detach", "--force", str(path), self.frontier())
            return path

    def checkout(self, path: Path, sha: str) -> None:
        """Make the worktree exactly `sha`: no leftover edits or files from an earlier run."""
        self._git("checkout", "--detach", "--force", sha, cwd=path)
        self._git("reset", "--hard", sha, cwd=path)
        self._git("clean", "-fdq", cwd=path)

    def changed_files(self, path: Path) -> list[str]:
        out = self._git("status", "--porcelain", "--untracked-files=all", "-z", cwd=path)
        names = []
        entries = out.split("\0")
        i = 0
        while i < len(entries):
            entry = entries[i]
            if len(entry) > 3:
                names.append(entry[3:])
                if entry[0] in "RC":  # a rename also names its source in the next entry
                    i += 1
                    names.append(entries[i])
            i += 1
        return names

    def commit_draft(self, path: Path, parent: str, message: str) -> Draft:
        """Commit what the proposer changed in a draft worktree. Every changed file is
        committed, so a change to a file it may not edit is visible and can be rejected."""
        touched = tuple(sorted(set(self.changed_files(path))))
        if not touched:
            raise WorkspaceError("the proposal changed no file")
        self._git("add", "--all", "--", *touched, cwd=path)
        self._git("commit", "--quiet", "--no-verify", "-m", message, cwd=path)
        sha = self._git("rev-parse", "HEAD", cwd=path).strip()
        return Draft(commit=sha, parent=parent, touched=touched)

    def diff(self, parent: str, sha: str) -> str:
        """What commit `sha` changed against `parent`, as a unified diff (for the run's evidence)."""
        return self._git("diff", "--no-color", "--no-ext-diff", parent, sha)

    def touched(self, parent: str, sha: str) -> list[str]:
        return [p for p in self._git("diff", "--name-only", "--no-renames", parent, sha).splitlines() if p]

    def replay(self, path: Path | None, sha: str, onto: str, *, worktree_at: str | None = None) -> str | None:
        """Put the change of commit `sha` on top of `onto` and check the result out in the
        worktree at `path` (None: nowhere); None on a conflict (the worktree is left clean
        either way). `worktree_at`: the commit the caller knows `path` holds, clean, which
        saves a reset.

        The change is applied as a zero-context patch first: hyperparameters sit on adjacent
        lines, and a three-way merge (cherry-pick) calls two edits of neighbouring lines a
        conflict although they touch different constants. The patch goes into a scratch
        index, so the new commit exists before a single file of the worktree is written: a
        lane's GPU may be waiting for this. Only when that patch does not apply is a real
        three-way merge tried."""
        patch = self._git("diff", "--unified=0", "--binary", f"{sha}^", sha) + "\n"
        with self._lock:  # gitpython's object reader is one process, shared by every thread
            message = self.repo.commit(sha).message
        new = self._apply_on(onto, patch, message)
        if new is not None:
            if path is None:
                return new
            if worktree_at == sha:
                self._git("checkout", "--detach", "--force", new, cwd=path)
            else:
                self.checkout(path, new)
            return new
        path = path or self.worktree("replay")
        self.checkout(path, onto)
        try:
            self._git("cherry-pick", "--allow-empty", "--no-edit", sha, cwd=path)
        except git.GitCommandError:
            try:
                self._git("cherry-pick", "--abort", cwd=path)
            except git.GitCommandError:
                pass
            self.checkout(path, onto)
            return None
        return self._git("rev-parse", "HEAD", cwd=path).strip()

    def adopt(self, sha: str, onto: str, message: str) -> str:
        """A merge of `sha` into `onto` whose code is exactly that of `sha`: the branch moves
        forward to a program that was measured as it is, and `sha` is in its history."""
        with self._lock:
            made = subprocess.run(["git", "commit-tree", f"{sha}^{{tree}}", "-p", onto, "-p", sha], cwd=self.root,
                                  input=message,
                                  text=True, capture_output=True, env={**os.environ, **_IDENTITY})
        if made.returncode != 0:
            raise WorkspaceError(f"git could not record {sha[:8]} on {onto[:8]}: {made.stderr.strip()}")
        return made.stdout.strip()

    def _apply_on(self, onto: str, patch: str, message: str) -> str | None:
        """The commit `onto` + `patch`, built in a scratch index; None if the patch does not apply."""
        with self._lock, tempfile.TemporaryDirectory(prefix="autoresearch-index-") as scratch:
            env = {**os.environ, **_IDENTITY, "GIT_INDEX_FILE": os.path.join(scratch, "index")}

            def git_(*args, stdin: str | None = None):
                return subprocess.run(["git", *args], cwd=self.root, env=env, input=stdin, text=True,
                                      capture_output=True)

            if git_("read-tree", onto).returncode != 0:
                return None
            if git_("apply", "--cached", "--unidiff-zero", "-", stdin=patch).returncode != 0:
                return None
            tree = git_("write-tree")
            if tree.returncode != 0:
                return None
            commit = git_("commit-tree", tree.stdout.strip(), "-p", onto, stdin=message)
            return commit.stdout.strip() if commit.returncode == 0 else None
