"""The experiment log: one DuckDB file, one writer, readers that never see a lock error.

The supervisor process owns the only read-write connection (DuckDB allows one writing process
per file). Every experiment row is committed the moment it changes; progress lines and GPU
samples are batched. After each finished experiment a background thread refreshes a Parquet
snapshot next to the file (written to a temporary folder, renamed, then pointed to), so
`report` and other readers in other processes can read while a run is live. The snapshot is
taken on its own cursor inside one transaction, so it is consistent across tables and never
holds up the writer: a finished experiment is durable as soon as its UPDATE commits."""

from __future__ import annotations

import atexit
import json
import logging
import operator
import os
import shutil
import threading
import time
import weakref
from dataclasses import astuple, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import duckdb
import pyarrow as pa

from . import queries
from .evidence import RunEvidence, run_evidence
from .memory_index import index_terms
from .metric import Metric
from .records import (Decision, DecisionSource, Event, Experiment, FrontierMove, GpuSample, LlmCall, Memory, NoiseRow,
                      SpendingRow, MetricPoint, Run, SUMMARY_COLUMNS)
from .claim import Claim
from .schema import SCHEMA_VERSION, TABLES, SchemaTooNew, current_version, migrate

BIG_TABLES = ("metrics", "telemetry")  # snapshotted on a slower cadence: they dominate the size
# attrgetter, not dataclasses.astuple: astuple deep-copies and cost ~16 us a row (bench/).
_METRIC_ROW = operator.attrgetter(*(f.name for f in fields(MetricPoint)))
_SAMPLE_ROW = operator.attrgetter(*(f.name for f in fields(GpuSample)))


log = logging.getLogger("autoresearch.store")


def _sql_path(path) -> str:
    """A path as a SQL string literal (a folder may contain a quote)."""
    return "'" + str(path).replace("'", "''") + "'"


SNAPSHOTS_KEPT = 3
# A reader that opened an older snapshot keeps reading its files, so none is deleted before it
# is this old, however many newer ones there are.
SNAPSHOT_GRACE_SECONDS = 120.0


class StoreError(Exception):
    """A problem with the file the user pointed at; the message is one sentence to show them."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def snapshot_root(path: Path) -> Path:
    return path.with_name(path.name + ".snapshots")


def _connect(path: Path, read_only: bool):
    """Open the file, turning DuckDB's errors into sentences. Never creates or truncates a file
    that exists but is not ours."""
    if path.is_dir():
        raise StoreError(f"{path} is a folder, not a DuckDB file.")
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as e:
        message = str(e)
        if "Could not set lock" in message or "Conflicting lock" in message:
            raise _Locked(message) from None
        if "not a valid DuckDB database" in message or "Corrupt" in message or "corrupt" in message:
            raise StoreError(f"{path} is not a readable DuckDB database (it was left untouched).") from None
        raise StoreError(f"cannot open {path}: {message.splitlines()[0]}") from None


class _Locked(Exception):
    pass


def _check_writable_folder(path: Path) -> None:
    folder = path.parent
    if not folder.exists():
        try:
            folder.mkdir(parents=True)
        except OSError as e:
            raise StoreError(f"cannot create the folder {folder}: {e.strerror}.") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write in {folder}: choose another --db path.")


class Store:
    """The writer. Not for use from several threads without care: every method takes one lock."""

    # Progress lines and GPU samples reach the file in batches, at most flush_seconds late (a
    # result flushes its run's lines first, so a finished curve is always whole). Each flush
    # costs ~7 ms of the supervisor's thread: once a second that was a third of its CPU with
    # 8 lanes streaming (bench/bench_engine.py); the per-experiment log files keep every line.
    def __init__(self, path: str | os.PathLike, *, flush_rows: int = 10_000, flush_seconds: float = 5.0,
                 full_snapshot_seconds: float = 120.0):
        self.path = Path(path)
        _check_writable_folder(self.path)
        try:
            self.con = _connect(self.path, read_only=False)
        except _Locked:
            raise StoreError(f"{self.path} is open in another supervisor; stop it first.") from None
        try:
            self.upgraded_from = migrate(self.con)
        except SchemaTooNew as e:
            self.con.close()
            raise StoreError(f"{self.path} was written by a newer autoresearch-tui (schema {e.args[0]}, "
                             f"this one knows {SCHEMA_VERSION}): upgrade autoresearch-tui.") from None
        self._lock = threading.RLock()
        self._next_id = {t: self._max_id(t) + 1 for t in ("experiments", "llm_calls", "memories", "events")}
        self._metrics: list[tuple] = []
        self._samples: list[tuple] = []
        self._last_flush = time.monotonic()
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._big_tables_changed = True
        # The previous session's snapshot stays readable until the first one of this session
        # lands; that one re-exports every table, in the background.
        self._snapshots = _Snapshotter(self, full_snapshot_seconds)
        self._snapshots.request(full=True)
        # A store left open by a failure elsewhere is still flushed and closed at exit, before
        # the interpreter tears down the snapshot thread under DuckDB's feet.
        atexit.register(_close_at_exit, weakref.ref(self))

    def _max_id(self, table: str) -> int:
        # fetchall, not fetchone: DuckDB 2.0 keeps a half-read result open, and the next
        # register() on this connection (a flush) would be refused.
        return self.con.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchall()[0][0]

    def _take_id(self, table: str) -> int:
        value = self._next_id[table]
        self._next_id[table] += 1
        return value

    # -- runs and experiments: committed at once ------------------------------------------

    def start_run(self, run: Run) -> None:
        with self._lock:
            self.con.execute(
                "INSERT INTO runs (id, tag, repo, started_at, host, config) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO NOTHING",
                [run.id, run.tag, run.repo, run.started_at, run.host, json.dumps(run.config)])

    def finish_run(self, run_id: str) -> None:
        with self._lock:
            self.con.execute("UPDATE runs SET finished_at = ? WHERE id = ?", [utcnow(), run_id])

    def add_experiment(self, exp: Experiment) -> Experiment:
        """Insert a new experiment; returns it with its id."""
        with self._lock:
            exp = replace(exp, id=self._take_id("experiments"))
            columns, values = self._experiment_values(exp)
            marks = ", ".join("?" for _ in values)
            self.con.execute(f"INSERT INTO experiments ({columns}) VALUES ({marks})", values)
            return exp

    def save_experiment(self, exp: Experiment) -> None:
        """Write every field of an existing experiment (status, commit, summary, ...). When it
        has finished, its buffered progress lines are written first and the snapshot refreshed,
        so a reader never sees a result without its curve."""
        if exp.id is None:
            raise ValueError("save_experiment needs an experiment from add_experiment")
        with self._lock:
            if exp.status.finished:
                self.flush()
            columns, values = self._experiment_values(exp)
            assignments = ", ".join(f"{c} = ?" for c in columns.split(", "))
            self.con.execute(f"UPDATE experiments SET {assignments} WHERE id = ?", [*values, exp.id])
            if exp.status.finished:
                self._snapshots.request()

    def record_decision(self, experiment_id: int, decision: Decision, source: DecisionSource,
                        reason: str, run_id: str, by: str = "", judgement: dict | None = None) -> None:
        """`by`: who gave a person's decision ("ada via tui"), in its events row like every override;
        `judgement`: the rule that decided and its numbers (delta, margin, sigma, dof), likewise."""
        with self._lock:
            self.con.execute(
                "UPDATE experiments SET decision = ?, decision_source = ?, decision_reason = ? WHERE id = ?",
                [decision.value, source.value, reason, experiment_id])
            detail = {"reason": reason, **({"by": by} if by else {}), **(judgement or {})}
            self.add_event(Event(t=utcnow(), run_id=run_id, kind=f"decision:{decision.value}",
                                 source=source.value, experiment_id=experiment_id, detail=detail))
            self._snapshots.request()

    def interrupt_unfinished(self, run_id: str) -> list[int]:
        """Mark experiments that were running when a supervisor died; returns their ids."""
        with self._lock:
            ids = [r[0] for r in self.con.execute(
                "SELECT id FROM experiments WHERE run_id = ? AND status = 'running' ORDER BY id", [run_id]).fetchall()]
            if ids:
                self.con.execute(
                    "UPDATE experiments SET status = 'interrupted', finished_at = ? WHERE id IN "
                    "(SELECT unnest(?::INTEGER[]))", [utcnow(), ids])
            return ids

    @staticmethod
    def _experiment_values(exp: Experiment):
        row = {
            "id": exp.id, "run_id": exp.run_id, "lane": exp.lane, "kind": exp.kind,
            "gpu_index": exp.gpu_index, "gpu_uuid": exp.gpu_uuid, "gpu_name": exp.gpu_name,
            "worktree": exp.worktree, "branch": exp.branch, "parent_commit": exp.parent_commit,
            '"commit"': exp.commit, "description": exp.description, "hypothesis": exp.hypothesis,
            "agent": exp.agent, "status": exp.status.value,
            "decision": exp.decision.value if exp.decision else None,
            "decision_source": exp.decision_source.value if exp.decision_source else None,
            "decision_reason": exp.decision_reason,
            **{k: exp.summary.get(k) for k in SUMMARY_COLUMNS},
            "extra": json.dumps(exp.extra) if exp.extra else None,
            '"change"': exp.change, "rerun_of": exp.rerun_of, "confirms": exp.confirms, "verifies": exp.verifies,
            "reference_for": exp.reference_for, "drafted_on": exp.drafted_on,
            "touched": list(exp.touched) if exp.touched else None,
            "notes": json.dumps(exp.notes) if exp.notes else None,
            "started_at": exp.started_at, "finished_at": exp.finished_at, "log_path": exp.log_path,
            "exit_code": exp.exit_code, "error": exp.error,
        }
        return ", ".join(row), list(row.values())

    # -- high-rate rows: batched ------------------------------------------------------------

    def add_metric(self, point: MetricPoint) -> None:
        with self._lock:
            self._metrics.append(_METRIC_ROW(point))
            self._maybe_flush()

    def add_metrics(self, points: list[MetricPoint]) -> None:
        with self._lock:
            self._metrics.extend(map(_METRIC_ROW, points))
            self._maybe_flush()

    def add_sample(self, sample: GpuSample) -> None:
        with self._lock:
            self._samples.append(_SAMPLE_ROW(sample))
            self._maybe_flush()

    def _maybe_flush(self) -> None:
        pending = len(self._metrics) + len(self._samples)
        if pending >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the buffered progress lines and GPU samples in one transaction each table."""
        with self._lock:
            for table, rows, cls in (("metrics", self._metrics, MetricPoint), ("telemetry", self._samples, GpuSample)):
                if rows:
                    names = [f.name for f in fields(cls)]
                    batch = pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})
                    self.con.register("_batch", batch)
                    try:
                        self.con.execute(f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM _batch")
                    finally:
                        self.con.unregister("_batch")
                    rows.clear()
                    self._big_tables_changed = True
            self._last_flush = time.monotonic()

    # -- low-rate rows ------------------------------------------------------------------------

    def add_llm_call(self, call: LlmCall) -> int:
        with self._lock:
            call_id = self._take_id("llm_calls")
            names = [f.name for f in fields(LlmCall)]
            self.con.execute(f"INSERT INTO llm_calls (id, {', '.join(names)}) VALUES (?{', ?' * len(names)})",
                             [call_id, *astuple(call)])
            return call_id

    def link_llm_calls(self, call_ids: list[int], experiment_id: int) -> None:
        """A proposal's LLM calls happen before its experiment exists; tie them to it after."""
        with self._lock:
            self.con.execute("UPDATE llm_calls SET experiment_id = ? WHERE id IN (SELECT unnest(?::INTEGER[]))",
                             [experiment_id, list(call_ids)])

    def add_event(self, event: Event) -> int:
        return self.add_events([event])[0]

    def add_events(self, events: list[Event]) -> list[int]:
        """Rows in one statement: a second's worth of external agents' calls costs one insert."""
        if not events:
            return []
        with self._lock:
            ids = [self._take_id("events") for _ in events]
            values = []
            for event_id, e in zip(ids, events):
                values += [event_id, e.t, e.run_id, e.kind, e.source, e.lane, e.experiment_id, json.dumps(e.detail)]
            self.con.execute("INSERT INTO events (id, t, run_id, kind, source, lane, experiment_id, detail) VALUES "
                             + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(events)), values)
            return ids

    def remember(self, text: str, tags=(), *, author: str = "", run_id: str | None = None,
                 experiment_id: int | None = None) -> int:
        """Store a memory and index its terms for recall, in one transaction."""
        with self._lock:
            memory_id = self._take_id("memories")
            counts = index_terms(text, tags)
            self.con.execute("BEGIN TRANSACTION")
            try:
                self.con.execute(
                    "INSERT INTO memories (id, t, run_id, experiment_id, author, text, tags, doc_len) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [memory_id, utcnow(), run_id, experiment_id, author, text, list(tags), sum(counts.values())])
                if counts:
                    self.con.executemany("INSERT INTO memory_terms VALUES (?, ?, ?)",
                                         [(memory_id, term, tf) for term, tf in counts.items()])
                self.con.execute("COMMIT")
            except BaseException:
                self.con.execute("ROLLBACK")
                raise
            return memory_id

    # -- reads ----------------------------------------------------------------------------------

    def recall(self, query: str, k: int = 5) -> list[Memory]:
        with self._lock:
            return queries.recall(self.con, query, k)

    def experiments(self, run_id: str | None = None, tag: str | None = None) -> list[Experiment]:
        with self._lock:
            return queries.experiments(self.con, run_id, tag)

    def claims(self, run_id: str | None = None, tag: str | None = None) -> list[Claim]:
        with self._lock:
            return queries.claims(self.con, run_id, tag)

    def frontier_moves(self, run_id: str | None = None, tag: str | None = None) -> list[FrontierMove]:
        with self._lock:
            return queries.frontier_moves(self.con, run_id, tag)

    def run_evidence(self, experiment_id: int, metric: Metric,
                     diff: Callable[[str, str], str] | None = None) -> RunEvidence | None:
        """How one run went (results/evidence.py), its progress lines written first."""
        with self._lock:
            self.flush()
            return run_evidence(self.con, experiment_id, metric, diff)

    def run_ids(self, tag: str) -> list[str]:
        """The supervisor sessions of a research tag, oldest first."""
        with self._lock:
            return [r[0] for r in self.con.execute(
                "SELECT id FROM runs WHERE tag = ? ORDER BY started_at, id", [tag]).fetchall()]

    def latest_tag(self) -> str | None:
        with self._lock:
            return queries.latest_tag(self.con)

    def leaderboard(self, run_id: str | None = None, limit: int | None = None, metric=None):
        with self._lock:
            return queries.leaderboard(self.con, run_id, limit, metric)

    # -- snapshots for readers in other processes -------------------------------------------

    def refresh_snapshot(self, full: bool = False, timeout: float | None = None) -> Path | None:
        """Take a snapshot now and wait for it (the writer's methods only ask for one). With
        full=True the progress lines and GPU samples are re-exported too. Returns the folder."""
        self.flush()
        return self._snapshots.wait(self._snapshots.request(full), timeout)

    @property
    def snapshot_error(self) -> str | None:
        """Why the last snapshot failed, if it did (the log has the traceback)."""
        return self._snapshots.error

    def close(self) -> None:
        with self._lock:
            if self.con is None:
                return
            self.flush()
            # Readers open the file itself once it is closed, so an unfinished snapshot is moot.
            self._snapshots.stop()
            self.con.close()
            self.con = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Snapshotter:
    """Refreshes the Parquet snapshot on its own thread and its own DuckDB cursor. Requests
    coalesce: however many experiments finish during one export, the next export covers them
    all. A failed export (a full disk, say) is logged and leaves the previous snapshot in place;
    it never reaches the writer."""

    def __init__(self, store: Store, full_every: float):
        self.store = store
        self.root = snapshot_root(store.path)
        self.full_every = full_every
        self.cursor = store.con.cursor()
        self.error: str | None = None
        self.latest: Path | None = None
        self._changed = threading.Condition()
        self._requested = self._done = 0
        self._full_wanted = False
        self._last_full = float("-inf")
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="store-snapshots", daemon=True)
        self._thread.start()

    def request(self, full: bool = False) -> int:
        with self._changed:
            self._requested += 1
            self._full_wanted |= full
            self._changed.notify_all()
            return self._requested

    def wait(self, ticket: int, timeout: float | None = None) -> Path | None:
        with self._changed:
            self._changed.wait_for(lambda: self._done >= ticket or self._stopping, timeout)
            return self.latest

    def stop(self) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        try:
            self.cursor.interrupt()
        except duckdb.Error:
            pass
        self._thread.join()
        self.cursor.close()

    def _loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._requested > self._done or self._stopping)
                if self._stopping:
                    return
                ticket, full = self._requested, self._full_wanted
                self._full_wanted = False
            full = full or time.monotonic() - self._last_full >= self.full_every
            try:
                self.latest = self._export(full and self.store._big_tables_changed)
                self.error = None
            except Exception as e:  # noqa: BLE001 - the writer must outlive a failed snapshot
                if not self._stopping:
                    self.error = f"{type(e).__name__}: {e}"
                    log.exception("snapshot of %s failed; readers keep the previous one", self.store.path)
            with self._changed:
                self._done = ticket
                self._changed.notify_all()

    def _export(self, full: bool) -> Path:
        self.root.mkdir(exist_ok=True)
        previous = _current_snapshot(self.root)
        full = full or previous is None
        number = int(previous.name) + 1 if previous is not None else 1
        tmp = self.root / f".tmp-{number:08d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            if full:
                # Cleared before the export: rows flushed during it set it again.
                self.store._big_tables_changed = False
            self.cursor.execute("BEGIN TRANSACTION")  # one consistent view of every table
            try:
                for table in TABLES:
                    target = tmp / f"{table}.parquet"
                    if not full and table in BIG_TABLES and (previous / target.name).exists():
                        os.link(previous / target.name, target)
                    else:
                        self.cursor.execute(f"COPY (SELECT * FROM {table}) TO {_sql_path(target)} (FORMAT parquet)")
            finally:
                try:
                    self.cursor.execute("ROLLBACK")  # read-only: nothing to commit
                except duckdb.Error:
                    pass
            final = self.root / f"{number:08d}"
            os.rename(tmp, final)
        except BaseException:
            if full:
                self.store._big_tables_changed = True
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        pointer = self.root / "CURRENT.tmp"
        pointer.write_text(final.name)
        os.replace(pointer, self.root / "CURRENT")
        if full:
            self._last_full = time.monotonic()
        self._prune(final)
        return final

    def _prune(self, current: Path) -> None:
        now = time.time()
        older = sorted(p for p in self.root.iterdir() if p.name.isdigit() and p != current)
        for old in older[:-(SNAPSHOTS_KEPT - 1) or None]:
            try:
                if now - old.stat().st_mtime >= SNAPSHOT_GRACE_SECONDS:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        for stale in self.root.glob(".tmp-*"):  # left by a writer that was killed mid-export
            if not stale.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(stale, ignore_errors=True)


def _close_at_exit(ref) -> None:
    store = ref()
    if store is not None:
        store.close()


def _current_snapshot(root: Path) -> Path | None:
    try:
        name = (root / "CURRENT").read_text().strip()
    except OSError:
        return None
    path = root / name
    return path if path.is_dir() else None


class Reader:
    """Read access from any process. With no writer, it opens the file read-only; while a
    supervisor holds the file, it reads the writer's latest Parquet snapshot instead."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"no experiment log at {self.path}: run the supervisor first or pass --db.")
        try:
            self.con = _connect(self.path, read_only=True)
            self.live = False
            if current_version(self.con) != SCHEMA_VERSION:
                self.con.close()
                self._upgrade()
                self.con = _connect(self.path, read_only=True)
        except _Locked:
            self.con = self._open_snapshot()
            self.live = True

    def _upgrade(self) -> None:
        Store(self.path).close()  # migrates forward, or refuses a newer file with a clear message

    def _open_snapshot(self):
        snapshot = _current_snapshot(snapshot_root(self.path))
        if snapshot is None:
            raise StoreError(f"{self.path} is being written and has no snapshot yet; try again in a moment.")
        con = duckdb.connect()
        for table in TABLES:
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet({_sql_path(snapshot / (table + '.parquet'))})")
        return con

    def experiments(self, run_id: str | None = None, tag: str | None = None) -> list[Experiment]:
        return queries.experiments(self.con, run_id, tag)

    def latest_tag(self) -> str | None:
        return queries.latest_tag(self.con)

    def claims(self, run_id: str | None = None, tag: str | None = None) -> list[Claim]:
        return queries.claims(self.con, run_id, tag)

    def leaderboard(self, run_id: str | None = None, limit: int | None = None):
        return queries.leaderboard(self.con, run_id, limit)

    def frontier_moves(self, run_id: str | None = None, tag: str | None = None) -> list[FrontierMove]:
        return queries.frontier_moves(self.con, run_id, tag)

    def metric(self, run_id: str | None = None):
        """The metric the (latest, or given) session judged by: results.metric.Metric."""
        return queries.metric_of(self.con, run_id)

    def recall(self, query: str, k: int = 5) -> list[Memory]:
        return queries.recall(self.con, query, k)

    def noise(self, run_id: str | None = None) -> list[NoiseRow]:
        return queries.noise(self.con, run_id)

    def spending(self, run_id: str | None = None) -> SpendingRow:
        return queries.spending(self.con, run_id)

    def export_parquet(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        out = []
        for table in TABLES:
            target = folder / f"{table}.parquet"
            tmp = folder / f".{table}.parquet.tmp"
            self.con.execute(f"COPY (SELECT * FROM {table}) TO {_sql_path(tmp)} (FORMAT parquet)")
            os.replace(tmp, target)
            out.append(target)
        return out

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
