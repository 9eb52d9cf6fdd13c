"""The engine's contracts with what it does not control: what a trainer prints, which metric a
target is judged by and which way is better, what reaches the trainer, and what may be sent to
the engine. Real git repositories, real child processes, a real DuckDB file."""

import queue
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from results import report
from results.metric import Metric
from results.records import Decision, Kind, Status
from results.store import Reader
from scheduler.engine import events
from autoresearch_tui import headless
from scheduler.config import Target
from scheduler.engine.inbox import Inbox, UnknownMessage
from scheduler.runs.sandbox import SandboxChoice
from tui.header import header_text
from tui.link import LaneInfo
from tui.state import ResearchView

from fake_research import ScriptedProposer
from test_engine import close_stores, engine, git, quick_retries  # noqa: F401 - fixtures used by name

ROOT = Path(__file__).resolve().parent.parent


def test_nothing_a_trainer_prints_changes_an_experiments_links_kind_status_or_dedup_key(tmp_path):
    proposer = ScriptedProposer([{"VALUE": 0.9, "description": "first"}, {"BONUS": 0.05, "description": "second"}])
    tail = ('print("change: the same key for every run")\nprint("kind: baseline")\nprint("status: crash")\n'
            'print("confirms: 1")\nprint("rerun_of: 2")\nprint("verifies: 1")\nprint("reference_for: 1")\n')
    sup, store, _ = engine(tmp_path, proposer, max_experiments=4, trainer_tail=tail)
    assert sup.run() == 0
    rows = {e.description: e for e in store.experiments()}
    first, second = rows["first"], rows["second"]
    for e in (first, second):
        assert e.kind is Kind.PROPOSAL and e.status is Status.OK
        assert e.change == e.description  # the proposer's key, not the trainer's
        assert (e.confirms, e.rerun_of, e.verifies, e.reference_for) == (None, None, None, None)
        assert e.extra["change"] == "the same key for every run" and e.extra["kind"] == "baseline"
        assert e.extra["confirms"] == "1"  # stored, as the trainer's own value
    assert second.decision is not None  # it ran and was judged: not refused as "the same change"
    baselines = [e for e in store.experiments() if e.kind is Kind.BASELINE]
    assert len(baselines) == 2 and all(e.status is Status.OK for e in baselines)
    store.close()
    with Reader(store.path) as reader:  # as `report` reads it, after the session
        again = {e.description: e for e in reader.experiments()}
    assert again["first"].change == "first" and again["first"].extra["change"] == "the same key for every run"


@dataclass(frozen=True)
class _NotAMessage:
    lane: int


def test_a_message_the_engine_does_not_know_is_refused_loudly(tmp_path):
    with pytest.raises(UnknownMessage, match="not \\('rebased'"):
        Inbox().put(("rebased", 0, None))
    sup, store, _ = engine(tmp_path, ScriptedProposer([]), max_experiments=2)
    with pytest.raises(UnknownMessage):
        sup.inbox.put(_NotAMessage(0))
    sup.inbox._queue.put(_NotAMessage(0))  # smuggled past put(): the loop itself refuses it
    with pytest.raises(UnknownMessage, match="no handler"):
        sup.run()
    with pytest.raises(queue.Empty):
        sup.inbox.get(timeout=0)


def test_a_fractional_budget_reaches_the_trainer_as_it_was_given(tmp_path):
    tail = 'print(f"budget_seen: {os.environ[\'AUTORESEARCH_TIME_BUDGET\']}")\n'
    sup, store, _ = engine(tmp_path, ScriptedProposer([]), max_experiments=2, budget=0.5, trainer_tail=tail)
    sup.run()
    seen = [e.extra.get("budget_seen") for e in store.experiments() if e.status is Status.OK]
    assert seen and set(seen) == {"0.5"}


def test_the_harness_reads_a_fractional_budget_whole(monkeypatch):
    import prepare

    for given, read in (("0.5", 0.5), ("20.9", 20.9), ("300", 300.0)):
        monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", given)
        assert prepare.time_budget(prepare.PROFILES["tiny"]) == read
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "nan")
    with pytest.raises(SystemExit):
        prepare.time_budget(prepare.PROFILES["tiny"])


# -- a metric other than val_bpb, where higher is better ----------------------------------------------

ACCURACY = Target(editable=("train.py",), command="python train.py", metric="accuracy", direction="higher")


def test_a_higher_is_better_metric_is_ranked_the_same_way_by_engine_tui_headless_and_report(tmp_path):
    # accuracy rises with VALUE while val_bpb rises too: judged by val_bpb, "up" would lose.
    steps = [{"VALUE": 1.3, "description": "up"}, {"VALUE": 0.7, "description": "down"}]
    received = []
    sup, store, _ = engine(tmp_path, ScriptedProposer(steps), max_experiments=4, target=ACCURACY,
                           sink=received.append, trainer_tail='print(f"accuracy: {VALUE - BONUS + offset:.6f}")\n')
    assert sup.run() == 0
    rows = {e.description: e for e in store.experiments()}
    up, down = rows["up"], rows["down"]
    # the engine
    assert up.decision is Decision.KEEP and down.decision is Decision.DISCARD
    assert git(sup.ws.root, "rev-parse", "autoresearch/t") == up.commit
    # the headless log
    metric = sup.state.metric
    finished = next(ev for ev in received if isinstance(ev, events.RunFinished) and ev.experiment.id == up.id)
    assert headless.describe(finished, metric).endswith(": accuracy 1.300000")
    # the TUI: header and table
    view = ResearchView("t", [LaneInfo(lane.index, None, "cpu") for lane in sup.lanes], metric=metric)
    for event in received:
        view.apply(event)
    assert view.best().id == up.id
    header = header_text(view, 0.0, 200).plain
    assert "best accuracy 1.300000 +0.3000 vs baseline" in header
    ranked = [e.description for e in view.table(sort="value") if e.kind is Kind.PROPOSAL]
    assert ranked == ["up", "down"]
    # report: the leaderboard, the TSV and the plot, from the file
    board = store.leaderboard()
    assert [r.experiment_id for r in board][:1] == [up.id]
    assert board[0].value == pytest.approx(1.3)
    # the TUI and report show the same delta for every experiment
    for row in board:
        assert row.delta == pytest.approx(view.delta(view.experiments[row.experiment_id]), abs=1e-12) \
            if row.delta is not None else view.delta(view.experiments[row.experiment_id]) is None
    tsv = report.results_tsv(store.experiments(), metric).splitlines()
    assert tsv[0].split("\t")[:2] == ["commit", "accuracy"]
    assert f"{up.commit[:7]}\t1.300000\t1.0\tkeep\tup" in tsv
    store.close()
    out = subprocess.run([sys.executable, "-m", "autoresearch_tui.cli", "report", "--db", str(tmp_path / "log.duckdb"),
                          "--plot", str(tmp_path / "p.png")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "accuracy (higher is better)" in out.stdout
    table = [line.split() for line in out.stdout.splitlines()[3:]]
    assert table[0][1] == str(up.id) and table[0][2] == "1.300000" and table[0][3] == "+0.300000"
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_the_running_best_follows_the_metrics_direction():
    from results.metric import running_best
    from results.records import Experiment

    def kept(eid, value):
        return Experiment(run_id="r", lane=0, description="", id=eid, status=Status.OK, decision=Decision.KEEP,
                          extra={"accuracy": str(value)})
    runs = [kept(1, 0.5), kept(2, 0.7), kept(3, 0.6)]
    assert running_best(runs, Metric("accuracy", "higher")) == [0.5, 0.7, 0.7]
    assert running_best(runs, Metric("accuracy", "lower")) == [0.5, 0.5, 0.5]


def test_a_persons_keep_and_discard_record_who_gave_them_like_every_override(tmp_path):
    import duckdb

    from scheduler.engine import control

    holder = {}

    def override(event):
        if isinstance(event, events.Decided) and event.source.value == "auto" and event.decision.value == "discard":
            exp = holder["sup"].state.experiments[event.experiment_id]
            if exp.description == "worse":
                holder["sup"].submit(control.Keep(exp.id, by="ada via tui"))
        if isinstance(event, events.Decided) and event.source.value == "user" and event.decision.value == "keep":
            holder["sup"].submit(control.Discard(event.experiment_id, by="bo via tui"))

    steps = [{"BONUS": -0.2, "description": "worse"}, {"MODE": "slow", "DURATION": 2.0, "description": "later"}]
    sup, store, _ = engine(tmp_path, ScriptedProposer(steps), max_experiments=4, sink=override, timeout_seconds=3.0)
    holder["sup"] = sup
    assert sup.run() == 0
    store.close()
    con = duckdb.connect(str(tmp_path / "log.duckdb"), read_only=True)
    rows = con.execute("SELECT kind, source, detail->>'by' FROM events WHERE kind LIKE 'decision:%' AND source = 'user' "
                       "ORDER BY t").fetchall()
    assert rows == [("decision:keep", "user", "ada via tui"), ("decision:discard", "user", "bo via tui")]
    moves = con.execute("SELECT detail->>'by', detail->>'undo' FROM events WHERE kind = 'frontier' AND source = 'user' "
                        "ORDER BY t").fetchall()  # in the order they happened (some rows wait for a launch)
    assert moves == [("ada via tui", None), ("bo via tui", "true")]


def test_the_header_says_whether_training_runs_are_sandboxed():
    lanes = [LaneInfo(0, None, "cpu")]
    confined = header_text(ResearchView("t", lanes, sandbox=SandboxChoice(object(), "bubblewrap 0.8.0")), 0.0, 200)
    assert "sandboxed" in confined.plain and "not sandboxed" not in confined.plain
    open_ = header_text(ResearchView("t", lanes, sandbox=SandboxChoice(None, "bubblewrap is not installed")), 0.0, 200)
    assert "not sandboxed" in open_.plain
    at = open_.plain.index("not sandboxed")
    assert any("yellow" in str(span.style) for span in open_.spans if span.start <= at < span.end)
    # a view nobody told (a test's, a replay's) claims neither
    assert "sandboxed" not in header_text(ResearchView("t", lanes), 0.0, 200).plain


def test_the_header_shows_where_external_agents_connect_and_never_a_token():
    lanes = [LaneInfo(0, None, "cpu")]
    text = header_text(ResearchView("t", lanes, agents_url="http://127.0.0.1:8765/mcp"), 0.0, 200).plain
    assert "MCP 127.0.0.1:8765" in text
    assert "MCP" not in header_text(ResearchView("t", lanes), 0.0, 200).plain
