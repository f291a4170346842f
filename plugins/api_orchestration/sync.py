"""Recurring API syncs: page through a collection, upsert it into a table, idempotently.

``sync_window`` picks the run's data interval (or, for a run triggered by hand, the last
``default_hours``); ``fetch_all`` pages through ``items``/``next_page`` responses through the
resilient call path; ``upsert`` writes rows keyed by ``id`` into SQLite (default) or PostgreSQL,
changing a row only when its ``updated_at`` is newer, so re-running an interval changes nothing.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from api_orchestration.calls.requests_driver import ResilientCaller
from api_orchestration.paths import data_path


def sync_window(context: Any, default_hours: float = 24.0) -> tuple[dt.datetime, dt.datetime]:
    """The run's data interval; a run without one (triggered by hand) syncs the last ``default_hours``."""
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None and end > start:
        return start, end
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(hours=default_hours), now


def fetch_all(
    caller: ResilientCaller, url: str, query: dict[str, Any], *, per_page: int = 100
) -> list[dict[str, Any]]:
    """Every item of a paginated collection (``{"items": [...], "next_page": n | null}``)."""
    items: list[dict[str, Any]] = []
    page: int | None = 1
    while page is not None:
        body = caller.call("GET", url, params={**query, "page": page, "per_page": per_page}).json()
        items.extend(body["items"])
        page = body.get("next_page")
    return items


def default_database() -> Path:
    return data_path("sync.db")


def upsert(
    rows: Iterable[dict[str, Any]],
    table: str,
    columns: Sequence[str],
    *,
    conn_id: str | None = None,
    database: Path | None = None,
) -> dict[str, int]:
    """Insert new rows, update rows whose ``updated_at`` is newer, leave the rest; returns the counts.

    ``conn_id`` names an Airflow PostgreSQL connection; without it the table lives in a SQLite file
    under ``AIRFLOW_HOME``. ``columns`` must start with ``id`` and include ``updated_at``.
    """
    if not table.isidentifier() or not all(c.isidentifier() for c in columns):
        raise ValueError(f"table {table!r} and columns {list(columns)} must be plain identifiers")
    if conn_id:
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        conn, mark = PostgresHook(postgres_conn_id=conn_id).get_conn(), "%s"
    else:
        path = database or default_database()
        path.parent.mkdir(parents=True, exist_ok=True)
        conn, mark = sqlite3.connect(path), "?"
    cols = ", ".join(columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
    sql = (
        f"INSERT INTO {table} ({cols}) VALUES ({', '.join([mark] * len(columns))}) "
        f"ON CONFLICT (id) DO UPDATE SET {updates} WHERE excluded.updated_at > {table}.updated_at"
    )
    counts = {"fetched": 0, "written": 0, "unchanged": 0}
    try:
        cur = conn.cursor()
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (id BIGINT PRIMARY KEY, {', '.join(f'{c} TEXT' for c in columns[1:])})"
        )
        for row in rows:
            cur.execute(sql, [row.get(c) for c in columns])
            counts["fetched"] += 1
            counts["written" if cur.rowcount > 0 else "unchanged"] += 1
        conn.commit()
    finally:
        conn.close()
    return counts
