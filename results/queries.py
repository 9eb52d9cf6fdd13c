"""Read queries, shared by the writer and by readers (direct or over Parquet snapshots)."""

from __future__ import annotations

import json

from .memory_index import terms
from .records import Decision, DecisionSource, Experiment, LeaderboardRow, Memory, Status, SUMMARY_COLUMNS

_EXPERIMENT_FIELDS = [
    "id", "run_id", "lane", "kind", "gpu_index", "gpu_uuid", "gpu_name", "worktree", "branch",
    "parent_commit", "commit", "description", "hypothesis", "agent", "status", "decision",
    "decision_source", "decision_reason", *SUMMARY_COLUMNS, "extra", "started_at", "finished_at",
    "log_path", "exit_code", "error",
]
EXPERIMENT_COLUMNS = ", ".join(f'"{c}"' for c in _EXPERIMENT_FIELDS)


def experiment_from_row(row) -> Experiment:
    values = dict(zip(_EXPERIMENT_FIELDS, row))
    summary = {k: values.pop(k) for k in SUMMARY_COLUMNS if values.get(k) is not None}
    for k in SUMMARY_COLUMNS:
        values.pop(k, None)
    extra = values.pop("extra")
    return Experiment(
        **{k: v for k, v in values.items() if k not in ("status", "decision", "decision_source")},
        status=Status(values["status"]),
        decision=Decision(values["decision"]) if values["decision"] else None,
        decision_source=DecisionSource(values["decision_source"]) if values["decision_source"] else None,
        summary=summary,
        extra=json.loads(extra) if extra else {},
    )


def experiments(con, run_id: str | None = None, tag: str | None = None) -> list[Experiment]:
    """Experiments in id order: all, one run's, or every run's of one research tag."""
    sql = f"SELECT {EXPERIMENT_COLUMNS} FROM experiments"
    params = []
    if run_id is not None:
        sql += " WHERE run_id = ?"
        params.append(run_id)
    elif tag is not None:
        sql += " WHERE run_id IN (SELECT id FROM runs WHERE tag = ?)"
        params.append(tag)
    return [experiment_from_row(r) for r in con.execute(sql + " ORDER BY id", params).fetchall()]


def leaderboard(con, run_id: str | None = None, limit: int | None = None) -> list[LeaderboardRow]:
    """Finished experiments, best val_bpb first (those without one last). The delta is against
    the median of the baseline runs on the same GPU model, since a faster card trains further
    in the same budget and its numbers are not comparable with a slower one's. `limit` keeps
    the best N rows; None or 0 means every row (as `report --limit 0` does)."""
    where = "WHERE status NOT IN ('queued', 'running')" + (" AND run_id = $run" if run_id else "")
    base_where = "WHERE kind = 'baseline' AND status = 'ok' AND val_bpb IS NOT NULL" + (
        " AND run_id = $run" if run_id else "")
    sql = f"""
        WITH base AS (SELECT gpu_name, median(val_bpb) AS bpb FROM experiments {base_where} GROUP BY gpu_name)
        SELECT e.id, e."commit", e.val_bpb, e.val_bpb - base.bpb, e.status, e.decision, e.lane,
               e.description, e.peak_vram_mb
        FROM experiments e LEFT JOIN base ON e.gpu_name IS NOT DISTINCT FROM base.gpu_name
        {where.replace("status", "e.status").replace("run_id", "e.run_id")}
        ORDER BY e.val_bpb ASC NULLS LAST, e.id
        {"LIMIT $limit" if limit else ""}
    """
    params = {}
    if run_id:
        params["run"] = run_id
    if limit:
        params["limit"] = limit
    rows = con.execute(sql, params).fetchall()
    return [
        LeaderboardRow(rank=i + 1, experiment_id=r[0], commit=r[1], val_bpb=r[2], delta=r[3],
                       status=Status(r[4]), decision=Decision(r[5]) if r[5] else None, lane=r[6],
                       description=r[7], peak_vram_mb=r[8])
        for i, r in enumerate(rows)
    ]


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
