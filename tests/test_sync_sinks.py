"""The table sinks on real SQLite and PostgreSQL: typed columns, schema evolution, odd field names
across a resume, values that do not fit their column, and the page + checkpoint transaction."""

from __future__ import annotations

import json
import os

import pytest
from conftest import fresh_postgres_database

from api_orchestration.calls.pagination import PageRequest
from api_orchestration.syncs.checkpoint import Checkpoint
from api_orchestration.syncs.sinks.sql import PostgresSink, SqliteSink
from api_orchestration.syncs.stream import Stream, Window

STREAM = Stream("contacts", primary_key="id", cursor_field="updatedAt", mode="cursor")


@pytest.fixture(params=["sqlite", "postgres"])
def make_sink(request, tmp_path):
    """A factory of sinks on one database: each call is a new task try (a new connection)."""
    if request.param == "sqlite":
        yield lambda **kw: SqliteSink(tmp_path / "sync.db", **kw)
        return
    with fresh_postgres_database("apiorch_sink_") as name:
        os.environ["AIRFLOW_CONN_SINK_PG"] = json.dumps(
            {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "schema": name}
        )
        yield lambda **kw: PostgresSink("sink_pg", **kw)
        os.environ.pop("AIRFLOW_CONN_SINK_PG", None)


def _page(sink, records, pages_before=0, last=False):
    start = Checkpoint.start("run", Window(None, None), PageRequest("http://x/contacts"))
    start = Checkpoint(**{**start.__dict__, "pages": pages_before})
    following = (
        None if last else PageRequest("http://x/contacts", {"page": pages_before + 2}, pages_before + 2)
    )
    checkpoint = start.after_page(
        following, len(records), 0, records[-1]["updatedAt"] if records else None, "d"
    )
    sink.write_page(STREAM, "", records, checkpoint)
    return checkpoint


def _rows(sink, columns):
    cur = sink.conn.cursor()
    cur.execute(f"SELECT {', '.join(columns)} FROM contacts ORDER BY id")
    return [tuple(r) for r in cur.fetchall()]


def test_camel_case_fields_new_fields_and_misfits_survive_a_resume(make_sink):
    sink = make_sink()
    sink.open(STREAM)
    first = [
        {"id": i, "firstName": f"n{i}", "updatedAt": f"2026-01-01T00:00:0{i}Z", "score": i} for i in (1, 2)
    ]
    _page(sink, first)
    sink.close()

    resumed = make_sink()  # a new try: the table's columns are read back, camelCase fields found again
    resumed.open(STREAM)
    assert resumed.checkpoint(STREAM, "").pages == 1
    second = [
        {"id": 3, "firstName": "n3", "updatedAt": "2026-01-01T00:00:03Z", "score": "high", "tags": ["a"]},
        {"id": 1, "firstName": "again", "updatedAt": "2025-12-31T00:00:00Z", "score": 9},  # older: ignored
    ]
    checkpoint = _page(resumed, second, pages_before=1, last=True)
    assert _rows(resumed, ["id", "firstname", "score"]) == [(1, "n1", 1), (2, "n2", 2), (3, "n3", None)]
    cur = resumed.conn.cursor()
    cur.execute("SELECT tags, _raw FROM contacts WHERE id = 3")
    tags, raw = cur.fetchone()
    raw = json.loads(raw) if isinstance(raw, str) else raw
    assert (json.loads(tags) if isinstance(tags, str) else tags) == ["a"]  # a new field: a new JSON column
    assert raw["score"] == "high"  # the value that did not fit the integer column is kept in _raw
    assert resumed.high_water_mark(STREAM) == checkpoint.mark == "2025-12-31T00:00:00Z"
    resumed.close()


def test_a_failed_page_commits_neither_its_rows_nor_the_checkpoint(make_sink):
    sink = make_sink()
    sink.open(STREAM)
    _page(sink, [{"id": 1, "updatedAt": "2026-01-01T00:00:01Z"}])
    with pytest.raises(ValueError, match="has no primary key"):
        _page(sink, [{"id": 2, "updatedAt": "2026-01-01T00:00:02Z"}, {"updatedAt": "x"}], pages_before=1)
    assert _rows(sink, ["id"]) == [(1,)] and sink.checkpoint(STREAM, "").pages == 1
    sink.close()
