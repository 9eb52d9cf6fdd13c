"""Read queries, shared by the writer and by readers (direct or over Parquet snapshots)."""

from __future__ import annotations

import json

from .claim import Claim
from .memory_index import terms
from .metric import Direction, Metric, delta, starting_points
from .records import (NEVER_RAN_SQL, Decision, DecisionSource, Experiment, FrontierMove, Kind, LeaderboardRow, Memory,
                      NoiseRow, SpendingRow, Status, SUMMARY_COLUMNS)

_EXPERIMENT_FIELDS = [
    "id", "run_id", "lane", "kind", "gpu_index", "gpu_uuid", "gpu_name", "worktree", "branch",
    "parent_commit", "commit", "description", "hypothesis", "agent", "status", "decision",
    "decision_source", "decision_reason", *SUMMARY_COLUMNS, "extra", "started_at", "finished_at",
    "log_path", "exit_code", "error", "change", "rerun_of", "confirms", "verifies", "reference_for",
    "drafted_on", "touched", "notes",
]
EXPERIMENT_COLUMNS = ", ".join(f'"{c}"' for c in _EXPERIMENT_FIELDS)


def experiment_from_row(row) -> Experiment:
    values = dict(zip(_EXPERIMENT_FIELDS, row))
    summary = {k: values.pop(k) for k in SUMMARY_COLUMNS if values.get(k) is not None}
    for k in SUMMARY_COLUMNS:
        values.pop(k, None)
    extra, notes = values.pop("extra"), values.pop("notes")
    return Experiment(
        **{k: v for k, v in values.items() if k not in ("status", "decision", "decision_source", "kind", "touched")},
        kind=Kind(values["kind"]),
        status=Status(values["status"]),
        decision=Decision(values["decision"]) if values["decision"] else None,
        decision_source=DecisionSource(values["decision_source"]) if values["decision_source"] else None,
        summary=summary,
        extra=json.loads(extra) if extra else {},
        touched=tuple(values["touched"] or ()),
        notes=json.loads(notes) if notes else {},
    )


def experiments(con, run_id: str | None = None, tag: str | None = None) -> list[Experiment]:
    """Experiments in id order: all, one run's, or every run's of one research tag."""
    where, params = _scope(run_id, tag)
    sql = f"SELECT {EXPERIMENT_COLUMNS} FROM experiments WHERE {where} ORDER BY id"
    return [experiment_from_row(r) for r in con.execute(sql, params).fetchall()]


def claims(con, run_id: str | None = None, tag: str | None = None) -> list[Claim]:
    """Every claim measured (results/claim.py), oldest first: the end of each night, and each
    `confirm` asked for."""
    where, params = _scope(run_id, tag)
    rows = con.execute(f"SELECT detail FROM events WHERE kind = 'claim' AND {where} ORDER BY id", params).fetchall()
    return [Claim.from_dict(json.loads(d) if isinstance(d, str) else d) for (d,) in rows]


def latest_tag(con) -> str | None:
    """The research tag of the session started last."""
    rows = con.execute("SELECT tag FROM runs ORDER BY started_at DESC LIMIT 1").fetchall()
    return rows[0][0] if rows else None


def _scope(run_id: str | None, tag: str | None) -> tuple[str, list]:
    """A WHERE condition for one session's rows, a research tag's, or all of them."""
    if run_id is not None:
        return "run_id = ?", [run_id]
    if tag is not None:
        return "run_id IN (SELECT id FROM runs WHERE tag = ?)", [tag]
    return "true", []


def frontier_moves(con, run_id: str | None = None, tag: str | None = None) -> list[FrontierMove]:
    """Every move of the frontier, in the order made: all, one session's, or a research tag's."""
    where, params = _scope(run_id, tag)
    sql = f"SELECT experiment_id, detail FROM events WHERE kind = 'frontier' AND {where} ORDER BY id"
    moves = []
    for experiment_id, detail in con.execute(sql, params).fetchall():
        d = json.loads(detail) if isinstance(detail, str) else (detail or {})
        if d.get("commit"):
            moves.append(FrontierMove(d["commit"], d.get("previous"), experiment_id, bool(d.get("undo"))))
    return moves


def leaderboard(con, run_id: str | None = None, limit: int | None = None,
                metric: Metric | None = None) -> list[LeaderboardRow]:
    """Finished experiments, best first by the metric (those without a value last). The delta
    is against the starting point (results/metric.py, the same figure the terminal UI shows);
    the ranking is done in SQL, so a long log is not read whole. `limit` keeps the best N
    rows; None or 0 means every row (as `report --limit 0` does)."""
    metric = metric or metric_of(con, run_id)
    value_sql, params = metric.sql_value()
    order = "ASC" if metric.direction is Direction.LOWER else "DESC"
    where = "WHERE status NOT IN ('queued', 'running', 'not_run')" + (" AND run_id = ?" if run_id else "")
    sql = (f"SELECT {EXPERIMENT_COLUMNS}, {value_sql} AS _value FROM experiments {where} "
           f"ORDER BY _value {order} NULLS LAST, id" + (" LIMIT ?" if limit else ""))
    rows = con.execute(sql, params + ([run_id] if run_id else []) + ([limit] if limit else [])).fetchall()
    found = [experiment_from_row(r[:-1]) for r in rows]
    base_sql = f"SELECT {EXPERIMENT_COLUMNS} FROM experiments WHERE kind = 'baseline'"
    if run_id:  # the starting point is the research line's, whichever session measured it
        base_sql += " AND branch IN (SELECT branch FROM experiments WHERE run_id = ?)"
    baselines = [experiment_from_row(r) for r in con.execute(base_sql, [run_id] if run_id else []).fetchall()]
    starts = starting_points(baselines, metric)
    return [
        LeaderboardRow(rank=i + 1, experiment_id=e.id, commit=e.commit, value=metric.value(e),
                       delta=delta(e, starts, metric), status=e.status, decision=e.decision, lane=e.lane,
                       description=e.description, peak_vram_mb=e.summary.get("peak_vram_mb"))
        for i, e in enumerate(found)
    ]


def metric_of(con, run_id: str | None = None) -> Metric:
    """The metric a session judged by (the latest session's, without a run id)."""
    sql = "SELECT config FROM runs" + (" WHERE id = ?" if run_id else "") + " ORDER BY started_at DESC LIMIT 1"
    rows = con.execute(sql, [run_id] if run_id else []).fetchall()
    config = rows[0][0] if rows else None
    try:
        return Metric.from_config(json.loads(config) if isinstance(config, str) else config)
    except ValueError:
        return Metric()


def noise(con, run_id: str | None = None) -> list[NoiseRow]:
    """The last noise estimate per GPU model of a session (the latest session's, without an id)."""
    if run_id is None:
        rows = con.execute("SELECT id FROM runs ORDER BY started_at DESC LIMIT 1").fetchall()
        if not rows:
            return []
        run_id = rows[0][0]
    rows = con.execute(
        "SELECT detail FROM events WHERE run_id = ? AND kind = 'noise' ORDER BY id", [run_id]).fetchall()
    latest: dict[str, NoiseRow] = {}
    for (detail,) in rows:
        d = json.loads(detail) if isinstance(detail, str) else detail
        latest[d["gpu_model"]] = NoiseRow(d["gpu_model"], d.get("sigma"), int(d.get("dof") or 0), d.get("sigma_used"),
                                          d.get("margin"))
    return list(latest.values())


def spending(con, run_id: str | None = None) -> SpendingRow:
    """The LLM calls' tokens and cost, and the proposals they paid for: one session's, or the
    whole log's without a run id (as the leaderboard)."""
    where, params = (" WHERE run_id = ?", [run_id]) if run_id else ("", [])
    calls, tokens_in, cached, tokens_out, cost, unpriced = con.execute(
        "SELECT count(*), coalesce(sum(input_tokens), 0), coalesce(sum(cache_read_tokens), 0), "
        "coalesce(sum(output_tokens), 0), sum(cost_usd), count(*) FILTER (WHERE outcome = 'ok' AND cost_usd IS NULL) "
        f"FROM llm_calls{where}", params).fetchall()[0]
    ran, kept = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE decision = 'keep') FROM experiments "
        f"WHERE kind = 'proposal' AND status NOT IN {NEVER_RAN_SQL}{where.replace('WHERE', 'AND')}",
        params).fetchall()[0]
    return SpendingRow(calls, int(tokens_in), int(cached), int(tokens_out), cost, unpriced, ran, kept)


def recall(con, query: str, k: int = 5, k1: float = 1.2, b: float = 0.75) -> list[Memory]:
    """Memories ranked by BM25 against the query's terms (Robertson-Sparck Jones idf, the
    usual k1 and b)."""
    wanted = sorted(set(terms(query)))
    if not wanted:
        return []
    rows = con.execute(
        """
        WITH q AS (SELECT unnest($terms::VARCHAR[]) AS term),
        stats AS (SELECT count(*) AS n, avg(doc_len) AS avgdl FROM memories),
        df AS (SELECT t.term, count(DISTINCT t.memory_id) AS df
               FROM memory_terms t JOIN q USING (term) GROUP BY t.term),
        scored AS (
            SELECT t.memory_id,
                   sum(ln(1 + (stats.n - df.df + 0.5) / (df.df + 0.5))
                       * t.tf * ($k1 + 1) / (t.tf + $k1 * (1 - $b + $b * m.doc_len / stats.avgdl))) AS score
            FROM memory_terms t JOIN df USING (term) JOIN memories m ON m.id = t.memory_id, stats
            GROUP BY t.memory_id)
        SELECT m.id, m.t, m.run_id, m.experiment_id, m.author, m.text, m.tags, s.score
        FROM scored s JOIN memories m ON m.id = s.memory_id
        ORDER BY s.score DESC, m.id DESC
        LIMIT $k
        """,
        {"terms": wanted, "k1": k1, "b": b, "k": k},
    ).fetchall()
    return [Memory(id=r[0], t=r[1], run_id=r[2], experiment_id=r[3], author=r[4] or "", text=r[5],
                   tags=tuple(r[6] or ()), score=r[7]) for r in rows]
