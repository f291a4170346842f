"""Embedded default backend: one SQLite file shared by every process of one host.

Each decision is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock), so decisions from
all processes are serialised; the clock is the host's ``time.time()``, the same for them all.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from typing import Any

from api_orchestration import breaker as brk
from api_orchestration import ratelimit as rl
from api_orchestration.errors import ConfigurationError, StateBackendError
from api_orchestration.policy import BreakerPolicy, RateLimit
from api_orchestration.state.base import StateBackend, Transition

_SCHEMA = """
CREATE TABLE IF NOT EXISTS limiter (
    key TEXT PRIMARY KEY, tat REAL, last_slot REAL, paused_until REAL, last_retry_after REAL, granted INTEGER);
CREATE TABLE IF NOT EXISTS limiter_slot (key TEXT NOT NULL, slot REAL NOT NULL);
CREATE INDEX IF NOT EXISTS limiter_slot_key_slot ON limiter_slot (key, slot);
CREATE TABLE IF NOT EXISTS breaker (
    key TEXT PRIMARY KEY, state TEXT, gen INTEGER, opened_until REAL, half_open_since REAL,
    trials_issued INTEGER, trial_successes INTEGER, trial_failures INTEGER, outcomes TEXT, seq INTEGER, changed_at REAL);
CREATE TABLE IF NOT EXISTS breaker_lease (key TEXT NOT NULL, lease TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (key, lease));
"""
_LIMITER_FIELDS = [f.name for f in fields(rl.LimiterRecord)]
_BREAKER_FIELDS = [f.name for f in fields(brk.BreakerRecord)]


def _upsert_sql(table: str, names: list[str]) -> str:
    cols = ", ".join(["key", *names])
    marks = ", ".join("?" * (len(names) + 1))
    return f"INSERT OR REPLACE INTO {table} ({cols}) VALUES ({marks})"


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
        self._breaker_upsert = _upsert_sql("breaker", _BREAKER_FIELDS)

    # -- connection and transactions ------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def _transaction(self, operation: str) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, OSError) as exc:
            raise StateBackendError(self.url, operation, exc) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StateBackendError(self.url, operation, exc) from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _read(self, conn: sqlite3.Connection, table: str, names: list[str], key: str) -> tuple | None:
        return conn.execute(f"SELECT {', '.join(names)} FROM {table} WHERE key = ?", (key,)).fetchone()

    # -- limiter --------------------------------------------------------------------------------
    def limiter_acquire(self, key: str, limit: RateLimit | None, max_wait: float) -> rl.LimiterDecision:
        with self._transaction("limiter_acquire") as conn:
            now = self.clock()
            row = self._read(conn, "limiter", _LIMITER_FIELDS, key)
            rec = rl.LimiterRecord(*row) if row else rl.LimiterRecord()
            nth = None
            if limit is not None and limit.burst > 1:
                conn.execute(
                    "DELETE FROM limiter_slot WHERE key = ? AND slot <= ?", (key, now - limit.window)
                )
                found = conn.execute(
                    "SELECT slot FROM limiter_slot WHERE key = ? ORDER BY slot DESC LIMIT 1 OFFSET ?",
                    (key, limit.permits - 1),
                ).fetchone()
                nth = found[0] if found else None
            decision, slot = rl.decide(rec, limit, now, max_wait, nth)
            if slot is not None:
                conn.execute(self._limiter_upsert, (key, *asdict(rec).values()))
                if limit is not None and limit.burst > 1:
                    conn.execute("INSERT INTO limiter_slot (key, slot) VALUES (?, ?)", (key, slot))
            return decision

    def limiter_pause(self, key: str, seconds: float) -> float:
        with self._transaction("limiter_pause") as conn:
            row = self._read(conn, "limiter", _LIMITER_FIELDS, key)
            rec = rl.LimiterRecord(*row) if row else rl.LimiterRecord()
            until = rl.pause(rec, self.clock(), seconds)
            conn.execute(self._limiter_upsert, (key, *asdict(rec).values()))
            return until

    def limiter_status(self, key: str) -> dict[str, Any] | None:
        with self._transaction("limiter_status") as conn:
            row = self._read(conn, "limiter", _LIMITER_FIELDS, key)
            return {**asdict(rl.LimiterRecord(*row)), "now": self.clock()} if row else None

    # -- breaker --------------------------------------------------------------------------------
    def _breaker(self, conn: sqlite3.Connection, key: str) -> brk.BreakerRecord:
        row = self._read(conn, "breaker", _BREAKER_FIELDS, key)
        return brk.BreakerRecord(*row) if row else brk.BreakerRecord()

    def _save_breaker(
        self, conn: sqlite3.Connection, key: str, rec: brk.BreakerRecord, gen_before: int
    ) -> None:
        conn.execute(self._breaker_upsert, (key, *asdict(rec).values()))
        if rec.gen != gen_before:
            conn.execute("DELETE FROM breaker_lease WHERE key = ?", (key,))

    def breaker_acquire(self, key: str, policy: BreakerPolicy, lease_seconds: float) -> brk.BreakerDecision:
        with self._transaction("breaker_acquire") as conn:
            now = self.clock()
            rec = self._breaker(conn, key)
            gen_before = rec.gen
            conn.execute("DELETE FROM breaker_lease WHERE key = ? AND expires <= ?", (key, now))
            (in_flight,) = conn.execute("SELECT COUNT(*) FROM breaker_lease WHERE key = ?", (key,)).fetchone()
            decision = brk.acquire(rec, policy, now, in_flight)
            self._save_breaker(conn, key, rec, gen_before)
            if decision.lease:
                conn.execute(
                    "INSERT INTO breaker_lease (key, lease, expires) VALUES (?, ?, ?)",
                    (key, decision.lease, now + lease_seconds),
                )
            return decision

    def breaker_record(
        self, key: str, policy: BreakerPolicy, decision: brk.BreakerDecision, failed: bool
    ) -> Transition:
        with self._transaction("breaker_record") as conn:
            rec = self._breaker(conn, key)
            before, gen_before = rec.state, rec.gen
            if decision.lease:
                conn.execute("DELETE FROM breaker_lease WHERE key = ? AND lease = ?", (key, decision.lease))
            brk.record(rec, policy, decision, failed, self.clock())
            self._save_breaker(conn, key, rec, gen_before)
            return Transition(before, rec.state)

    def breaker_status(self, key: str) -> dict[str, Any] | None:
        with self._transaction("breaker_status") as conn:
            row = self._read(conn, "breaker", _BREAKER_FIELDS, key)
            if not row:
                return None
            (in_flight,) = conn.execute(
                "SELECT COUNT(*) FROM breaker_lease WHERE key = ? AND expires > ?", (key, self.clock())
            ).fetchone()
            return {**asdict(brk.BreakerRecord(*row)), "in_flight": in_flight, "now": self.clock()}

    def breaker_reset(self, key: str) -> None:
        with self._transaction("breaker_reset") as conn:
            rec = self._breaker(conn, key)
            fresh = brk.BreakerRecord(gen=rec.gen + 1, changed_at=self.clock())
            self._save_breaker(conn, key, fresh, rec.gen)

    def clear(self) -> None:
        with self._transaction("clear") as conn:
            for table in ("limiter", "limiter_slot", "breaker", "breaker_lease"):
                conn.execute(f"DELETE FROM {table}")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
