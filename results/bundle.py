"""A claim a researcher can hand to a colleague: one folder that says what a research line
found, shows the code that found it and tells how to get that code back.

The folder is built from the experiment log and the research repository alone:

    frontier.patch    the start to the final frontier (`git diff --binary START FRONTIER`)
    results.tsv       upstream's results.tsv, every experiment of the line
    claim.json        the line's latest claim (results/claim.py), or why there is none
    kept.tsv          every kept change, with the rule that kept it and its numbers
    progress.png      the progress plot
    environment.json  what the line ran on: the sessions' settings, the trainer's facts
    README.md         all of it in words, and the one command that reproduces the frontier

The patch is what makes the bundle portable: the frontier branch need never be pushed, since
the start commit (upstream's, as a rule) plus the patch give the frontier's tree byte for byte.
Nothing in the folder is a secret or a path of the machine it was made on. It is written into
a folder beside the target and renamed into place at the end, so it is whole or absent."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from . import tree as research_tree
from .claim import Claim
from .metric import Metric
from .records import Decision, Experiment, Kind, Status
from .report import progress_plot, results_tsv

CHANGES = (Kind.PROPOSAL, Kind.VERIFICATION, Kind.RERUN, Kind.CONFIRM)  # kinds whose keep is a change kept
FILES = ("frontier.patch", "results.tsv", "claim.json", "kept.tsv", "progress.png", "environment.json", "README.md")
KEPT_COLUMNS = ("id", "commit", "value", "delta", "rule", "gain", "margin", "sigma", "dof", "sigma_used",
                "gain_sigma", "source", "description")
_SECRET_WORDS = {"key", "apikey", "token", "secret", "password", "passwd", "credential", "credentials", "auth"}
# An absolute (or home-relative) path inside a string: not a URL's "//", not a fraction's "1/2",
# not the rest of a path whose start was already replaced ("<repo>/train.py").
_PATH = re.compile(r"(?<![\w/.~>])(?:~/|/)(?=[A-Za-z_.])[^\s'\"(),;]*")


# The claims branch's commit is made by the tool, as the frontier's are, so it does not depend on
# the user's git identity.
_IDENTITY = {"GIT_AUTHOR_NAME": "autoresearch-tui", "GIT_AUTHOR_EMAIL": "autoresearch-tui@localhost",
             "GIT_COMMITTER_NAME": "autoresearch-tui", "GIT_COMMITTER_EMAIL": "autoresearch-tui@localhost"}


class BundleError(Exception):
    """Bad input a user can fix (the folder, the log, the repository): one sentence."""


@dataclass(frozen=True)
class Session:
    id: str
    repo: str
    started_at: datetime | None
    config: dict


@dataclass(frozen=True)
class KeptChange:
    experiment: Experiment
    value: float | None
    delta: float | None  # value minus the mean of the frontier it was tried on (results/tree.py)
    judgement: dict  # the decision's events row: rule, delta (the judged gain), margin, sigma, dof, sigma_used

    @property
    def gain_sigma(self) -> float | None:
        gain, sigma = self.judgement.get("delta"), self.judgement.get("sigma")
        return gain / sigma if gain is not None and sigma else None


@dataclass(frozen=True)
class Line:
    """One research tag as the log holds it: what the bundle describes."""

    tag: str
    sessions: tuple[Session, ...]
    experiments: list[Experiment]
    metric: Metric
    start: str
    frontier: str
    made_by: int | None  # the experiment whose keep made the final frontier
    start_value: float | None
    kept: tuple[KeptChange, ...]
    claim: Claim | None

    @property
    def repo(self) -> str:
        return self.sessions[-1].repo


def read_line(reader, run: str | None = None) -> Line:
    """The research line of `run`'s session (the latest session's without one), every session
    of its tag."""
    tag = _tag_of(reader.con, run)
    sessions = _sessions(reader.con, tag)
    experiments = reader.experiments(None, tag)
    if not experiments:
        raise BundleError(f"the log has no experiments for tag {tag}: there is nothing to bundle yet.")
    metric = Metric.from_config(sessions[-1].config)
    moves = reader.frontier_moves(None, tag)
    built = research_tree.build(experiments, moves, metric)
    start = built.root.frontier
    if start is None:
        raise BundleError(f"no experiment of tag {tag} ran on a commit: there is no starting point to bundle.")
    changes = [e for e in experiments if e.decision is Decision.KEEP and e.kind in CHANGES]
    if moves:  # an undo's commit is where the frontier went back to: the last move says where it is
        frontier, made_by = moves[-1].commit, None if moves[-1].undo else moves[-1].experiment_id
    elif changes and changes[-1].commit:  # a log written before the moves were recorded
        frontier, made_by = changes[-1].commit, changes[-1].id
    else:
        frontier, made_by = start, None
    judgements = _keep_judgements(reader.con, tag)
    kept = tuple(KeptChange(e, metric.value(e) if e.status is Status.OK else None,
                            node.delta if node is not None else None, judgements.get(e.id, {}))
                 for e in changes for node in [built.find(e.id)])
    claims = reader.claims(None, tag)
    return Line(tag, sessions, experiments, metric, start, frontier, made_by, built.start_value, kept,
                claims[-1] if claims else None)


@dataclass(frozen=True)
class Written:
    files: list[Path]
    branch: str | None = None  # with git_branch: the branch the bundle was committed on, and the commit
    commit: str | None = None


def write_bundle(reader, out: Path, run: str | None = None, repo: Path | None = None,
                 git_branch: bool = False) -> Written:
    """Write the bundle of `run`'s research line into `out` (absent or empty); with `git_branch`,
    commit it too, on the branch claims/<tag> of the research repository."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} already exists and is not an empty folder; a bundle is never written over "
                          f"anything, so name a new folder.")
    line = read_line(reader, run)
    repo = repo or Path(line.repo)
    patch = frontier_patch(repo, line.start, line.frontier)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (work / "frontier.patch").write_bytes(patch)
        (work / "results.tsv").write_text(results_tsv(line.experiments, line.metric))
        (work / "claim.json").write_text(json.dumps(claim_record(line), indent=2) + "\n")
        (work / "kept.tsv").write_text(kept_tsv(line))
        progress_plot(line.experiments, work / "progress.png", title=f"tag {line.tag}", metric=line.metric)
        (work / "environment.json").write_text(json.dumps(environment(line), indent=2, default=str) + "\n")
        (work / "README.md").write_text(readme(line, bool(patch), _git(repo, "rev-parse", f"{line.frontier}^{{tree}}")))
        branch, commit = commit_on_branch(repo, line, work) if git_branch else (None, None)
        work.chmod(0o755)  # mkdtemp's folder is private; the bundle is for handing on
        os.rename(work, out)  # onto an empty folder, or none: never over files
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Written([out / name for name in FILES], branch, commit)


def commit_on_branch(repo: Path, line: Line, folder: Path) -> tuple[str, str]:
    """The bundle's files as a commit on top of the frontier, under claims/<tag>/, on the branch
    claims/<tag>. Built in a scratch index: no other branch moves, the working tree is not
    touched. A branch from an earlier bundle of the tag stays in the new commit's history."""
    branch = f"claims/{line.tag}"
    ref = f"refs/heads/{branch}"
    if _git_ok(repo, "check-ref-format", ref) is None:
        raise BundleError(f"the tag {line.tag} cannot name a git branch {branch}.")
    previous = _git_ok(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="autoresearch-bundle-index-") as scratch:
        env = {"GIT_INDEX_FILE": os.path.join(scratch, "index")}
        _git(repo, "read-tree", line.frontier, env=env)
        for name in FILES:
            blob = _git(repo, "hash-object", "-w", str(folder / name))
            _git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},claims/{line.tag}/{name}", env=env)
        tree = _git(repo, "write-tree", env=env)
    parents = ["-p", line.frontier] + (["-p", previous] if previous else [])
    claim = line.claim.text() if line.claim is not None else "not confirmed"
    commit = _git(repo, "commit-tree", tree, *parents, "-m", f"claim for tag {line.tag}: {claim}", env=_IDENTITY)
    _git(repo, "update-ref", "-m", "autoresearch-tui report --bundle --git-branch", ref, commit,
         previous or "0" * 40)
    return branch, commit


# -- the files ------------------------------------------------------------------------------------


def frontier_patch(repo: Path, start: str, frontier: str) -> bytes:
    """`git diff --binary START FRONTIER`, as plumbing (diff-tree ignores a user's diff
    settings, such as no prefixes, that would make the patch fail to apply)."""
    if not repo.is_dir():
        raise BundleError(f"the research repository {repo} does not exist; pass it with --repo PATH.")
    if _git_ok(repo, "rev-parse", "--git-dir") is None:
        raise BundleError(f"{repo} is not a git repository; pass the research repository with --repo PATH.")
    for commit in (start, frontier):
        if _git_ok(repo, "cat-file", "-e", f"{commit}^{{commit}}") is None:
            raise BundleError(f"the repository {repo} lacks commit {commit[:12]} of this research line; "
                              f"pass the research repository with --repo PATH.")
    return _git(repo, "diff-tree", "-p", "--binary", "--full-index", start, frontier, text=False)


def claim_record(line: Line) -> dict:
    if line.claim is None:
        return {"confirmed": False, "why": f"the log holds no claim for tag {line.tag}: its start and its final "
                                          f"frontier were never run again side by side"}
    return {"confirmed": line.claim.holds, "verdict": line.claim.text(), **_clean(line.claim.as_dict(), line)}


def kept_tsv(line: Line) -> str:
    out = ["\t".join(KEPT_COLUMNS) + "\n"]
    for k in line.kept:
        e, j = k.experiment, k.judgement
        cells = (e.id, (e.commit or "")[:7], _num(k.value), _num(k.delta, "+"), j.get("rule", ""),
                 _num(j.get("delta"), "+"), _num(j.get("margin")), _num(j.get("sigma")), j.get("dof", ""),
                 _num(j.get("sigma_used")), _num(k.gain_sigma, "+", 2),
                 e.decision_source.value if e.decision_source else "", _one_line(e.description))
        out.append("\t".join("" if c is None else str(c) for c in cells) + "\n")
    return "".join(out)


def environment(line: Line) -> dict:
    """What the line ran on. Never a secret, never a path of this machine."""
    finished = [e for e in line.experiments if e.status is Status.OK]

    def seen(key: str) -> list:
        return sorted({str(e.summary[key]) for e in finished if e.summary.get(key) is not None})

    on_frontier = [e for e in finished if e.commit == line.frontier and e.summary.get("num_params_M") is not None]
    return {
        "tag": line.tag,
        "metric": {"name": line.metric.name, "direction": line.metric.direction.value},
        "start": line.start, "frontier": line.frontier,
        "sessions": [{"run": s.id, "started_at": s.started_at.isoformat() if s.started_at else None,
                      **_clean(s.config, line)} for s in line.sessions],
        "trainer": {"gpu_models": sorted({e.gpu_name for e in finished if e.gpu_name}),
                    "device_name": seen("device_name"), "attention_backend": seen("attention_backend"),
                    "seed": seen("seed"),
                    "frontier_num_params_M": on_frontier[-1].summary["num_params_M"] if on_frontier else None},
    }


def readme(line: Line, changed: bool, frontier_tree: str) -> str:
    metric, claim = line.metric, line.claim
    verdict = claim.text() if claim is not None else f"not confirmed: {claim_record(line)['why']}"
    command = _clean((line.sessions[-1].config.get("target") or {}).get("command") or "", line)
    steps = [f"git checkout --detach {line.start}"] + (["git apply --index frontier.patch"] if changed else [])
    start_value = f" ({metric.name} {line.start_value:.6f}, the mean of its baseline runs)" \
        if line.start_value is not None else ""
    made = f", made by #{line.made_by}" if line.made_by is not None else ""
    out = [f"# tag {line.tag}\n\n**{verdict}**\n\n",
           f"- metric: {metric.label}\n",
           f"- start: `{line.start}`{start_value}\n",
           f"- frontier: `{line.frontier}`{made}" + ("" if changed else " (the frontier never moved)") + "\n",
           f"- {len(line.experiments)} experiments in {len(line.sessions)} session(s); "
           f"{len(line.kept)} change(s) kept\n"]
    if claim is not None and (claim.start, claim.frontier) != (line.start, line.frontier):
        out.append(f"- the claim compared `{claim.start[:12]}` with `{claim.frontier[:12]}`, not this start "
                   f"and frontier: the line went on after it was measured\n")
    out.append("\n## Kept changes\n\n")
    if line.kept:
        out.append(f"| # | commit | {metric.name} | Δ vs its frontier | rule | gain / σ | by | description |\n"
                   "|---|---|---|---|---|---|---|---|\n")
        for k in line.kept:
            e = k.experiment
            out.append(f"| {e.id} | `{(e.commit or '')[:7]}` | {_num(k.value) or '-'} | {_num(k.delta, '+') or '-'} "
                       f"| {k.judgement.get('rule', '-')} | {_num(k.gain_sigma, '+', 2) or '-'} "
                       f"| {e.decision_source.value if e.decision_source else '-'} "
                       f"| {_one_line(e.description).replace('|', '/')} |\n")
    else:
        out.append("None: every change tried was discarded.\n")
    out.append("\n## Reproduce\n\nIn a fresh clone of the research repository, with this folder's `frontier.patch` "
               "copied into it, one command checks out the start, applies the line's changes and trains:\n\n"
               "```bash\n" + " && ".join(steps + ([command] if command else [])) + "\n```\n\n")
    out.append(f"Before training, `git write-tree` prints `{frontier_tree}`, the tree of the frontier commit "
               f"`{line.frontier}`: the code is the frontier's byte for byte, whether or not that commit was "
               "ever pushed.\n\n")
    out.append("## Files\n\n"
               "- `frontier.patch`: `git diff --binary` from the start to the frontier\n"
               "- `results.tsv`: every experiment, upstream autoresearch's format\n"
               "- `claim.json`: the claim's figures (the start and the frontier run again side by side)\n"
               "- `kept.tsv`: each kept change; `delta` is against the frontier it was tried on, `gain`, `margin`, "
               "`sigma`, `dof` and `sigma_used` are the numbers its keep was judged by (`gain` positive is better), "
               "`gain_sigma` = gain / sigma\n"
               "- `progress.png`: every experiment, kept ones highlighted, the running best\n"
               "- `environment.json`: the sessions' settings and what the trainer reported of its machine\n")
    return "".join(out)


# -- the log's rows the Reader has no call for ---------------------------------------------------


def _tag_of(con, run: str | None) -> str:
    sql = "SELECT tag FROM runs" + (" WHERE id = ?" if run else "") + " ORDER BY started_at DESC LIMIT 1"
    rows = con.execute(sql, [run] if run else []).fetchall()
    if not rows:
        raise BundleError(f"the log has no session {run}." if run else "the log has no sessions yet.")
    return rows[0][0]


def _sessions(con, tag: str) -> tuple[Session, ...]:
    rows = con.execute("SELECT id, repo, started_at, config FROM runs WHERE tag = ? ORDER BY started_at, id",
                       [tag]).fetchall()
    return tuple(Session(i, repo, started, _json(config)) for i, repo, started, config in rows)


def _keep_judgements(con, tag: str) -> dict[int, dict]:
    """The detail of each experiment's last keep: the rule and the numbers it was kept by."""
    rows = con.execute("SELECT experiment_id, detail FROM events WHERE kind = 'decision:keep' AND run_id IN "
                       "(SELECT id FROM runs WHERE tag = ?) ORDER BY id", [tag]).fetchall()
    return {experiment_id: _json(detail) for experiment_id, detail in rows if experiment_id is not None}


def _json(value) -> dict:
    found = json.loads(value) if isinstance(value, str) else value
    return found if isinstance(found, dict) else {}


# -- helpers of the above ---------------------------------------------------------------------------


def _clean(value, line: Line):
    """`value` without secrets (keys named like one) or this machine's paths (a session's
    repository becomes <repo>, any other absolute path <path>)."""
    if isinstance(value, dict):
        return {k: _clean(v, line) for k, v in value.items() if not _secret_name(str(k))}
    if isinstance(value, (list, tuple)):
        return [_clean(v, line) for v in value]
    if isinstance(value, str):
        for session in line.sessions:
            if session.repo:
                value = value.replace(session.repo.rstrip("/"), "<repo>")
        return _PATH.sub("<path>", value)
    return value


def _secret_name(name: str) -> bool:
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    return bool(_SECRET_WORDS.intersection(words))


def _num(value, sign: str = "", places: int = 6) -> str:
    return "" if value is None else f"{value:{sign}.{places}f}"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _git(repo: Path, *args: str, text: bool = True, env: dict | None = None):
    result = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=text, timeout=60,
                            env={**os.environ, **env} if env else None)
    if result.returncode != 0:
        error = result.stderr if text else result.stderr.decode(errors="replace")
        raise BundleError(f"git {args[0]} failed in {repo}: {' '.join(error.split()) or 'no reason given'}.")
    return result.stdout.strip() if text else result.stdout


def _git_ok(repo: Path, *args: str) -> str | None:
    try:
        return _git(repo, *args)
    except (BundleError, OSError):
        return None
