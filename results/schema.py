"""The store's schema as a list of forward migrations.

A file records its version in `schema_version`. Opening a file written by an older release
applies the missing migrations in one transaction; a file from a newer release is refused.
Migrations only ever run when a file is opened for writing, never while a run is live."""

from __future__ import annotations

import json
from typing import Callable

import pyarrow as pa

from .memory_index import index_terms

_V1 = """
CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL);
CREATE TABLE runs (
    id VARCHAR PRIMARY KEY, tag VARCHAR NOT NULL, repo VARCHAR NOT NULL,
    started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP, host VARCHAR, config JSON
);
CREATE TABLE experiments (
    id INTEGER PRIMARY KEY, run_id VARCHAR NOT NULL, lane INTEGER NOT NULL,
    kind VARCHAR NOT NULL DEFAULT 'proposal',
    gpu_index INTEGER, gpu_uuid VARCHAR, gpu_name VARCHAR, worktree VARCHAR, branch VARCHAR,
    parent_commit VARCHAR, "commit" VARCHAR, description VARCHAR NOT NULL, hypothesis VARCHAR,
    agent VARCHAR, status VARCHAR NOT NULL, decision VARCHAR, decision_source VARCHAR,
    decision_reason VARCHAR,
    val_bpb DOUBLE, training_seconds DOUBLE, total_seconds DOUBLE, peak_vram_mb DOUBLE,
    mfu_percent DOUBLE, total_tokens_M DOUBLE, num_steps INTEGER, num_params_M DOUBLE,
    depth INTEGER, attention_backend VARCHAR, startup_seconds DOUBLE, seed VARCHAR,
    device_name VARCHAR, extra JSON,
    started_at TIMESTAMP, finished_at TIMESTAMP, log_path VARCHAR, exit_code INTEGER, error VARCHAR
);
CREATE TABLE metrics (
    experiment_id INTEGER NOT NULL, step INTEGER NOT NULL, t TIMESTAMP NOT NULL, pct DOUBLE,
    loss DOUBLE, lrm DOUBLE, dt_ms DOUBLE, tok_per_sec DOUBLE, mfu DOUBLE, epoch INTEGER,
    remaining_s DOUBLE
);
CREATE TABLE telemetry (
    t TIMESTAMP NOT NULL, gpu_index INTEGER NOT NULL, gpu_uuid VARCHAR, util_pct DOUBLE,
    mem_used_mb DOUBLE, mem_total_mb DOUBLE, temp_c DOUBLE, power_w DOUBLE,
    sm_clock_mhz DOUBLE, throttle_reasons VARCHAR
);
CREATE TABLE llm_calls (
    id INTEGER PRIMARY KEY, t TIMESTAMP NOT NULL, run_id VARCHAR NOT NULL, role VARCHAR NOT NULL,
    provider VARCHAR NOT NULL, model VARCHAR NOT NULL, outcome VARCHAR NOT NULL, lane INTEGER,
    experiment_id INTEGER, input_tokens INTEGER, output_tokens INTEGER, cost_usd DOUBLE,
    latency_ms DOUBLE, error VARCHAR
);
CREATE TABLE memories (
    id INTEGER PRIMARY KEY, t TIMESTAMP NOT NULL, run_id VARCHAR, experiment_id INTEGER,
    author VARCHAR, text VARCHAR NOT NULL, tags VARCHAR[]
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY, t TIMESTAMP NOT NULL, run_id VARCHAR NOT NULL, kind VARCHAR NOT NULL,
    source VARCHAR NOT NULL, lane INTEGER, experiment_id INTEGER, detail JSON
);
CREATE INDEX experiments_by_run ON experiments (run_id);
"""

# v2: relevance search over memories (BM25 in SQL; DuckDB's fts extension needs a download).
_V2 = """
ALTER TABLE memories ADD COLUMN doc_len INTEGER;
CREATE TABLE memory_terms (memory_id INTEGER NOT NULL, term VARCHAR NOT NULL, tf INTEGER NOT NULL);
"""


def _v2_backfill(con) -> None:
    rows = con.execute("SELECT id, text, tags FROM memories").fetchall()
    for memory_id, text, tags in rows:
        terms = index_terms(text, tags or ())
        con.execute("UPDATE memories SET doc_len = ? WHERE id = ?", [sum(terms.values()), memory_id])
        if terms:
            con.executemany("INSERT INTO memory_terms VALUES (?, ?, ?)",
                            [(memory_id, term, tf) for term, tf in terms.items()])


def _script(sql: str) -> Callable:
    def apply(con) -> None:
        for statement in filter(str.strip, sql.split(";")):
            con.execute(statement)
    return apply


def _v2(con) -> None:
    _script(_V2)(con)
    _v2_backfill(con)


# v3: the engine's links between experiments get columns of their own. Until v2 they were keys
# of `extra`, mixed with what the trainer printed (and overwritten by it); they move out, as do
# the proposer's own notes on proposals, so that `extra` is only the trainer's.
_V3_COLUMNS = (('"change"', "VARCHAR"), ("rerun_of", "INTEGER"), ("confirms", "INTEGER"), ("verifies", "INTEGER"),
               ("reference_for", "INTEGER"), ("drafted_on", "VARCHAR"), ("touched", "VARCHAR[]"), ("notes", "JSON"))
_V3_LINKS = ("change", "rerun_of", "confirms", "verifies", "reference_for", "drafted_on", "touched")
_V3_NOTES = ("transcript", "direction", "file", "name", "old", "new")  # what v2's proposers added
_V3_ARROW = {"id": pa.int64(), "change": pa.string(), "rerun_of": pa.int64(), "confirms": pa.int64(),
             "verifies": pa.int64(), "reference_for": pa.int64(), "drafted_on": pa.string(),
             "touched": pa.list_(pa.string()), "notes": pa.string(), "extra": pa.string()}


def _v3(con) -> None:
    # An index on a table blocks ALTER in some DuckDB releases: drop it around the change.
    con.execute("DROP INDEX IF EXISTS experiments_by_run")
    for column, sql_type in _V3_COLUMNS:
        con.execute(f"ALTER TABLE experiments ADD COLUMN {column} {sql_type}")
    rows = con.execute("SELECT id, kind, extra FROM experiments WHERE extra IS NOT NULL").fetchall()
    moved: dict[str, list] = {name: [] for name in ("id", "change", "rerun_of", "confirms", "verifies",
                                                     "reference_for", "drafted_on", "touched", "notes", "extra")}
    for experiment_id, kind, raw in rows:
        extra = json.loads(raw) if raw else {}
        if not isinstance(extra, dict):
            continue
        links = {k: extra.pop(k) for k in _V3_LINKS if k in extra}
        notes = {k: extra.pop(k) for k in _V3_NOTES if k in extra} if kind == "proposal" else {}
        touched = links.get("touched")
        for name, value in (("id", experiment_id), ("change", _text(links.get("change"))),
                            ("rerun_of", _whole(links.get("rerun_of"))), ("confirms", _whole(links.get("confirms"))),
                            ("verifies", _whole(links.get("verifies"))),
                            ("reference_for", _whole(links.get("reference_for"))),
                            ("drafted_on", _text(links.get("drafted_on"))),
                            ("touched", [str(p) for p in touched] if isinstance(touched, list) else None),
                            ("notes", json.dumps(notes) if notes else None),
                            ("extra", json.dumps(extra) if extra else None)):
            moved[name].append(value)
    if moved["id"]:  # one UPDATE for every row: a long log migrates in a second, not a minute
        batch = pa.table({name: pa.array(values, type=_V3_ARROW.get(name)) for name, values in moved.items()})
        con.register("_v3_moved", batch)
        try:
            con.execute('UPDATE experiments SET "change" = m."change", rerun_of = m.rerun_of, confirms = m.confirms, '
                        "verifies = m.verifies, reference_for = m.reference_for, drafted_on = m.drafted_on, "
                        "touched = m.touched, notes = m.notes, extra = m.extra "
                        "FROM _v3_moved m WHERE experiments.id = m.id")
        finally:
            con.unregister("_v3_moved")
    con.execute("CREATE INDEX experiments_by_run ON experiments (run_id)")


def _whole(value) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None  # a trainer's text where a link was: v2 let it overwrite the link


def _text(value) -> str | None:
    return str(value) if value is not None else None


# v4: prompt caching. input_tokens stays every prompt token; these say how many of them the
# provider read from its cache or wrote to it (priced differently).
_V4 = """
ALTER TABLE llm_calls ADD COLUMN cache_read_tokens INTEGER;
ALTER TABLE llm_calls ADD COLUMN cache_write_tokens INTEGER;
"""

MIGRATIONS: list[Callable] = [_script(_V1), _v2, _v3, _script(_V4)]
SCHEMA_VERSION = len(MIGRATIONS)
TABLES = ["runs", "experiments", "metrics", "telemetry", "llm_calls", "memories", "memory_terms", "events"]


class SchemaTooNew(Exception):
    pass


def current_version(con) -> int:
    has_table = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'").fetchall()[0][0]
    if not has_table:
        return 0
    # fetchall, not fetchone: DuckDB 2.0 keeps a half-read result open and refuses the next call
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]


def migrate(con, target: int = SCHEMA_VERSION) -> int:
    """Bring the file up to `target`, all or nothing. Returns the version it was at."""
    found = current_version(con)
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(found)
    if found >= target:
        return found
    con.execute("BEGIN TRANSACTION")
    try:
        for version in range(found + 1, target + 1):
            MIGRATIONS[version - 1](con)
            con.execute("INSERT INTO schema_version VALUES (?, now())", [version])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return found
