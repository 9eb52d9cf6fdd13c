"""`autoresearch-tui report --bundle DIR`: a claim to hand on, from a real night's log and its
research repository. The reproduce command is run as the README writes it, in a fresh clone."""

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from autoresearch_tui.cli import main
from fake_research import make_repo, set_constants
from results.bundle import FILES, KEPT_COLUMNS
from results.claim import Claim, compare
from results.metric import Metric
from results.records import Decision, Event, Experiment, Kind, Run, Status
from results.report import results_tsv
from results.store import Reader, Store
from test_supervisor_cli import ROOT, command, git, rows

SECRET = "sk-bundle-secret-123"
TAG = "nov21"


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """A real headless night on the fake research repository: two baselines, the offline
    mutator's proposals, at least one keep; a provider key in its environment."""
    base = tmp_path_factory.mktemp("night")
    repo = make_repo(base / "repo")
    result = subprocess.run(command(repo, "--max-experiments", "10", "--sandbox", "none", tag=TAG), cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": SECRET})
    assert result.returncode == 0, result.stderr[-3000:]
    return base, repo, base / "log.duckdb"


@pytest.fixture(scope="module")
def bundled(night):
    base, repo, db = night
    out = base / "bundle"
    rc, err = report(db, out)
    assert rc == 0, err
    return out, err


def report(db, out, *extra):
    """The CLI in this process; (exit code, stderr). capsys is per test: capture by hand."""
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["report", "--db", str(db), "--bundle", str(out), *extra])
    return rc, err.getvalue()


def start_and_frontier(db):
    start = rows(db, "SELECT \"commit\" FROM experiments WHERE kind = 'baseline' ORDER BY id LIMIT 1")[0][0]
    moves = rows(db, "SELECT detail->>'commit' FROM events WHERE kind = 'frontier' ORDER BY id")
    return start, moves[-1][0] if moves else start


def test_every_file_is_written_and_named_on_stderr_and_results_tsv_is_upstreams(night, bundled):
    _, _, db = night
    out, err = bundled
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert err.splitlines() == [f"wrote {out / name}" for name in FILES]
    with Reader(db) as reader:
        assert (out / "results.tsv").read_text() == results_tsv(reader.experiments(None, TAG), reader.metric())
    assert (out / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kept_tsv_lists_exactly_the_kept_changes_with_the_rule_that_kept_them(night, bundled):
    _, _, db = night
    out, _ = bundled
    header, *lines = (out / "kept.tsv").read_text().splitlines()
    assert header.split("\t") == list(KEPT_COLUMNS)
    table = [dict(zip(KEPT_COLUMNS, line.split("\t"))) for line in lines]
    kept = rows(db, "SELECT id, \"commit\", val_bpb FROM experiments WHERE decision = 'keep' "
                    "AND kind NOT IN ('baseline', 'claim') ORDER BY id")
    assert kept, "the night kept no change: the fake trainer's VALUE move should win"
    assert [(int(r["id"]), r["commit"], float(r["value"])) for r in table] == [(i, c[:7], v) for i, c, v in kept]
    judged = dict(rows(db, "SELECT experiment_id, detail FROM events WHERE kind = 'decision:keep'"))
    for r in table:
        detail = json.loads(judged[int(r["id"])])
        assert r["rule"] == detail["rule"] and float(r["gain"]) == pytest.approx(detail["delta"], abs=1e-6)
        assert r["source"] == "auto"
    assert "VALUE" in (out / "kept.tsv").read_text()


def test_the_readme_command_in_a_fresh_clone_rebuilds_the_frontier_tree_and_trains_it(night, bundled, tmp_path):
    _, repo, db = night
    out, _ = bundled
    start, frontier = start_and_frontier(db)
    assert frontier == git(repo, "rev-parse", f"autoresearch/{TAG}") != start
    readme = (out / "README.md").read_text()
    (line,) = [x for x in readme.splitlines() if x.startswith("git checkout --detach")]
    assert line.startswith(f"git checkout --detach {start} && git apply --index frontier.patch && ")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    shutil.copy(out / "frontier.patch", clone)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    ran = subprocess.run(["bash", "-c", line], cwd=clone, capture_output=True, text=True, timeout=60, env=env)
    assert ran.returncode == 0, ran.stderr
    tree = git(repo, "rev-parse", f"{frontier}^{{tree}}")
    assert git(clone, "write-tree") == tree and f"`{tree}`" in readme
    value = float(re.search(r"^val_bpb:\s+(\S+)", ran.stdout, re.M).group(1))
    assert (value,) in rows(db, f"SELECT val_bpb FROM experiments WHERE \"commit\" = '{frontier}'")


def test_no_file_holds_a_secret_or_a_path_of_this_machine(night, bundled):
    base, _, _ = night
    out, _ = bundled
    for path in out.iterdir():
        data = path.read_bytes()
        assert SECRET.encode() not in data and str(base).encode() not in data, path.name
    environment = json.loads((out / "environment.json").read_text())
    (session,) = environment["sessions"]
    assert session["target"]["command"] == "python train.py" and session["agent"] == "offline"
    assert environment["trainer"]["frontier_num_params_M"] == 1.0


def test_secret_keys_and_paths_in_the_sessions_settings_are_left_out(tmp_path):
    repo = make_repo(tmp_path / "repo")
    start = git(repo, "rev-parse", "HEAD")
    config = {"target": {"command": f"python {repo}/train.py --data ~/data"}, "api_key": SECRET,
              "environment": {"python": "3.12.4", "packages": {"tokenizers": "0.21.0"}, "HF_TOKEN": SECRET,
                              "driverPassword": SECRET, "cuda_home": "/usr/local/cuda"}}
    db = logged(tmp_path, repo, [Experiment("r", 0, "baseline", Status.OK, kind=Kind.BASELINE, commit=start,
                                            parent_commit=start, decision=Decision.KEEP,
                                            summary={"val_bpb": 1.0})], config=config)
    rc, err = report(db, tmp_path / "out")
    assert rc == 0, err
    environment = json.loads((tmp_path / "out" / "environment.json").read_text())["sessions"][0]
    assert environment["environment"] == {"python": "3.12.4", "packages": {"tokenizers": "0.21.0"},
                                          "cuda_home": "<path>"}
    assert "api_key" not in environment
    assert environment["target"]["command"] == "python <repo>/train.py --data <path>"
    for path in (tmp_path / "out").iterdir():
        assert SECRET.encode() not in path.read_bytes() and str(tmp_path).encode() not in path.read_bytes()


def test_a_folder_that_is_not_empty_is_refused_in_one_line_and_left_as_it_was(night):
    base, _, db = night
    out = base / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    rc, err = report(db, out)
    assert rc == 2 and len(err.splitlines()) == 1 and "not an empty folder" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    assert not [p for p in base.iterdir() if p.name.startswith(".taken")]


def test_a_claim_in_the_log_is_in_claim_json_and_its_line_in_the_readme(night, tmp_path):
    _, repo, db = night
    copy = tmp_path / "log.duckdb"
    shutil.copy(db, copy)
    start, frontier = start_and_frontier(db)
    metric = Metric()
    before, after = [1.0, 1.01, 0.99], [0.40, 0.41, 0.39]
    figures = compare(before, after, metric)
    claim = Claim("val_bpb", start, frontier, "cpu", (21, 23, 25), (22, 24, 26), tuple(before), tuple(after),
                  figures.gain, figures.ci_low, figures.ci_high, figures.p_value, figures.dof)
    run_id = rows(db, "SELECT id FROM runs")[0][0]
    with Store(copy) as store:
        store.add_event(Event(datetime.now(timezone.utc), run_id, "claim", detail=claim.as_dict()))
    rc, err = report(copy, tmp_path / "out")
    assert rc == 0, err
    record = json.loads((tmp_path / "out" / "claim.json").read_text())
    assert Claim.from_dict(record) == claim and record["confirmed"] is True
    assert claim.text() in (tmp_path / "out" / "README.md").read_text()


def test_bad_input_is_one_sentence_exit_2_and_no_folder(night, tmp_path):
    _, _, db = night
    other = make_repo(tmp_path / "other")
    empty = logged(tmp_path, other, [])
    for log, extra, said in ((db, ["--repo", str(other)], "lacks commit"),
                             (db, ["--repo", str(tmp_path / "gone")], "does not exist"),
                             (empty, [], "no experiments")):
        rc, err = report(log, tmp_path / "out", *extra)
        assert rc == 2 and len(err.splitlines()) == 1 and said in err, err
        assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_an_undone_keep_leaves_the_frontier_at_the_start_and_no_claim_is_not_confirmed(tmp_path):
    repo = make_repo(tmp_path / "repo")
    start = git(repo, "rev-parse", "HEAD")
    set_constants(repo / "train.py", VALUE=0.5)
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "VALUE 0.5")
    kept = git(repo, "rev-parse", "HEAD")
    night = [Experiment("r", 0, "baseline", Status.OK, kind=Kind.BASELINE, commit=start, parent_commit=start,
                        decision=Decision.KEEP, summary={"val_bpb": 1.0}),
             Experiment("r", 0, "VALUE 1.0 -> 0.5", Status.OK, commit=kept, parent_commit=start,
                        decision=Decision.DISCARD, summary={"val_bpb": 0.5})]
    moves = [{"commit": kept, "previous": start}, {"commit": start, "previous": kept, "undo": True}]
    rc, err = report(logged(tmp_path, repo, night, moves), tmp_path / "out")
    assert rc == 0, err
    readme = (tmp_path / "out" / "README.md").read_text()
    assert (tmp_path / "out" / "frontier.patch").read_bytes() == b""
    assert f"git checkout --detach {start} && python train.py" in readme and "git apply" not in readme
    assert (tmp_path / "out" / "kept.tsv").read_text().splitlines() == ["\t".join(KEPT_COLUMNS)]
    record = json.loads((tmp_path / "out" / "claim.json").read_text())  # the log has no claim
    assert record["confirmed"] is False and f"**not confirmed: {record['why']}**" in readme


def test_git_branch_commits_the_bundle_on_claims_tag_and_moves_nothing_else(night, tmp_path):
    _, repo, db = night
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    refs, head, status = git(clone, "show-ref"), git(clone, "rev-parse", "HEAD"), git(clone, "status", "--porcelain")
    out = tmp_path / "out"
    rc, err = report(db, out, "--repo", str(clone), "--git-branch")
    assert rc == 0, err
    _, frontier = start_and_frontier(db)
    tip = git(clone, "rev-parse", f"claims/{TAG}")
    assert f"committed the bundle as {tip[:12]} on claims/{TAG}" in err
    assert git(clone, "rev-parse", f"{tip}^") == frontier
    assert git(clone, "ls-tree", "--name-only", f"{tip}:claims/{TAG}").splitlines() == sorted(FILES)
    assert git(clone, "show", f"{tip}:claims/{TAG}/README.md") == (out / "README.md").read_text().strip()
    assert git(clone, "diff", "--stat", frontier, tip, "--", ".", f":!claims/{TAG}") == ""
    after = git(clone, "show-ref").replace(f"{tip} refs/heads/claims/{TAG}\n", "")
    assert after == refs and git(clone, "rev-parse", "HEAD") == head
    assert git(clone, "status", "--porcelain") == status


def logged(tmp_path, repo, experiments, moves=(), config=None) -> Path:
    """A log written through the store, as the engine writes one: a session, its experiments,
    its frontier moves."""
    db = tmp_path / f"log-{len(list(tmp_path.glob('log-*')))}.duckdb"
    with Store(db) as store:
        store.start_run(Run("r", TAG, str(repo), datetime(2026, 11, 21, tzinfo=timezone.utc),
                            config=config or {"target": {"command": "python train.py"}}))
        for exp in experiments:
            store.add_experiment(exp)
        for detail in moves:
            store.add_event(Event(datetime.now(timezone.utc), "r", "frontier", experiment_id=2, detail=detail))
    return db
