"""Constraints ([target] constraints, --max-vram-mb, --max-params-m, --constraint): a real engine
on a real repository whose fake trainer reports the VRAM and the artifact size its constants
say; a run past a ceiling is discarded with the rule `constraint`, whatever its val_bpb, and
the proposers are told the limits (the brief, MCP research_status)."""

import json

import pytest

from agents import brief
from agents.brief import Detail
from external.view import LabView
from results.constraints import Constraint, parse
from results.metric import Metric
from results.records import Decision, Kind
from scheduler import config as cfg
from test_engine import ScriptedProposer, engine, quick_retries  # noqa: F401 - an autouse fixture
from test_supervisor_cli import command, start

MEASURED = '''
MEMORY = 1024.0
ARTIFACT = 1000
print(f"peak_vram_mb: {MEMORY}")
print(f"artifact_bytes: {ARTIFACT}")
'''
LIMITS = (Constraint("peak_vram_mb", 60000), Constraint("artifact_bytes", 16_000_000))


def test_a_run_past_a_constraint_is_discarded_however_good_its_value(tmp_path):
    proposer = ScriptedProposer([{"VALUE": 0.5, "MEMORY": 90000.0}, {"VALUE": 0.6, "ARTIFACT": 20_000_000},
                                 {"VALUE": 0.9}])
    target = cfg.Target(editable=("train.py",), command="python train.py", constraints=LIMITS)
    sup, store, _ = engine(tmp_path, proposer, trainer_tail=MEASURED, target=target, max_experiments=5)
    assert sup.run() == 0
    proposals = {e.description: e for e in store.experiments() if e.kind is Kind.PROPOSAL}
    memory, artifact, fine = (proposals["VALUE=0.5, MEMORY=90000.0"], proposals["VALUE=0.6, ARTIFACT=20000000"],
                              proposals["VALUE=0.9"])
    assert memory.decision is Decision.DISCARD
    assert memory.decision_reason == "constraint: peak_vram_mb 90,000 is past the limit 60,000"
    assert artifact.decision is Decision.DISCARD
    assert artifact.decision_reason == "constraint: artifact_bytes 20,000,000 is past the limit 16,000,000"
    assert fine.decision is Decision.KEEP  # within both limits, and better: the limits judge nothing else
    events = store.con.execute("SELECT experiment_id, detail FROM events WHERE kind = 'decision:discard'").fetchall()
    rules = {eid: json.loads(detail).get("rule") for eid, detail in events}
    assert rules[memory.id] == rules[artifact.id] == "constraint"
    # every proposal was drafted knowing the limits, and the brief says them
    assert all(r.constraints == LIMITS for r in proposer.requests)
    text = brief.build(proposer.requests[0], "the memory", [], "VALUE = 1.0\n", Detail.FULL).text
    assert ("Constraints: a run past any of these is discarded, whatever its val_bpb: peak_vram_mb <= 60,000; "
            "artifact_bytes <= 16,000,000.") in text


def test_mcp_research_status_names_the_constraints():
    view = LabView("t", [(0, "cpu")], "a" * 40, Metric(), budget_s=300, max_experiments=None, max_cost=None,
                   constraints=LIMITS)
    assert view.status({})["constraints"] == {"peak_vram_mb": 60000, "artifact_bytes": 16_000_000}


def test_constraints_come_from_the_file_and_the_flags_and_bad_ones_are_one_sentence(tmp_path):
    toml = tmp_path / "a.toml"
    toml.write_text("[target]\nconstraints = { peak_vram_mb = 60000, num_params_M = 100 }\n")
    config = cfg.build(cfg.load_file(toml), {"target": {"constraints": {"peak_vram_mb": 40000.0}}})
    assert config.target.constraints == (Constraint("peak_vram_mb", 40000.0), Constraint("num_params_M", 100))
    assert parse("artifact_bytes<=16e6") == Constraint("artifact_bytes", 16e6)
    for bad in ("artifact_bytes", "bytes<=lots", "<=5"):
        with pytest.raises(ValueError):
            parse(bad)
    toml.write_text("[target]\nconstraints = { peak_vram_mb = \"big\" }\n")
    with pytest.raises(cfg.ConfigError, match="the limit on peak_vram_mb must be a number"):
        cfg.build(cfg.load_file(toml), {})
    proc = start(command(tmp_path, "--constraint", "vram=lots", db=tmp_path / "x.duckdb"))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.strip().splitlines()[-1].endswith(
        "--constraint takes KEY<=NUMBER (peak_vram_mb<=60000, say), not 'vram=lots'."), err
    assert not (tmp_path / "x.duckdb").exists()
