"""The claim (scheduler/engine/confirmation.py, results/claim.py): a real engine on a real
repository, one CPU lane, and a fake trainer whose run-to-run noise the test writes in advance,
so the truth is known: a frontier truly better by 0.05 is confirmed with the right sign and an
interval that covers 0.05; a frontier kept on one lucky run fails its claim and says so; a gain
that only the judged split sees is a held-out WARNING; the claim's runs are interleaved, never
judged, and recorded with links; `confirm` measures it on demand, as does the TUI's c."""

import json
import random
import sys

import pytest

from results.claim import Claim, compare, replicas, t_quantile, t_sf
from results.metric import Direction, Metric
from results.records import Kind, Status
from scheduler.engine import events
from scheduler.gpus import Gpu
from fake_research import make_repo
from test_engine import ScriptedProposer, engine, quick_retries  # noqa: F401 - an autouse fixture

# The fake trainer prints this too: heldout_val_bpb from its own expression, per test.
HELDOUT = 'print(f"heldout_val_bpb: {{{}:.6f}}")\n'


def offsets(tmp_path, monkeypatch, values):
    path = tmp_path / "offsets"
    path.write_text("\n".join(f"{v:.6f}" for v in values))
    monkeypatch.setenv("AUTORESEARCH_FAKE_OFFSETS", str(path))


def night(tmp_path, steps, heldout, **settings):
    sup, store, received = engine(tmp_path, ScriptedProposer(steps), gpus=[Gpu(0, None, None, "cpu")],
                                  trainer_tail=HELDOUT.format(heldout), baseline_runs=2,
                                  max_experiments=3, **{"confirm": True, "confirm_runs": 4, **settings})
    code = sup.run()
    claims = [e.claim for e in received if isinstance(e, events.Claimed)]
    return code, store, received, claims


def test_a_frontier_truly_better_is_confirmed_with_an_interval_that_covers_the_truth(tmp_path, monkeypatch):
    rng = random.Random(5)
    # two baselines, the proposal (VALUE 0.95: truly 0.05 better), then 4 + 4 claim runs
    offsets(tmp_path, monkeypatch, [0.001, -0.001, 0.0] + [rng.gauss(0, 0.004) for _ in range(8)])
    code, store, received, (claim,) = night(tmp_path, [{"VALUE": 0.95}], "VALUE - BONUS + offset")
    assert code == 0
    assert claim.holds and claim.gain > 0 and claim.ci_low <= 0.05 <= claim.ci_high, claim
    assert claim.text().startswith(f"improved val_bpb by {claim.gain:.4f} ± ")
    assert "(95% CI; 4 vs 4 runs, p = " in claim.text() or "p < 0.0001" in claim.text()
    assert claim.heldout is not None and claim.heldout["warning"] is None  # the held-out split agrees
    # the claim's runs: kind claim, never judged, start and frontier alternating, linked from the claim
    runs = [e for e in store.experiments() if e.kind is Kind.CLAIM]
    assert len(runs) == 8 and all(e.decision is None and e.status is Status.OK for e in runs)
    assert [e.commit for e in runs] == [claim.start, claim.frontier] * 4
    assert sorted(claim.start_runs + claim.frontier_runs) == [e.id for e in runs]
    (stored,) = store.claims()
    assert stored == claim
    said = [e.message for e in received if isinstance(e, events.Notice)]
    assert f"claim: {claim.text()}" in said
    (finished,) = [e for e in received if isinstance(e, events.Finished)]
    assert finished.detail["claim"] == claim.text() and finished.reason == "3 experiments run"


def test_a_frontier_kept_on_one_lucky_run_fails_its_claim_and_says_so(tmp_path, monkeypatch):
    # The change does nothing (DURATION); its one run was lucky by 0.05, past the floor of a
    # noiseless start. Side by side, the start and the frontier measure the same.
    offsets(tmp_path, monkeypatch, [0.0, 0.0, -0.05, 0.002, -0.001, -0.002, 0.001, 0.0, 0.001, -0.001, 0.0])
    code, store, received, (claim,) = night(tmp_path, [{"DURATION": 0.31}], "VALUE - BONUS + offset")
    assert code == 0
    kept = [e for e in store.experiments() if e.kind is Kind.PROPOSAL]
    assert kept[0].decision.value == "keep"  # the night believed it
    assert not claim.holds and claim.ci_low < 0 < claim.ci_high
    assert claim.text().startswith("the gain did not hold: val_bpb ") and "not distinguishable from no change" in claim.text()
    warnings = [e.message for e in received if isinstance(e, events.Notice) and e.level is events.Level.WARNING]
    assert f"claim: {claim.text()}" in warnings


def test_a_gain_the_held_out_split_does_not_share_is_a_warning(tmp_path, monkeypatch):
    rng = random.Random(11)
    offsets(tmp_path, monkeypatch, [0.001, -0.001, 0.0] + [rng.gauss(0, 0.002) for _ in range(8)])
    # VALUE 0.95 lowers what the judge reads; the held-out split stays where the start was
    code, store, received, (claim,) = night(tmp_path, [{"VALUE": 0.95}], "1.0 + offset")
    assert claim.holds
    held = claim.heldout
    assert held["gain"] == pytest.approx(0.0, abs=0.01) and held["gap"] > 0.03 and held["warning"]
    warnings = [e.message for e in received if isinstance(e, events.Notice) and e.level is events.Level.WARNING]
    assert any(m.startswith("the gain on the held-out split (") and "may be fitting the validation shard" in m
               for m in warnings)


def test_no_claim_when_the_frontier_never_moved_and_none_with_no_confirm(tmp_path, monkeypatch):
    code, store, received, claims = night(tmp_path, [{"VALUE": 1.5}], "VALUE")
    assert code == 0 and claims == [] and not [e for e in store.experiments() if e.kind is Kind.CLAIM]
    assert "no claim to measure: the frontier never moved from the starting point" in [
        e.message for e in received if isinstance(e, events.Notice)]
    code, store, received, claims = night(tmp_path / "off", [{"VALUE": 0.5}], "VALUE", confirm=False)
    assert code == 0 and claims == []


def test_welch_against_known_values():
    assert t_quantile(0.975, 3) == pytest.approx(3.182446, abs=1e-6)
    assert t_quantile(0.975, 10) == pytest.approx(2.228139, abs=1e-6)
    assert t_sf(2.0, 5) == pytest.approx(0.0509697, abs=1e-7)
    # Welch on two samples, worked by hand: se = 0.004564, t = 4.38, Welch-Satterthwaite df = 4.41
    c = compare([1.0, 1.01, 0.99, 1.0], [0.98, 0.985, 0.975, 0.98], Metric())
    assert (round(c.gain, 4), round(c.dof, 2), round(c.p_value, 4)) == (0.02, 4.41, 0.0095)
    assert (round(c.ci_low, 4), round(c.ci_high, 4)) == (0.0078, 0.0322)
    higher = compare([1.0, 1.01, 0.99, 1.0], [0.98, 0.985, 0.975, 0.98], Metric("acc", Direction.HIGHER))
    assert higher.gain == pytest.approx(-0.02)  # a higher-is-better metric that went down: a loss
    assert compare([1.0], [0.9, 0.9], Metric()).gain is None
    exact = compare([1.0, 1.0], [0.9, 0.9], Metric())
    assert exact.ci_low == exact.ci_high == pytest.approx(0.1) and exact.p_value == 0.0
    # n = 2 (1.96 + 0.84)^2 sigma^2 / gain^2, between 3 and 8; 2 where every run measures the same
    assert replicas(0.002, 0.006) == 3 and replicas(0.002, 0.002) == 8 and replicas(0.002, 0.003) == 7
    assert replicas(0.002, 0.004) == 4 and replicas(0.0, 0.1) == 2 and replicas(0.01, None) == 8
    assert replicas(None, 0.01) == 8
    claim = Claim("val_bpb", "a", "b", "cpu", (1, 3), (2, 4), (1.0, 1.0), (0.9, 0.9), 0.1, 0.1, 0.1, 0.0, None)
    assert claim.text() == "improved val_bpb by 0.1000 (2 vs 2 runs, each side measuring the same every time: no noise)"
    assert Claim.from_dict(json.loads(json.dumps(claim.as_dict()))) == claim


def test_confirm_measures_the_claim_of_a_finished_line_on_demand(tmp_path):
    """`autoresearch-tui confirm`: a night that ended without its claim (--no-confirm) gets it
    later, on the same log: nothing but the claim's runs, exit 0. A line whose frontier never
    moved has nothing to claim: exit 1 and why."""
    from test_supervisor_cli import ENTRY, command, start

    def night_and_claim(seed: int):
        root = tmp_path / f"seed{seed}"
        repo, db = make_repo(root / "repo"), root / "log.duckdb"
        night = start(command(repo, "--max-experiments", "3", "--seed", str(seed), "--gpus", "cpu:1", db=db))
        out, err = night.communicate(timeout=120)
        assert night.returncode == 0, err[-2000:]
        kept = [json.loads(line) for line in out.splitlines() if '"event":"frontier"' in line]
        again = start([sys.executable, "-c", ENTRY, "confirm", "--no-ui", "--gpus", "cpu:1", "--repo", str(repo),
                       "--editable", "train.py", "--command", "python train.py", "--budget", "1", "--db", str(db)])
        return kept, *again.communicate(timeout=120), again.returncode

    # The offline mutator's seed 1 tries a change that does not win: nothing to claim
    kept, out, err, code = night_and_claim(1)
    assert not kept and code == 1 and "no claim to measure: the frontier never moved" in err, err[-2000:]
    kept, out, err, code = night_and_claim(0)  # its seed 0 keeps its first change
    assert kept and code == 0, err[-2000:]
    seen = [json.loads(line) for line in out.splitlines()]
    (claim,) = [e["claim"] for e in seen if e["event"] == "claim"]
    started = [e["experiment"]["kind"] for e in seen if e["event"] == "run_started"]
    assert started and set(started) == {"claim"}  # the claim's runs and nothing else
    assert claim["frontier"] == kept[-1]["commit"] and seen[-1]["reason"] == "the claim asked for"


def test_a_claim_asked_for_mid_night_is_measured_and_the_night_goes_on(tmp_path, monkeypatch):
    from scheduler.engine import control

    asked = []

    def ask_after_the_keep(event):
        if isinstance(event, events.FrontierAdvanced) and not asked:
            asked.append(True)
            sup.submit(control.Confirm(by="ada via tui"))

    sup, store, received = engine(tmp_path, ScriptedProposer([{"VALUE": 0.5}, {"VALUE": 0.6}, {"VALUE": 0.4}]),
                                  gpus=[Gpu(0, None, None, "cpu")], max_experiments=5, confirm=False,
                                  sink=ask_after_the_keep)
    assert sup.run() == 0
    (claim,) = [e.claim for e in received if isinstance(e, events.Claimed)]
    assert claim.gain == pytest.approx(0.5) and claim.frontier_values == (0.5, 0.5)
    kinds = [e.kind for e in store.experiments() if e.status.finished]
    first_claim = kinds.index(Kind.CLAIM)
    assert Kind.PROPOSAL in kinds[first_claim + 4:]  # the night went on after its claim
    assert [e.decision.value for e in store.experiments() if e.description == "VALUE=0.4"] == ["keep"]
