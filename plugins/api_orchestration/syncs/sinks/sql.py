"""Table sinks: PostgreSQL (an Airflow Postgres connection) and SQLite (the embedded default).

Each page is one transaction: the rows are upserted on the primary key (a row changes only when the
incoming cursor is at least the stored one, so an old interval re-fetched never overwrites newer
data) and the checkpoint row in ``_api_sync_state`` is replaced; the last page of a cursor-mode run
also moves the mark in ``_api_sync_cursors``. New fields add columns (or land in ``_raw``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from api_orchestration.syncs.checkpoint import Checkpoint, RunStatus
from api_orchestration.syncs.sinks.base import (
    PARTITION_COLUMN,
    RAW_COLUMN,
    ColumnType,
    Sink,
    column_name,
    converter,
    declared_columns,
    infer_type,
)
from api_orchestration.syncs.stream import Stream, SyncMode

STATE_TABLE = "_api_sync_state"
CURSOR_TABLE = "_api_sync_cursors"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SqlSink(Sink):
    """The shared table logic; subclasses give the connection and the dialect."""

    placeholder = "?"
    types: Mapping[ColumnType, str] = {}
    json_cast = ""
    multi_row = False

    def __init__(
        self, *, columns: Mapping[str, Any] | None = None, infer: bool | None = None, keep_raw: bool = True
    ) -> None:
        self.declared = declared_columns(f"{type(self).__name__}", columns)
        self.infer = (not self.declared) if infer is None else infer
        self.keep_raw = keep_raw
        self.conn: Any = None
        self._columns: dict[str, ColumnType] = {}  # field -> type, as the table has them
        self._taken: dict[str, str] = {}  # column name -> the field it holds
        self._statement: tuple[tuple[str, ...], str] | None = None
        self._table_exists = False

    # -- connection and DDL (dialect) ------------------------------------------------------------
    def decode(self, value: Any) -> Any:
        """A JSON column's value as Python (SQLite stores the text)."""
        return json.loads(value) if isinstance(value, str | bytes) else value

    def connect(self) -> Any:
        raise NotImplementedError

    def existing_columns(self, table: str) -> dict[str, str]:
        raise NotImplementedError

    def _execute(self, sql: str, params: Any = ()) -> Any:
        cur = self.conn.cursor()
        cur.execute(sql, params)
        return cur

    # -- Sink --------------------------------------------------------------------------------------
    def open(self, stream: Stream) -> None:
        self.conn = self.conn or self.connect()
        text, js = self.types[ColumnType.TEXT], self.types[ColumnType.JSON]
        for table, value in ((STATE_TABLE, "checkpoint"), (CURSOR_TABLE, "mark")):
            self._execute(
                f"CREATE TABLE IF NOT EXISTS {table} (stream {text} NOT NULL, part {text} NOT NULL, "
                f"{value} {js}, updated_at {text}, PRIMARY KEY (stream, part))"
            )
        self.conn.commit()
        self._load_columns(stream)

    def _load_columns(self, stream: Stream) -> None:
        """The table's columns, keyed by the record field each holds (a column whose field is not
        known yet, ``createdat`` for ``createdAt``, is keyed by its own name until a record shows it)."""
        existing = self.existing_columns(stream.name)
        known = [*self.declared, *stream.primary_key, *([stream.cursor_field] if stream.cursor_field else [])]
        by_column = {column_name(f): f for f in known}
        self._columns, self._taken = {}, {}
        for col, sql_type in existing.items():
            if col != RAW_COLUMN:
                field = by_column.get(col, col)
                self._columns[field] = self.declared.get(field) or self._type_of(sql_type)
                self._taken[col] = field
        self._table_exists = bool(existing)

    def _ensure_table(self, stream: Stream, records: list[dict[str, Any]]) -> None:
        """Create the table on the first page: key columns typed as declared or as the records show."""
        kinds = dict(self.declared)
        for k in stream.primary_key:
            if k not in kinds:
                found = next((infer_type(r.get(k)) for r in records if r.get(k) is not None), None)
                kinds[k] = found or ColumnType.TEXT
        keys = [f"{_q(column_name(k))} {self.types[kinds[k]]} NOT NULL" for k in stream.primary_key]
        pk = ", ".join(_q(column_name(k)) for k in stream.primary_key)
        raw = f", {_q(RAW_COLUMN)} {self.types[ColumnType.JSON]}" if self.keep_raw else ""
        self._execute(
            f"CREATE TABLE IF NOT EXISTS {_q(stream.name)} ({', '.join(keys)}{raw}, PRIMARY KEY ({pk}))"
        )
        self.conn.commit()
        self._load_columns(stream)
        self._add_columns(stream, {f: t for f, t in self.declared.items() if f not in self._columns})

    def _type_of(self, sql_type: str) -> ColumnType:
        for kind, name in self.types.items():
            if name.lower() == sql_type.lower():
                return kind
        return ColumnType.TEXT

    def _add_columns(self, stream: Stream, new: Mapping[str, ColumnType]) -> None:
        added = False
        for field, kind in new.items():
            if field in self._columns:
                continue
            col = column_name(field)
            holder = self._taken.get(col)
            if holder == col and holder != field:  # the column exists; now we know its field's name
                self._columns[field] = self._columns.pop(holder)
                self._taken[col] = field
                self._statement = None
                continue
            if holder is not None:  # another field's column (``Title`` beside ``title``): _raw keeps it
                continue
            self._execute(f"ALTER TABLE {_q(stream.name)} ADD COLUMN {_q(col)} {self.types[kind]}")
            self._columns[field], self._taken[col] = kind, field
            self._statement = None
            added = True
        if added:
            self.conn.commit()

    def checkpoint(self, stream: Stream, slot: str) -> Checkpoint | None:
        p = self.placeholder
        row = self._execute(
            f"SELECT checkpoint FROM {STATE_TABLE} WHERE stream = {p} AND part = {p}",
            (stream.name, _part(stream, slot)),
        ).fetchone()
        self.conn.commit()
        return None if row is None else Checkpoint.from_dict(self.decode(row[0]))

    def high_water_mark(self, stream: Stream) -> Any:
        p = self.placeholder
        row = self._execute(
            f"SELECT mark FROM {CURSOR_TABLE} WHERE stream = {p} AND part = {p}",
            (stream.name, stream.partition),
        ).fetchone()
        self.conn.commit()
        return None if row is None else self.decode(row[0])

    def restart(self, stream: Stream, slot: str) -> None:
        """Tables need nothing: re-fetched rows are upserted."""

    def write_page(
        self, stream: Stream, slot: str, records: list[dict[str, Any]], checkpoint: Checkpoint
    ) -> int:
        size = 0
        try:
            if records:
                if not self._table_exists:
                    self._ensure_table(stream, records)
                if self.infer:
                    self._add_columns(stream, self._new_fields(records))
                if stream.partition and PARTITION_COLUMN not in self._columns:
                    self._add_columns(stream, {PARTITION_COLUMN: ColumnType.TEXT})
                fields, sql = self._upsert(stream)
                rows = self._rows(stream, records, fields)
                self._write_rows(sql, rows, len(fields) + self.keep_raw)
                if self.keep_raw:
                    size = sum(len(r[-1]) for r in rows)
            self._save_state(stream, slot, checkpoint)
            self.conn.commit()
        except BaseException:
            self.conn.rollback()
            raise
        return size

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # -- rows --------------------------------------------------------------------------------------
    def _new_fields(self, records: list[dict[str, Any]]) -> dict[str, ColumnType]:
        new: dict[str, ColumnType] = {}
        for record in records:
            for field, value in record.items():
                if field not in self._columns and field not in new:
                    kind = infer_type(value)
                    if kind is not None:
                        new[field] = kind
        return new

    def _rows(
        self, stream: Stream, records: list[dict[str, Any]], fields: tuple[str, ...]
    ) -> list[tuple[Any, ...]]:
        pairs = [(f, converter(self._columns[f])) for f in fields]
        by_key: dict[tuple[Any, ...], tuple[Any, ...]] = {}  # one row per key per statement (last wins)
        pk = stream.primary_key
        label = {PARTITION_COLUMN: stream.partition} if stream.partition else None
        for record in records:
            fields_of = {**record, **label} if label else record  # the partition's label: a column
            key = tuple(fields_of.get(k) for k in pk)
            if None in key:
                raise ValueError(
                    f"stream {stream.name!r}: a record has no primary key {list(pk)}: {_brief(record)}"
                )
            get = fields_of.get
            row = [convert(get(f)) for f, convert in pairs]
            if self.keep_raw:
                row.append(json.dumps(record, separators=(",", ":")))
            by_key[key] = tuple(row)
        return list(by_key.values())

    def _upsert(self, stream: Stream) -> tuple[tuple[str, ...], str]:
        fields = tuple(self._columns)
        if self._statement is not None and self._statement[0] == fields:
            return self._statement
        names = [_q(column_name(f)) for f in fields] + ([_q(RAW_COLUMN)] if self.keep_raw else [])
        marks = [self.placeholder] * len(fields) + (
            [self.placeholder + self.json_cast] if self.keep_raw else []
        )
        for i, f in enumerate(fields):
            if self._columns[f] is ColumnType.JSON:
                marks[i] = self.placeholder + self.json_cast
        pk = [column_name(k) for k in stream.primary_key]
        updates = [n for n in names if n.strip('"') not in pk]
        table = _q(stream.name)
        sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(marks)}) ON CONFLICT ({', '.join(map(_q, pk))})"
        if updates:
            sql += " DO UPDATE SET " + ", ".join(f"{n} = excluded.{n}" for n in updates)
            if stream.cursor_field and stream.cursor_field in self._columns:  # compare the cursors
                c = _q(column_name(stream.cursor_field))
                sql += f" WHERE {table}.{c} IS NULL OR excluded.{c} >= {table}.{c}"
        else:
            sql += " DO NOTHING"
        self._statement = (fields, sql)
        return self._statement

    def _write_rows(self, sql: str, rows: list[tuple[Any, ...]], width: int) -> None:
        self.conn.cursor().executemany(sql, rows)

    def _save_state(self, stream: Stream, slot: str, checkpoint: Checkpoint) -> None:
        p, now = self.placeholder, self.now_sql
        data = json.dumps(checkpoint.as_dict())
        self._execute(
            f"INSERT INTO {STATE_TABLE} (stream, part, checkpoint, updated_at) VALUES ({p}, {p}, {p}{self.json_cast}, {now}) "
            "ON CONFLICT (stream, part) DO UPDATE SET checkpoint = excluded.checkpoint, updated_at = excluded.updated_at",
            (stream.name, _part(stream, slot), data),
        )
        key = (stream.name, stream.partition)
        if (
            checkpoint.status is RunStatus.DONE
            and stream.mode is SyncMode.CURSOR
            and checkpoint.mark is not None
        ):
            self._execute(
                f"INSERT INTO {CURSOR_TABLE} (stream, part, mark, updated_at) VALUES ({p}, {p}, {p}{self.json_cast}, {now}) "
                "ON CONFLICT (stream, part) DO UPDATE SET mark = excluded.mark, updated_at = excluded.updated_at",
                (*key, json.dumps(checkpoint.mark)),
            )

    now_sql = "CURRENT_TIMESTAMP"


def _part(stream: Stream, slot: str) -> str:
    """The state row of a partition's slot: ``<partition>`` or ``<partition>@<window>``."""
    return f"{stream.partition}@{slot}" if slot else stream.partition


def _brief(record: Any) -> str:
    text = json.dumps(record, default=str)
    return text if len(text) <= 120 else text[:117] + "..."


class SqliteSink(SqlSink):
    """A table in a SQLite file (default: ``$AIRFLOW_HOME/api_orchestration/sync.db``)."""

    types = {
        ColumnType.INTEGER: "INTEGER",
        ColumnType.NUMBER: "REAL",
        ColumnType.BOOLEAN: "BOOLEAN",
        ColumnType.TEXT: "TEXT",
        ColumnType.TIMESTAMP: "TIMESTAMP",
        ColumnType.JSON: "JSON",
    }

    def __init__(self, path: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if path is None:
            from api_orchestration.paths import data_path

            path = data_path("sync.db")
        self.path = Path(path)
        self.uri = f"sqlite:///{self.path}"

    def connect(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def existing_columns(self, table: str) -> dict[str, str]:
        return {row[1]: row[2] for row in self.conn.execute(f"PRAGMA table_info({_q(table)})")}


class PostgresSink(SqlSink):
    """A table in PostgreSQL, reached through an Airflow Postgres connection (``PostgresHook``)."""

    placeholder = "%s"
    json_cast = "::jsonb"
    now_sql = "now()::text"
    types = {
        ColumnType.INTEGER: "bigint",
        ColumnType.NUMBER: "double precision",
        ColumnType.BOOLEAN: "boolean",
        ColumnType.TEXT: "text",
        ColumnType.TIMESTAMP: "timestamp with time zone",
        ColumnType.JSON: "jsonb",
    }

    def __init__(self, conn_id: str, *, schema: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conn_id, self.schema = conn_id, schema
        self.uri = f"postgres://{conn_id}/" + (f"{schema}." if schema else "")

    def connect(self) -> Any:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        conn = PostgresHook(postgres_conn_id=self.conn_id).get_conn()
        if self.schema:
            cur = conn.cursor()
            cur.execute(f"CREATE SCHEMA IF NOT EXISTS {_q(self.schema)}")
            cur.execute(f"SET search_path TO {_q(self.schema)}")
            conn.commit()
        return conn

    def decode(self, value: Any) -> Any:
        return value  # psycopg decodes jsonb itself: a string mark is already the string

    def existing_columns(self, table: str) -> dict[str, str]:
        cur = self._execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = %s AND table_schema = current_schema() ORDER BY ordinal_position",
            (table,),
        )
        found = {name: kind for name, kind in cur.fetchall()}
        self.conn.commit()
        return found

    def _write_rows(self, sql: str, rows: list[tuple[Any, ...]], width: int) -> None:
        if type(self.conn).__module__.startswith("psycopg2"):  # one multi-row INSERT: one round trip
            from psycopg2.extras import execute_values

            head, _, tail = sql.partition(" VALUES ")
            values, _, conflict = tail.partition(") ON CONFLICT")
            template = values + ")"
            execute_values(
                self.conn.cursor(),
                f"{head} VALUES %s ON CONFLICT{conflict}",
                rows,
                template,
                page_size=len(rows),
            )
        else:  # psycopg 3 pipelines executemany: one round trip, the statement prepared once
            self.conn.cursor().executemany(sql, rows)
