"""The experiment log on real DuckDB files: durability, live readers, migrations, search."""

import json
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from results.records import Decision, DecisionSource, Experiment, MetricPoint, Status
from results.schema import SCHEMA_VERSION, migrate
from results.store import Reader, Store, StoreError, utcnow

ROOT = Path(__file__).resolve().parent.parent
WRITER = Path(__file__).with_name("store_writer.py")


def start_writer(db, count, hold):
    return subprocess.Popen([sys.executable, str(WRITER), str(db), str(count), str(hold)],
                            stdout=subprocess.PIPE, text=True)


def read_until(proc, predicate):
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if predicate(lines):
            return lines
    raise AssertionError(f"writer ended early: {lines}")


def test_sigkill_mid_stream_loses_no_committed_experiment_and_duplicates_none(tmp_path):
    db = tmp_path / "log.duckdb"
    writer = start_writer(db, count=10_000, hold=0)
    lines = read_until(writer, lambda ls: sum(l.startswith("committed") for l in ls) >= 25)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    committed = {int(l.split()[1]) for l in lines if l.startswith("committed")}
    with Store(db) as store:
        ids = [e.id for e in store.experiments()]
        finished = {e.id for e in store.experiments() if e.status is Status.OK}
        metric_ids = store.con.execute("SELECT DISTINCT experiment_id FROM metrics").fetchall()
    assert committed <= finished
    assert len(ids) == len(set(ids))
    assert {m[0] for m in metric_ids} >= committed  # each result arrives with its curve


def test_report_runs_in_another_process_while_the_writer_is_live(tmp_path):
    db = tmp_path / "log.duckdb"
    writer = start_writer(db, count=3, hold=60)
    try:
        read_until(writer, lambda ls: ls[-1] == "holding")
        with pytest.raises(duckdb.Error, match="lock"):
            duckdb.connect(str(db), read_only=True)  # the reason snapshots exist
        result = subprocess.run([sys.executable, "-m", "autoresearch_tui.cli", "report", "--db", str(db)],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        writer.kill()
        writer.wait()
    assert result.returncode == 0, result.stderr
    assert "live" in result.stdout
    body = result.stdout.splitlines()
    assert "experiment number 2" in body[3] and "experiment number 0" in body[5]  # best first
    assert "lock" not in result.stderr.lower()


def test_a_file_from_an_older_schema_is_upgraded_with_its_data(tmp_path):
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    migrate(con, target=1)
    con.execute("INSERT INTO memories (id, t, text, tags) VALUES (1, now(), 'warmup ratio 0.1 hurt', ['schedule'])")
    con.execute("INSERT INTO runs (id, tag, repo, started_at) VALUES ('r', 't', '/x', now())")
    con.close()
    with Store(db) as store:
        assert store.upgraded_from == 1
        assert store.con.execute("SELECT max(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        assert [m.text for m in store.recall("warmup")] == ["warmup ratio 0.1 hurt"]
        assert store.con.execute("SELECT tag FROM runs").fetchall() == [("t",)]


def previous_release_log(folder: Path) -> Path:
    """tests/data/log-v2: a log the previous release (schema 2) wrote with its own Store, the way
    its engine filled `extra` (links, the proposer's notes and the trainer's keys in one dict),
    kept as DuckDB's EXPORT DATABASE output; imported into a fresh file here."""
    source = Path(__file__).with_name("data") / "log-v2"
    db = folder / "previous.duckdb"
    con = duckdb.connect(str(db))
    con.execute((source / "schema.sql").read_text())
    con.execute((source / "load.sql").read_text().replace("@DIR@", source.as_posix()))
    con.close()
    return db


def test_a_log_written_by_the_previous_release_is_migrated_and_keeps_its_links(tmp_path):
    db = previous_release_log(tmp_path)
    with Store(db) as store:
        assert store.upgraded_from == 2
        rows = {e.id: e for e in store.experiments()}
        proposal, confirm, verification, rerun, reference, llm = (rows[i] for i in (3, 4, 5, 6, 7, 8))
        assert (proposal.change, proposal.touched, proposal.drafted_on) == ("MATRIX_LR=0.05", ("train.py",), "c" * 40)
        assert proposal.notes == {"file": "train.py", "name": "MATRIX_LR", "old": "0.04", "new": "0.05"}
        assert proposal.extra == {"device_order": "PCI_BUS_ID"}  # only what the trainer printed is left
        assert (confirm.confirms, confirm.change, confirm.extra) == (3, "MATRIX_LR=0.05", {})
        assert (verification.verifies, rerun.rerun_of, reference.reference_for) == (3, 3, 5)
        assert llm.notes == {"transcript": "/logs/transcripts/000008.jsonl", "direction": "architecture"}
        assert llm.extra == {"attention_backend_note": "sdpa"}
        assert [e.kind.value for e in rows.values()] == ["baseline", "baseline", "proposal", "confirm",
                                                        "verification", "rerun", "baseline", "proposal"]
        assert rows[1].val_bpb == 1.0 and proposal.decision is Decision.KEEP
    with Store(db) as store:  # opened again: nothing more to do, nothing changed
        assert store.upgraded_from == SCHEMA_VERSION
        assert store.experiments()[2].notes["name"] == "MATRIX_LR"


def test_a_file_from_a_newer_release_is_refused_and_left_alone(tmp_path):
    db = tmp_path / "new.duckdb"
    Store(db).close()
    con = duckdb.connect(str(db))
    con.execute("INSERT INTO schema_version VALUES (99, now())")
    con.close()
    before = db.read_bytes()
    with pytest.raises(StoreError, match="newer"):
        Store(db)
    assert db.read_bytes() == before


UPSTREAM_TSV = (
    "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
    "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline\n"
    "b2c3d4e\t0.993200\t44.2\tkeep\tincrease LR to 0.04\n"
    "c3d4e5f\t1.005000\t44.0\tdiscard\tswitch to GeLU activation\n"
    "d4e5f6g\t0.000000\t0.0\tcrash\tdouble model width (OOM)\n"
)


def test_tsv_matches_upstream_results_tsv_byte_for_byte(tmp_path):
    db = tmp_path / "log.duckdb"
    rows = [("a1b2c3d4e5", 0.9979, 45056.0, Status.OK, Decision.KEEP, "baseline"),
            ("b2c3d4e5f6", 0.9932, 45260.8, Status.OK, Decision.KEEP, "increase LR to 0.04"),
            ("c3d4e5f6a7", 1.005, 45056.0, Status.OK, Decision.DISCARD, "switch to GeLU activation"),
            ("d4e5f6g7h8", None, None, Status.OOM, Decision.DISCARD, "double model width (OOM)")]
    with Store(db) as store:
        for commit, bpb, mem, status, decision, description in rows:
            e = store.add_experiment(Experiment(run_id="r", lane=0, description=description))
            summary = {"val_bpb": bpb, "peak_vram_mb": mem} if bpb else {}
            store.save_experiment(replace(e, status=status, summary=summary, commit=commit, decision=decision))
        queued = store.add_experiment(Experiment(run_id="r", lane=1, description="not run yet"))
        assert queued.status is Status.QUEUED
    result = subprocess.run([sys.executable, "-m", "autoresearch_tui.cli", "report", "--db", str(db), "--format", "tsv"],
                            cwd=ROOT, capture_output=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout == UPSTREAM_TSV.encode()


def test_recall_puts_the_relevant_memory_first(tmp_path):
    with Store(tmp_path / "log.duckdb") as store:
        store.remember("Doubling the depth to 16 ran out of memory on the H100.", ["architecture"])
        store.remember("Raising MATRIX_LR from 0.04 to 0.06 made the loss diverge after 200 steps.", ["optimizer", "lr"])
        store.remember("A warmdown ratio of 0.7 beat 0.5 by 0.004 bpb.", ["schedule"])
        store.remember("The window pattern SSSL was faster than LLLL with equal loss.", ["attention"])
        store.remember("Value embeddings on every layer did not help.", ["architecture"])
        hits = store.recall("what happened when the learning rate (lr) was raised?", k=3)
        assert hits[0].text.startswith("Raising MATRIX_LR")
        assert hits[0].score > hits[1].score if len(hits) > 1 else True
        assert store.recall("warmdown")[0].text.startswith("A warmdown ratio")
        assert store.recall("zebra") == []


def test_decisions_are_recorded_with_who_and_why(tmp_path):
    with Store(tmp_path / "log.duckdb") as store:
        e = store.add_experiment(Experiment(run_id="r", lane=0, description="x"))
        store.save_experiment(replace(e, status=Status.OK, summary={"val_bpb": 1.0}))
        store.record_decision(e.id, Decision.KEEP, DecisionSource.USER, "pressed k", run_id="r")
        (got,) = store.experiments()
        assert (got.decision, got.decision_source, got.decision_reason) == (Decision.KEEP, DecisionSource.USER, "pressed k")
        kinds = store.con.execute("SELECT kind, source FROM events").fetchall()
        assert kinds == [("decision:keep", "user")]


def test_experiments_that_were_running_become_interrupted(tmp_path):
    with Store(tmp_path / "log.duckdb") as store:
        a = store.add_experiment(Experiment(run_id="r", lane=0, description="a", status=Status.RUNNING))
        store.add_experiment(Experiment(run_id="r", lane=1, description="b", status=Status.QUEUED))
        assert store.interrupt_unfinished("r") == [a.id]
        assert [e.status for e in store.experiments()] == [Status.INTERRUPTED, Status.QUEUED]


def run_report(*args):
    return subprocess.run([sys.executable, "-m", "autoresearch_tui.cli", "report", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_file_that_is_not_duckdb_gets_one_sentence_and_exit_2_and_is_untouched(tmp_path):
    path = tmp_path / "notes.duckdb"
    path.write_text("these are my notes, not a database\n" * 10)
    before = path.read_bytes()
    result = run_report("--db", str(path))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "not a readable DuckDB" in result.stderr
    with pytest.raises(StoreError):
        Store(path)
    assert path.read_bytes() == before


def test_a_missing_log_is_reported_not_created(tmp_path):
    result = run_report("--db", str(tmp_path / "nothing.duckdb"))
    assert result.returncode == 2 and "no experiment log" in result.stderr
    assert not (tmp_path / "nothing.duckdb").exists()


def test_a_folder_that_cannot_be_created_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot create the folder"):
        Store(blocker / "sub" / "log.duckdb")


def test_a_second_writer_is_refused_with_a_sentence(tmp_path):
    db = tmp_path / "log.duckdb"
    writer = start_writer(db, count=1, hold=60)
    try:
        read_until(writer, lambda ls: ls[-1] == "holding")
        with pytest.raises(StoreError, match="open in another supervisor"):
            Store(db)
    finally:
        writer.kill()
        writer.wait()


def test_json_parquet_and_plot_exports(tmp_path):
    db = tmp_path / "log.duckdb"
    with Store(db) as store:
        for i, (bpb, decision) in enumerate([(1.0, Decision.KEEP), (0.99, Decision.KEEP), (1.01, Decision.DISCARD)]):
            e = store.add_experiment(Experiment(run_id="r", lane=i, description=f"e{i}",
                                                kind="baseline" if i == 0 else "proposal"))
            store.save_experiment(replace(e, status=Status.OK, summary={"val_bpb": bpb}, decision=decision))
    out = tmp_path / "export"
    result = run_report("--db", str(db), "--format", "json", "--parquet", str(out), "--plot", str(tmp_path / "p.png"))
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["val_bpb"] for r in (x["summary"] for x in records)] == [1.0, 0.99, 1.01]
    tables = sorted(p.stem for p in out.glob("*.parquet"))
    assert "experiments" in tables and "metrics" in tables and "memories" in tables
    assert duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{out / 'experiments.parquet'}')").fetchone() == (3,)
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_leaderboard_measures_delta_against_the_baseline_on_the_same_gpu_model(tmp_path):
    with Store(tmp_path / "log.duckdb") as store:
        for gpu, kind, bpb in [("H100", "baseline", 1.00), ("H100", "baseline", 1.02), ("A100", "baseline", 1.10),
                               ("H100", "proposal", 0.99), ("A100", "proposal", 1.05)]:
            e = store.add_experiment(Experiment(run_id="r", lane=0, description=f"{gpu} {kind}", kind=kind, gpu_name=gpu))
            store.save_experiment(replace(e, status=Status.OK, summary={"val_bpb": bpb}))
        rows = {r.description: r for r in store.leaderboard()}
    assert rows["H100 proposal"].delta == pytest.approx(-0.02)  # median of 1.00 and 1.02 is 1.01
    assert rows["A100 proposal"].delta == pytest.approx(-0.05)
    assert rows["H100 proposal"].rank == 1


def test_a_corrupt_database_gets_one_sentence_and_is_never_rewritten(tmp_path):
    db = tmp_path / "log.duckdb"
    with Store(db) as store:
        for i in range(20):
            store.add_experiment(Experiment(run_id="r", lane=0, description=f"e{i}"))
    data = db.read_bytes()
    db.write_bytes(data[:8192] + bytes(b ^ 0x5A for b in data[8192:]))  # every block scrambled
    before = db.read_bytes()
    result = run_report("--db", str(db))
    assert result.returncode == 2
    assert "not a readable DuckDB database" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(StoreError):
        Store(db)
    assert db.read_bytes() == before


def test_a_folder_with_a_quote_in_its_name_works(tmp_path):
    db = tmp_path / "bob's runs" / "log.duckdb"
    with Store(db) as store:
        store.add_experiment(Experiment(run_id="r", lane=0, description="x"))
    with Reader(db) as reader:
        assert len(reader.experiments()) == 1
        reader.export_parquet(tmp_path / "it's here")


def test_a_snapshot_that_cannot_be_written_never_stops_the_writer(tmp_path, caplog):
    db = tmp_path / "log.duckdb"
    (tmp_path / "log.duckdb.snapshots").write_text("a file where the snapshot folder should be")
    with Store(db) as store:
        e = store.add_experiment(Experiment(run_id="r", lane=0, description="still recorded"))
        store.save_experiment(replace(e, status=Status.OK, summary={"val_bpb": 0.98}))
        assert store.refresh_snapshot(timeout=30) is None
        assert store.snapshot_error is not None
        assert [x.summary["val_bpb"] for x in store.experiments()] == [0.98]
    assert "snapshot of" in caplog.text and "Traceback" in caplog.text
    with Reader(db) as reader:
        assert [x.description for x in reader.experiments()] == ["still recorded"]


def test_a_live_snapshot_is_consistent_and_old_ones_are_pruned(tmp_path, monkeypatch):
    import results.store as store_module
    monkeypatch.setattr(store_module, "SNAPSHOT_GRACE_SECONDS", 0.0)
    db = tmp_path / "log.duckdb"
    with Store(db, flush_seconds=3600) as store:
        for i in range(6):
            e = store.add_experiment(Experiment(run_id="r", lane=0, description=f"e{i}", status=Status.RUNNING))
            for step in range(5):
                store.add_metric(MetricPoint(experiment_id=e.id, step=step, t=utcnow(), loss=3.0))
            store.save_experiment(replace(e, status=Status.OK, summary={"val_bpb": 1.0 - i / 100}))
            store.record_decision(e.id, Decision.KEEP, DecisionSource.AUTO, "better", run_id="r")
        latest = store.refresh_snapshot(full=True)
        kept = sorted(p.name for p in latest.parent.iterdir() if p.name.isdigit())
        assert len(kept) == store_module.SNAPSHOTS_KEPT and latest.name == kept[-1]
        view = duckdb.connect()
        finished = view.execute(f"SELECT count(*) FROM read_parquet('{latest / 'experiments.parquet'}') "
                                "WHERE decision = 'keep'").fetchone()[0]
        curves = view.execute(f"SELECT count(*) FROM read_parquet('{latest / 'metrics.parquet'}')").fetchone()[0]
        assert (finished, curves) == (6, 30)


def test_rows_can_be_flushed_right_after_opening(tmp_path):
    # DuckDB 2.0 refuses work on a connection whose last result was only partly read.
    with Store(tmp_path / "log.duckdb") as store:
        store.add_metric(MetricPoint(experiment_id=1, step=0, t=utcnow(), loss=2.0))
        store.flush()
        assert store.con.execute("SELECT count(*) FROM metrics").fetchall() == [(1,)]
