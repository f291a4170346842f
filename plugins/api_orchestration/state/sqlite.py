"""Embedded default store: one SQLite file shared by every process of one host.

Each decision is one ``BEGIN IMMEDIATE`` transaction (SQLite's write lock), so decisions from all
processes are serialised; the clock is the host's ``time.time()``, the same for them all. The
decisions themselves are :mod:`api_orchestration.resilience.admission`'s, run on the rows read.
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

from api_orchestration.errors import ConfigurationError
from api_orchestration.resilience import admission as adm
from api_orchestration.resilience import breaker as brk
from api_orchestration.resilience import limiter as rl
from api_orchestration.resilience import policy_claims as pc
from api_orchestration.resilience import tokens as tok
from api_orchestration.resilience.kinds import BreakerState
from api_orchestration.state.base import (
    Admission,
    AdmissionRequest,
    Batch,
    BreakerStatus,
    CachePut,
    CacheStats,
    LimiterStatus,
    Snapshot,
    StateBackend,
    Transition,
    Verdict,
)

SCHEMA_VERSION = 7  # bump on any change: older state is dropped (it is only rate and breaker state)
_DROP = (
    "DROP TABLE IF EXISTS limiter; DROP TABLE IF EXISTS limiter_slot; DROP TABLE IF EXISTS breaker;"
    "DROP TABLE IF EXISTS saga_outcome; DROP TABLE IF EXISTS cache_entry; DROP TABLE IF EXISTS stream_run;"
    "DROP TABLE IF EXISTS oauth_token; DROP TABLE IF EXISTS policy_claim;"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS limiter (
    key TEXT PRIMARY KEY, tat REAL, last_slot REAL, paused_until REAL, last_retry_after REAL, granted INTEGER,
    leased INTEGER, limit_permits INTEGER, limit_window REAL, limit_burst INTEGER, period_start REAL,
    period_count INTEGER, leases TEXT);
CREATE TABLE IF NOT EXISTS limiter_slot (key TEXT NOT NULL, slot REAL NOT NULL);
CREATE INDEX IF NOT EXISTS limiter_slot_key_slot ON limiter_slot (key, slot);
CREATE TABLE IF NOT EXISTS breaker (
    key TEXT PRIMARY KEY, state TEXT, gen INTEGER, opened_until REAL, half_open_since REAL,
    trials_issued INTEGER, trial_successes INTEGER, trial_failures INTEGER, outcomes TEXT, seq INTEGER, changed_at REAL,
    leases TEXT);
CREATE TABLE IF NOT EXISTS saga_outcome (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL, body TEXT);
CREATE TABLE IF NOT EXISTS oauth_token (
    name TEXT PRIMARY KEY, entry TEXT, expires_at REAL, fingerprint TEXT, lease_holder TEXT, lease_until REAL);
CREATE TABLE IF NOT EXISTS policy_claim (name TEXT PRIMARY KEY, policy TEXT, owner TEXT, seen_at REAL);
CREATE TABLE IF NOT EXISTS cache_entry (
    scope TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL, size INTEGER NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (scope, key));
CREATE INDEX IF NOT EXISTS cache_entry_expiry ON cache_entry (scope, expires_at);
CREATE TABLE IF NOT EXISTS stream_run (key TEXT PRIMARY KEY, at REAL, body TEXT);
"""
_LIMITER_FIELDS = [f.name for f in fields(rl.LimiterRecord)]
_BREAKER_FIELDS = [f.name for f in fields(brk.BreakerRecord)]
Leases = dict[str, float]  # lease id -> expiry (kept in the limiter row: bulkhead; breaker row: breaker)


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

    driver_errors = (sqlite3.Error, OSError)

    def __init__(self, url: str, *, timeout: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.url, self.path, self.timeout, self.clock = url, path_from_url(url), timeout, clock
        self.local_clock = clock is time.time
        self._local = threading.local()
        self._limiter_upsert = _upsert_sql("limiter", [*_LIMITER_FIELDS, "leases"])
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
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``: takes the write lock), or with ``begin="BEGIN"``
        a read one (a consistent view without the write lock). Errors roll back and propagate (the
        operation's wrapper turns driver errors into StateBackendError)."""
        conn: sqlite3.Connection | None = None
        try:
            conn = self._conn()
            conn.execute(begin)
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn is not None and conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise

    def _read(self, conn: sqlite3.Connection, table: str, names: list[str], key: str) -> tuple | None:
        return conn.execute(f"SELECT {', '.join(names)} FROM {table} WHERE key = ?", (key,)).fetchone()

    def _limiter(self, conn: sqlite3.Connection, key: str) -> tuple[rl.LimiterRecord, Leases, bool]:
        row = self._read(conn, "limiter", [*_LIMITER_FIELDS, "leases"], key)
        if not row:
            return rl.LimiterRecord(), {}, False
        return rl.LimiterRecord(*(0 if v is None else v for v in row[:-1])), _parse_leases(row[-1]), True

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

    def _save_limiter(
        self, conn: sqlite3.Connection, key: str, rec: rl.LimiterRecord, leases: Leases
    ) -> None:
        conn.execute(self._limiter_upsert, (key, *_values(rec), _format_leases(leases)))

    # -- admissions: a batch of calls per transaction ------------------------------------------------
    def admit_many(self, count: int, request: AdmissionRequest, verdicts: Sequence[Verdict] = ()) -> Batch:
        """Rows read once, decided by ``admit_batch`` in memory, written once."""
        r = request
        with self._transaction() as conn:
            recorded = tuple(self._record(conn, v) for v in verdicts)
            now = self.clock()
            state = adm.AdmissionState()
            if r.limit_key is not None:
                state.limiter, state.bulkhead_leases, _ = self._limiter(conn, r.limit_key)
                state.slots = self._slot_log(conn, r.limit_key, r.limit, now, count)
                for limit in r.more_windows:  # a multi-window key: one record per longer window
                    sub = adm.window_key(r.limit_key, limit)
                    rec = self._limiter(conn, sub)[0]
                    state.more.append(
                        adm.WindowState(sub, limit, rec, self._slot_log(conn, sub, limit, now, count))
                    )
            if r.has_breaker:
                state.breaker, state.breaker_leases = self._breaker(conn, r.breaker_key)  # type: ignore[arg-type]
            result = adm.admit_batch(count, r, state, now)
            if result.breaker_asked:
                self._save_breaker(
                    conn,
                    r.breaker_key,
                    state.breaker,
                    result.breaker_gen_before,
                    state.breaker_leases,  # type: ignore[arg-type]
                )
            if result.granted and state.limiter is not None and (r.limit is not None or r.has_bulkhead):
                self._save_limiter(conn, r.limit_key, state.limiter, state.bulkhead_leases)  # type: ignore[arg-type]
                self._save_slots(conn, r.limit_key, state.slots)
                for w in state.more:
                    self._save_limiter(conn, w.key, w.rec, {})
                    self._save_slots(conn, w.key, w.slots)
            return Batch(tuple(result.granted), result.refused, recorded)

    @staticmethod
    def _save_slots(conn: sqlite3.Connection, key: str, slots: adm.SlotLog | None) -> None:
        if slots is not None and slots.added:
            conn.executemany(
                "INSERT INTO limiter_slot (key, slot) VALUES (?, ?)", [(key, t) for t in slots.added]
            )

    def _slot_log(
        self, conn: sqlite3.Connection, key: str, limit: Any, now: float, count: int
    ) -> adm.SlotLog | None:
        """What a batch of ``count`` needs of a bursty key's slot log (older slots are dropped)."""
        window = adm.slot_log_window(limit, count)
        if window is None:
            return None
        offset, n = window
        conn.execute("DELETE FROM limiter_slot WHERE key = ? AND slot <= ?", (key, now - limit.window))
        rows = conn.execute(
            "SELECT slot FROM limiter_slot WHERE key = ? ORDER BY slot DESC LIMIT ? OFFSET ?",
            (key, n, offset),
        ).fetchall()
        return adm.SlotLog(limit.permits, offset, [slot for (slot,) in rows])

    def record(self, verdict: Verdict) -> Transition:
        with self._transaction() as conn:
            return self._record(conn, verdict)

    def _record(self, conn: sqlite3.Connection, verdict: Verdict) -> Transition:
        r, now = verdict.request, self.clock()
        rec, leases, gen_before = None, {}, 0
        if verdict.breaker is not None and r.has_breaker:
            rec, leases = self._breaker(conn, r.breaker_key)  # type: ignore[arg-type]
            gen_before = rec.gen
        lrec, bulkhead, found = None, {}, False
        if verdict.bulkhead_lease and r.limit_key is not None:
            lrec, bulkhead, found = self._limiter(conn, r.limit_key)
        transition = adm.apply_verdict(verdict, rec, leases, bulkhead, now)
        if rec is not None:
            self._save_breaker(conn, r.breaker_key, rec, gen_before, leases)  # type: ignore[arg-type]
        if lrec is not None and found:
            self._save_limiter(conn, r.limit_key, lrec, bulkhead)  # type: ignore[arg-type]
        return transition

    # -- limiter --------------------------------------------------------------------------------
    def limiter_pause(self, key: str, seconds: float) -> float:
        with self._transaction() as conn:
            rec, leases, _ = self._limiter(conn, key)
            until = rl.pause(rec, self.clock(), seconds)
            self._save_limiter(conn, key, rec, leases)
            return until

    def limiter_status(self, key: str) -> LimiterStatus | None:
        return self.snapshot(key=key).limiters.get(key)

    # -- breaker --------------------------------------------------------------------------------
    def breaker_status(self, key: str) -> BreakerStatus | None:
        return self.snapshot(key=key).breakers.get(key)

    def breaker_reset(self, key: str) -> None:
        with self._transaction() as conn:
            rec, _ = self._breaker(conn, key)
            self._save_breaker(conn, key, brk.reset(rec, self.clock()), rec.gen, {})

    def clear(self) -> None:
        with self._transaction() as conn:
            for table in (
                "limiter",
                "limiter_slot",
                "breaker",
                "saga_outcome",
                "cache_entry",
                "stream_run",
                "oauth_token",
                "policy_claim",
            ):
                conn.execute(f"DELETE FROM {table}")

    # -- status: read-only snapshot -----------------------------------------------------------------
    def snapshot(self, *, key: str | None = None) -> Snapshot:
        """Every key's state (or only ``key``'s)."""
        where, args = (" WHERE key = ?", (key,)) if key is not None else ("", ())
        with self._transaction(begin="BEGIN") as conn:
            now = self.clock()
            limiters: dict[str, LimiterStatus] = {}
            sql = f"SELECT key, {', '.join(_LIMITER_FIELDS)}, leases FROM limiter{where}"
            for name, *row in conn.execute(sql, args).fetchall():
                rec = rl.LimiterRecord(*(0 if v is None else v for v in row[:-1]))
                nth = None
                if rec.limit_burst > 1:
                    found = conn.execute(
                        "SELECT slot FROM limiter_slot WHERE key = ? ORDER BY slot DESC LIMIT 1 OFFSET ?",
                        (name, rec.limit_permits - 1),
                    ).fetchone()
                    nth = found[0] if found else None
                in_flight = len(adm.live(_parse_leases(row[-1]), now))
                limiters[name] = LimiterStatus(name, now, **vars(rec), nth_latest=nth, in_flight=in_flight)  # type: ignore[misc]
            breakers: dict[str, BreakerStatus] = {}
            sql = f"SELECT key, {', '.join(_BREAKER_FIELDS)}, leases FROM breaker{where}"
            for name, *row in conn.execute(sql, args).fetchall():
                rec_b = brk.BreakerRecord(*row[:-1])
                fields_b = {**vars(rec_b), "state": BreakerState(rec_b.state)}
                in_flight = len(adm.live(_parse_leases(row[-1]), now))
                breakers[name] = BreakerStatus(name, now, **fields_b, in_flight=in_flight)
            return Snapshot(now, limiters, breakers)

    # -- one key, one policy --------------------------------------------------------------------------
    def policy_claims(
        self, claims: Sequence[tuple[str, str, str]], owner: str, ttl: float = pc.CLAIM_TTL
    ) -> list[pc.ClaimResult]:
        results = []
        with self._transaction() as conn:
            now = self.clock()
            for kind, name, policy in claims:
                row = conn.execute(
                    "SELECT policy, owner, seen_at FROM policy_claim WHERE name = ?", (f"{kind}:{name}",)
                ).fetchone()
                rec = pc.PolicyClaim(*row) if row else pc.PolicyClaim()
                result = pc.claim(rec, policy, owner, now, ttl)
                if result.ok:
                    conn.execute(
                        "INSERT OR REPLACE INTO policy_claim (name, policy, owner, seen_at) VALUES (?, ?, ?, ?)",
                        (f"{kind}:{name}", rec.policy, rec.owner, rec.seen_at),
                    )
                results.append(result)
        return results

    # -- shared OAuth2 tokens ---------------------------------------------------------------------
    def _token(self, conn: sqlite3.Connection, name: str) -> tok.TokenRecord:
        row = conn.execute(
            "SELECT entry, expires_at, fingerprint, lease_holder, lease_until FROM oauth_token WHERE name = ?",
            (name,),
        ).fetchone()
        if not row:
            return tok.TokenRecord()
        entry, expires_at, fingerprint, holder, until = row
        return tok.TokenRecord(entry or "", expires_at, fingerprint or "", holder or "", until or 0.0)

    def _save_token(self, conn: sqlite3.Connection, name: str, rec: tok.TokenRecord) -> None:
        conn.execute(
            "INSERT OR REPLACE INTO oauth_token (name, entry, expires_at, fingerprint, lease_holder, lease_until)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (name, rec.entry, rec.expires_at, rec.fingerprint, rec.lease_holder, rec.lease_until),
        )

    def token_lease(
        self, name: str, holder: str, lease_seconds: float, margin: float, reject: str | None = None
    ) -> tok.TokenDecision:
        with self._transaction() as conn:
            rec = self._token(conn, name)
            decision = tok.decide(rec, self.clock(), holder, lease_seconds, margin, reject)
            if decision.kind == tok.TokenDecisionKind.FETCH:
                self._save_token(conn, name, rec)
            return decision

    def token_store(
        self, name: str, holder: str, entry: str, expires_at: float | None, fingerprint: str
    ) -> None:
        with self._transaction() as conn:
            rec = self._token(conn, name)
            tok.store(rec, holder, entry, expires_at, fingerprint)
            self._save_token(conn, name, rec)

    def token_release(self, name: str, holder: str) -> None:
        with self._transaction() as conn:
            rec = self._token(conn, name)
            tok.release(rec, holder)
            self._save_token(conn, name, rec)

    # -- the saga log -----------------------------------------------------------------------------
    def saga_record(self, entry: dict[str, Any], keep: int = 100) -> None:
        body = json.dumps(entry, default=str)
        with self._transaction() as conn:
            conn.execute("INSERT INTO saga_outcome (at, body) VALUES (?, ?)", (self.clock(), body))
            conn.execute(
                "DELETE FROM saga_outcome WHERE id NOT IN (SELECT id FROM saga_outcome ORDER BY id DESC LIMIT ?)",
                (keep,),
            )

    def saga_recent(self, limit: int = 20) -> list[dict[str, Any]]:
        with self._transaction(begin="BEGIN") as conn:
            rows = conn.execute("SELECT body FROM saga_outcome ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [json.loads(body) for (body,) in rows]

    # -- the response cache -----------------------------------------------------------------------
    def cache_get(self, scope: str, key: str) -> dict[str, Any] | None:
        with self._transaction(begin="BEGIN") as conn:
            row = conn.execute(
                "SELECT body FROM cache_entry WHERE scope = ? AND key = ? AND expires_at > ?",
                (scope, key, self.clock()),
            ).fetchone()
        return json.loads(row[0]) if row else None

    def cache_put(
        self,
        scope: str,
        key: str,
        entry: dict[str, Any],
        size: int,
        keep_seconds: float,
        max_total_bytes: int,
    ) -> CachePut:
        body = json.dumps(entry)
        with self._transaction() as conn:
            now = self.clock()
            conn.execute(
                "DELETE FROM cache_entry WHERE scope = ? AND (expires_at <= ? OR key = ?)", (scope, now, key)
            )
            if size > max_total_bytes:
                total = conn.execute(
                    "SELECT COALESCE(SUM(size), 0) FROM cache_entry WHERE scope = ?", (scope,)
                )
                return CachePut(False, 0, int(total.fetchone()[0]))
            rows = conn.execute(
                "SELECT key, size FROM cache_entry WHERE scope = ? ORDER BY expires_at DESC", (scope,)
            ).fetchall()
            total, evicted = sum(s for _, s in rows), 0
            while rows and total + size > max_total_bytes:
                victim, victim_size = rows.pop()  # the one nearest expiry
                conn.execute("DELETE FROM cache_entry WHERE scope = ? AND key = ?", (scope, victim))
                total, evicted = total - victim_size, evicted + 1
            conn.execute(
                "INSERT INTO cache_entry (scope, key, body, size, expires_at) VALUES (?, ?, ?, ?, ?)",
                (scope, key, body, size, now + keep_seconds),
            )
            return CachePut(True, evicted, total + size)

    def cache_stats(self) -> list[CacheStats]:
        with self._transaction(begin="BEGIN") as conn:
            rows = conn.execute(
                "SELECT scope, COUNT(*), SUM(size) FROM cache_entry WHERE expires_at > ? GROUP BY scope ORDER BY scope",
                (self.clock(),),
            ).fetchall()
        return [CacheStats(scope, int(n), int(total)) for scope, n, total in rows]

    # -- the last run of each sync stream ---------------------------------------------------------
    def stream_record(self, key: str, entry: dict[str, Any]) -> None:
        body = json.dumps(entry, default=str)
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO stream_run (key, at, body) VALUES (?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET at = excluded.at, body = excluded.body",
                (key, self.clock(), body),
            )

    def stream_latest(self) -> list[dict[str, Any]]:
        with self._transaction(begin="BEGIN") as conn:
            rows = conn.execute("SELECT body FROM stream_run ORDER BY key").fetchall()
        return [json.loads(body) for (body,) in rows]

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


__all__ = ["Admission", "SQLiteBackend"]
