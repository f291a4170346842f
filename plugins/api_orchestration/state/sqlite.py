"""Embedded default backend: one SQLite file shared by every process of one host.

Each decision is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock), so decisions from
all processes are serialised; the clock is the host's ``time.time()``, the same for them all.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import fields
from typing import Any

from api_orchestration.errors import ConfigurationError, StateBackendError
from api_orchestration.policy import BreakerPolicy, RateLimit
from api_orchestration.resilience import breaker as brk
from api_orchestration.resilience import limiter as rl
from api_orchestration.state.base import Admission, Batch, StateBackend, Transition, Verdict

SCHEMA_VERSION = 3  # bump on any change: older state is dropped (it is only rate and breaker state)
_DROP = (
    "DROP TABLE IF EXISTS limiter; DROP TABLE IF EXISTS limiter_slot; DROP TABLE IF EXISTS breaker;"
    "DROP TABLE IF EXISTS saga_outcome;"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS limiter (
    key TEXT PRIMARY KEY, tat REAL, last_slot REAL, paused_until REAL, last_retry_after REAL, granted INTEGER,
    limit_permits INTEGER, limit_window REAL, limit_burst INTEGER, period_start REAL, period_count INTEGER);
CREATE TABLE IF NOT EXISTS limiter_slot (key TEXT NOT NULL, slot REAL NOT NULL);
CREATE INDEX IF NOT EXISTS limiter_slot_key_slot ON limiter_slot (key, slot);
CREATE TABLE IF NOT EXISTS breaker (
    key TEXT PRIMARY KEY, state TEXT, gen INTEGER, opened_until REAL, half_open_since REAL,
    trials_issued INTEGER, trial_successes INTEGER, trial_failures INTEGER, outcomes TEXT, seq INTEGER, changed_at REAL,
    leases TEXT);
CREATE TABLE IF NOT EXISTS saga_outcome (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL, body TEXT);
"""
_LIMITER_FIELDS = [f.name for f in fields(rl.LimiterRecord)]
_BREAKER_FIELDS = [f.name for f in fields(brk.BreakerRecord)]
Leases = dict[str, float]  # lease id -> expiry, for calls in flight (kept in the breaker row)


def _parse_leases(text: str | None) -> Leases:
    if not text:
        return {}
    return {lease: float(expires) for lease, expires in (item.split("=") for item in text.split(";"))}


def _format_leases(leases: Leases) -> str:
    return ";".join(f"{lease}={expires!r}" for lease, expires in leases.items())


def _values(record: object) -> tuple:
    return tuple(vars(record).values())  # field order; dataclasses.asdict deep-copies (slow)


def _upsert_sql(table: str, names: list[str]) -> str:
    cols = ", ".join(["key", *names])
    marks = ", ".join("?" * (len(names) + 1))
    return f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})"


class _SlotLog:
    """The latest reserved slots of a bursty key as one batch sees them: ``older`` holds the stored
    ones from the ``offset``-th latest on (newest first), ``added`` the batch's own (oldest first)."""

    def __init__(self, permits: int, offset: int, older: list[float]) -> None:
        self.permits, self.offset, self.older, self.added = permits, offset, older, []

    def nth_latest(self) -> float | None:
        """The ``permits``-th most recent slot, counting the batch's own."""
        j = len(self.added)
        if j >= self.permits:
            return self.added[j - self.permits]
        i = self.permits - 1 - j - self.offset
        return self.older[i] if 0 <= i < len(self.older) else None


def path_from_url(url: str) -> str:
    """``sqlite:////abs/path.db`` (SQLAlchemy's form: three slashes, then an absolute path)."""
    path = url.removeprefix("sqlite:///")
    if not url.startswith("sqlite:///") or not os.path.isabs(path):
        raise ConfigurationError(
            "state_url",
            "sqlite path",
            url,
            "must be absolute, like sqlite:////opt/airflow/api_orchestration_state.db "
            "(every process must open the same file)",
        )
    return path


class SQLiteBackend(StateBackend):
    """Shared state in one SQLite file (WAL mode), one connection per process and thread."""

    def __init__(self, url: str, *, timeout: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.url, self.path, self.timeout, self.clock = url, path_from_url(url), timeout, clock
        self._local = threading.local()
        self._limiter_upsert = _upsert_sql("limiter", _LIMITER_FIELDS)
        self._breaker_upsert = _upsert_sql("breaker", [*_BREAKER_FIELDS, "leases"])

    # -- connection and transactions ------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            self._set_up(conn)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _set_up(self, conn: sqlite3.Connection) -> None:
        """WAL mode and the schema. Several processes may open a new file at once, and switching
        to WAL does not wait on SQLite's busy handler: retry until ``timeout``."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                self._migrate(conn)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.005, 0.05))

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
                for statement in (_DROP + _SCHEMA).split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _transaction(self, operation: str, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: takes the write lock), or with ``begin="BEGIN"``
        a read one (a consistent view without the write lock)."""
        conn: sqlite3.Connection | None = None
        try:
            conn = self._conn()
            conn.execute(begin)
            yield conn
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            self._rollback(conn)
            raise StateBackendError(self.url, operation, exc) from exc
        except BaseException:
            self._rollback(conn)
            raise

    @staticmethod
    def _rollback(conn: sqlite3.Connection | None) -> None:
        if conn is not None and conn.in_transaction:
            with suppress(sqlite3.Error):
                conn.execute("ROLLBACK")

    def _read(self, conn: sqlite3.Connection, table: str, names: list[str], key: str) -> tuple | None:
        return conn.execute(f"SELECT {', '.join(names)} FROM {table} WHERE key = ?", (key,)).fetchone()

    # -- admissions: one call, or a batch of calls, per transaction --------------------------------
    def admit_many(
        self,
        count: int,
        limit_key: str | None,
        limit: RateLimit | None,
        breaker_key: str | None,
        breaker: BreakerPolicy | None,
        max_wait: float,
        lease_seconds: float,
        verdicts: Sequence[Verdict] = (),
    ) -> Batch:
        """:meth:`admit` ``count`` times in one transaction: rows read once, decided in memory
        (the same functions, in the same order), written once."""
        with self._transaction("admit_many") as conn:
            recorded = tuple(self._record(conn, v) for v in verdicts)
            now = self.clock()
            lrec, log = None, None
            if limit_key is not None:
                row = self._read(conn, "limiter", _LIMITER_FIELDS, limit_key)
                lrec = rl.LimiterRecord(*row) if row else rl.LimiterRecord()
                log = self._slot_log(conn, limit_key, limit, now, count)
            brec, leases, gen_before = None, {}, 0
            if breaker is not None and breaker_key is not None:
                brec, leases = self._breaker(conn, breaker_key)
                gen_before = brec.gen
                leases = {lease: expires for lease, expires in leases.items() if expires > now}
            granted: list[Admission] = []
            refused: Admission | None = None
            acquired = False  # the breaker was asked (a refused slot leaves it untouched)
            for _ in range(count):
                slot, paused = now, False
                if lrec is not None:
                    slot = rl.next_slot(lrec, limit, now, log.nth_latest() if log else None)
                    paused = lrec.paused_until > now
                    if slot - now > max_wait:
                        refused = Admission(False, "defer", slot - now, paused)
                        break
                decision = None
                if brec is not None:
                    acquired = True
                    decision = brk.acquire(brec, breaker, now, len(leases))  # type: ignore[arg-type]
                    if not decision.allowed:
                        refused = Admission(False, decision.kind, decision.wait, paused, decision)
                        break
                    if decision.lease:
                        leases[decision.lease] = now + lease_seconds
                if lrec is not None and limit is not None:
                    rl.reserve(lrec, limit, slot)
                    if log is not None:
                        log.added.append(slot)
                granted.append(Admission(True, "ok", slot - now, paused, decision))
            if brec is not None and acquired:
                self._save_breaker(conn, breaker_key, brec, gen_before, leases)  # type: ignore[arg-type]
            if granted and lrec is not None and limit is not None:
                conn.execute(self._limiter_upsert, (limit_key, *_values(lrec)))
                if log is not None:
                    conn.executemany(
                        "INSERT INTO limiter_slot (key, slot) VALUES (?, ?)",
                        [(limit_key, t) for t in log.added],
                    )
            return Batch(tuple(granted), refused, recorded)

    def _slot_log(
        self, conn: sqlite3.Connection, key: str, limit: RateLimit | None, now: float, count: int
    ) -> _SlotLog | None:
        """What a batch of ``count`` needs of a bursty key's slot log (older slots are dropped)."""
        if limit is None or limit.burst == 1:
            return None
        conn.execute("DELETE FROM limiter_slot WHERE key = ? AND slot <= ?", (key, now - limit.window))
        offset = max(0, limit.permits - count)
        rows = conn.execute(
            "SELECT slot FROM limiter_slot WHERE key = ? ORDER BY slot DESC LIMIT ? OFFSET ?",
            (key, limit.permits - offset, offset),
        ).fetchall()
        return _SlotLog(limit.permits, offset, [slot for (slot,) in rows])

    # -- limiter --------------------------------------------------------------------------------
    def limiter_pause(self, key: str, seconds: float) -> float:
        with self._transaction("limiter_pause") as conn:
            row = self._read(conn, "limiter", _LIMITER_FIELDS, key)
            rec = rl.LimiterRecord(*row) if row else rl.LimiterRecord()
            until = rl.pause(rec, self.clock(), seconds)
            conn.execute(self._limiter_upsert, (key, *_values(rec)))
            return until

    def limiter_status(self, key: str) -> dict[str, Any] | None:
        with self._transaction("limiter_status") as conn:
            row = self._read(conn, "limiter", _LIMITER_FIELDS, key)
            return {**vars(rl.LimiterRecord(*row)), "now": self.clock()} if row else None

    # -- breaker --------------------------------------------------------------------------------
    def _breaker(self, conn: sqlite3.Connection, key: str) -> tuple[brk.BreakerRecord, Leases]:
        row = self._read(conn, "breaker", [*_BREAKER_FIELDS, "leases"], key)
        if not row:
            return brk.BreakerRecord(), {}
        return brk.BreakerRecord(*row[:-1]), _parse_leases(row[-1])

    def _save_breaker(
        self, conn: sqlite3.Connection, key: str, rec: brk.BreakerRecord, gen_before: int, leases: Leases
    ) -> None:
        """Store the record; a state change (new ``gen``) drops the leases of the old state."""
        kept = _format_leases(leases) if rec.gen == gen_before else ""
        conn.execute(self._breaker_upsert, (key, *_values(rec), kept))

    def breaker_record(
        self, key: str, policy: BreakerPolicy, decision: brk.BreakerDecision, failed: bool
    ) -> Transition:
        with self._transaction("breaker_record") as conn:
            return self._record(conn, Verdict(key, policy, decision, failed))

    def _record(self, conn: sqlite3.Connection, verdict: Verdict) -> Transition:
        rec, leases = self._breaker(conn, verdict.key)
        before, gen_before = rec.state, rec.gen
        leases.pop(verdict.decision.lease, None)
        brk.record(rec, verdict.policy, verdict.decision, verdict.failed, self.clock())
        self._save_breaker(conn, verdict.key, rec, gen_before, leases)
        return Transition(before, rec.state)

    def breaker_status(self, key: str) -> dict[str, Any] | None:
        with self._transaction("breaker_status") as conn:
            if not self._read(conn, "breaker", ["key"], key):
                return None
            rec, leases = self._breaker(conn, key)
            now = self.clock()
            return {**vars(rec), "in_flight": sum(1 for e in leases.values() if e > now), "now": now}

    def breaker_reset(self, key: str) -> None:
        with self._transaction("breaker_reset") as conn:
            rec, _ = self._breaker(conn, key)
            fresh = brk.BreakerRecord(gen=rec.gen + 1, changed_at=self.clock())
            self._save_breaker(conn, key, fresh, rec.gen, {})

    def clear(self) -> None:
        with self._transaction("clear") as conn:
            for table in ("limiter", "limiter_slot", "breaker", "saga_outcome"):
                conn.execute(f"DELETE FROM {table}")

    # -- status page: read-only snapshot, saga outcome records ------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self._transaction("snapshot", begin="BEGIN") as conn:
            now = self.clock()
            limiters: dict[str, dict[str, Any]] = {}
            for key, *row in conn.execute(f"SELECT key, {', '.join(_LIMITER_FIELDS)} FROM limiter"):
                rec = rl.LimiterRecord(*(0 if v is None else v for v in row))
                nth = None
                if rec.limit_burst > 1:
                    found = conn.execute(
                        "SELECT slot FROM limiter_slot WHERE key = ? ORDER BY slot DESC LIMIT 1 OFFSET ?",
                        (key, rec.limit_permits - 1),
                    ).fetchone()
                    nth = found[0] if found else None
                limiters[key] = {**vars(rec), "nth_latest": nth, "now": now}
            breakers: dict[str, dict[str, Any]] = {}
            for key, *row in conn.execute(f"SELECT key, {', '.join(_BREAKER_FIELDS)}, leases FROM breaker"):
                rec = brk.BreakerRecord(*row[:-1])
                in_flight = sum(1 for e in _parse_leases(row[-1]).values() if e > now)
                breakers[key] = {**vars(rec), "in_flight": in_flight, "now": now}
            return {"now": now, "limiters": limiters, "breakers": breakers}

    def saga_record(self, entry: dict[str, Any], keep: int = 100) -> None:
        body = json.dumps(entry, default=str)
        with self._transaction("saga_record") as conn:
            conn.execute("INSERT INTO saga_outcome (at, body) VALUES (?, ?)", (self.clock(), body))
            conn.execute(
                "DELETE FROM saga_outcome WHERE id NOT IN (SELECT id FROM saga_outcome ORDER BY id DESC LIMIT ?)",
                (keep,),
            )

    def saga_recent(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._transaction("saga_recent", begin="BEGIN") as conn:
            rows = conn.execute("SELECT body FROM saga_outcome ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [json.loads(body) for (body,) in rows]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
