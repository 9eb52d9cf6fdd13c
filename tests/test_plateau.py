"""The plateau policy (scheduler/engine/plateau.py): the count itself, the offline mutator's
wider steps, and a real headless night on a target whose changes stop winning after one keep:
the WARNING comes first, the briefs drafted after it say the line has plateaued, the night ends
in order with the plateau reason after exactly twice --plateau judged misses, and a receiver of
--notify hears of the keep, both steps and the end."""

import json
import re
import threading

from agents.mutator import OfflineMutator
from agents.mutator.knobs import find_knobs
from agents.mutator.steps import changes_for
from agents.proposer import PlateauNote
from fake_research import make_repo
from llm_servers import OpenAIServer, Text, ToolCalls
from results.records import Decision, Experiment, Kind, Status
from scheduler.engine.noise import Rule
from scheduler.engine.plateau import Plateau, Step
from test_agents_llm import _tool_names, _tool_results
from test_evidence import ROW, _text
from test_mcp_server import rows
from test_mutator import request, upstream_copy
from test_notify import KEY, Receiver
from test_supervisor_cli import command, start


def judged(n, kind=Kind.PROPOSAL, decision=Decision.DISCARD, status=Status.OK):
    return Experiment(id=n, run_id="r", lane=0, kind=kind, status=status, description=f"#{n}", decision=decision)


def test_the_count_warns_then_ends_and_a_keep_starts_it_again():
    plateau = Plateau(3)
    assert plateau.judged(judged(1, Kind.BASELINE, Decision.KEEP), None) is None and plateau.since == 1
    steps = [plateau.judged(judged(n), Rule.WORSE) for n in range(2, 5)]
    assert steps == [None, None, Step.WARN] and plateau.told
    assert plateau.judged(judged(5, decision=Decision.KEEP), Rule.WORSE) is None
    assert (plateau.misses, plateau.since, plateau.told) == (0, 5, False)  # the keep: counted from #5 again
    crash = judged(6, status=Status.CRASH)
    steps = [plateau.judged(e, r) for e, r in [(crash, None), (judged(7), Rule.REMEASURE)]
             + [(judged(n), Rule.WORSE) for n in range(8, 13)]]
    # the crash counts, the winner re-measured on a new frontier does not (its verification will)
    assert steps == [None, None, None, Step.WARN, None, None, Step.END]
    assert plateau.ended and plateau.reason() == "plateau: 6 experiments without a keep since #5"
    assert plateau.judged(judged(13), Rule.WORSE) is None  # ended once


def test_baselines_confirmations_and_undecided_runs_are_not_counted_and_zero_is_off():
    plateau = Plateau(1)
    for exp in (judged(1, Kind.BASELINE), judged(2, Kind.CONFIRM), judged(3, decision=None)):
        assert plateau.judged(exp, Rule.WORSE) is None
    assert plateau.misses == 0 and plateau.since == 1
    off = Plateau(0)
    assert all(off.judged(judged(n), Rule.WORSE) is None for n in range(1, 50)) and not off.told


def test_on_a_plateau_the_mutator_tries_bolder_steps_first(tmp_path):
    worktree = upstream_copy(tmp_path)
    knobs = find_knobs((worktree / "train.py").read_text())
    calm = {c.how for c in changes_for(knobs["MATRIX_LR"])}
    wide = [c.how for c in changes_for(knobs["MATRIX_LR"], wide=True)]
    assert wide[:2] == ["x0.25", "x4"] and calm == set(wide[2:])
    assert [c.how for c in changes_for(knobs["DEPTH"], wide=True)][:4] == ["-4", "-3", "+3", "+4"]
    assert [c.how for c in changes_for(knobs["DEVICE_BATCH_SIZE"], wide=True)][:2] == ["x4", "/4"]
    note = PlateauNote(misses=30, since=12)
    hows = set()
    for attempt in range(6):
        proposal = OfflineMutator(include=["MATRIX_LR", "WARMDOWN_RATIO"]).propose(
            request(worktree, "train.py", attempt=attempt, plateau=note))
        hows.add(proposal.description.split(" (")[-1].rstrip(")"))
        (worktree / "train.py").write_text(upstream_copy(tmp_path, f"fresh{attempt}").joinpath("train.py").read_text())
    assert hows <= {"x0.25", "x4", "gap to 1 /0.25", "gap to 1 /4"}, hows


class Unlucky:
    """A scripted model: its first proposal lowers VALUE (a keep), every later one sets DURATION,
    which val_bpb ignores. It keeps each proposal's brief with the history rows it showed."""

    def __init__(self):
        self.lock = threading.Lock()
        self.n = 0
        self.briefs: list[str] = []

    def __call__(self, body):
        tools = _tool_names(body)
        if not tools:
            return Text("Only VALUE moves val_bpb.")
        if "assign" in tools:
            return ToolCalls([("assign", {"directions": [{"lane": 0, "direction": "the schedule"}],
                                          "rationale": "the only lane"})])
        if _tool_results(body) == 0:
            with self.lock:
                self.n += 1
                self.briefs.append(_text(body["messages"][1]))
                n = self.n
            change = {"VALUE": "0.5"} if n == 1 else {"DURATION": f"{0.3 + 0.01 * n:.2f}"}
            return ToolCalls([("set_hyperparameters", {"values": change})])
        return ToolCalls([("submit", {"description": "as set", "hypothesis": "it trains better"})])


def test_a_night_whose_changes_stop_winning_ends_on_its_plateau_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    repo = make_repo(tmp_path / "repo")
    db = tmp_path / "log.duckdb"
    model = Unlucky()
    with OpenAIServer(model) as server, Receiver() as receiver:
        notify = ["--notify", f"{receiver.url}/json", "--notify", f"slack:{receiver.url}/slack",
                  "--notify", f"ntfy:{receiver.url}/ntfy"]
        proc = start(command(repo, "--gpus", "cpu:1", "--agent", "openai:gpt-4.1-mini", "--base-url",
                             server.base_url, "--plateau", "2", "--sandbox", "none", *notify, db=db))
        out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    ((kept,),) = rows(db, "SELECT id FROM experiments WHERE kind = 'proposal' AND decision = 'keep'")
    seen = [json.loads(line) for line in out.splitlines()]
    said = [e["message"] for e in seen if e.get("event") == "notice" and e.get("topic") == "plateau"
            and e["level"] == "warning"]
    assert len(said) == 2, said
    assert said[0].startswith(f"plateau: 2 experiments without a keep since #{kept};")
    assert said[1].startswith(f"plateau: 4 experiments without a keep since #{kept}:")
    (finished,) = [e for e in seen if e.get("event") == "finished"]
    reason = f"plateau: 4 experiments without a keep since #{kept}"
    assert finished["reason"] == reason and f"finished ({reason})" in err
    # exactly the keep and twice --plateau misses were judged; nothing after the end was run
    assert rows(db, "SELECT count(*) FROM experiments WHERE kind = 'proposal' AND decision IS NOT NULL")[0][0] == 5
    steps = rows(db, "SELECT detail FROM events WHERE kind = 'plateau' ORDER BY t")
    assert [json.loads(d)["step"] for (d,) in steps] == ["warning", "end"]
    # A brief is drafted with what was decided before it: one whose history shows the two
    # discards that made the warning carries the plateau text, and no earlier one does.
    for brief in model.briefs:
        discards = sum(1 for *_, status, decision in ROW.findall(brief)
                       if status == "ok" and decision == "discard")
        assert ("The line has plateaued: " in brief) == (discards >= 2), brief
    assert any("The line has plateaued: " in b for b in model.briefs)
    assert any("The line has plateaued: " not in b for b in model.briefs)
    text = next(b for b in model.briefs if "The line has plateaued: " in b)
    assert re.search(rf"plateaued: [23] experiments in a row without a keep since #{kept}\. ", text)
    # and whoever is away heard of the keep, both plateau steps and the end, in every style
    bodies = [p.json for p in receiver.at("/json")]
    assert [b["event"] for b in bodies] == ["keep", "plateau", "plateau", "finished"]
    assert bodies[0]["experiment_id"] == kept and bodies[-1]["reason"] == reason
    assert [p.json["text"] for p in receiver.at("/slack")] == [b["text"] for b in bodies]
    assert [p.body.decode() for p in receiver.at("/ntfy")] == [b["text"] for b in bodies]
    assert not any(KEY.encode() in p.body for p in receiver.posts)
