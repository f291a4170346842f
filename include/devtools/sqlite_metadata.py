"""Settings that let the embedded SQLite metadata DB of ``make run`` hold bursts of triggers.

SQLite has one writer at a time. Airflow already opens it in WAL mode (readers never block the
writer, ``airflow.utils.orm_event_handlers``); what failed under 200 quick triggers was a writer
giving up after pysqlite's default 5 s busy timeout (``sqlite3.OperationalError: database is
locked``), after which the scheduler, dag-processor or triggerer exited. :func:`sqlite_settings`
gives them:

- a 60 s busy timeout (``[database] sql_alchemy_connect_args``/``_async``, import paths to
  :data:`CONNECT_ARGS`), so a writer waits its turn instead of failing;
- ``[database] max_db_retries`` 10 (default 3): the transactions Airflow wraps in its DB retry
  (the scheduler loop, the dag-processor's writes) retry a lock error with backoff;
- ``[core] parallelism`` 8 (default 32): at most 8 task processes at once, each writing its state
  through the api-server, instead of 32 on a laptop's few cores.

And :class:`devtools.cluster.LocalAirflow` serves the Execution API from a second api-server process
on SQLite (see ``LocalAirflow._split_execution_api``): in one process, a REST call's audit-log write
blocked the event loop waiting for a lock held by a task's request, whose release needed that loop.

Tried and rejected: ``BEGIN IMMEDIATE`` for every transaction (through Airflow's
``create_metadata_engine`` hook). Airflow opens a second connection while a session's transaction is
open (``airflow db migrate``, the scheduler), which then waits for its own process's lock.
"""

from __future__ import annotations

from typing import Any

BUSY_TIMEOUT_SECONDS = 60
CONNECT_ARGS: dict[str, Any] = {"timeout": BUSY_TIMEOUT_SECONDS}


def sqlite_settings() -> dict[str, str]:
    """The ``AIRFLOW__...`` settings for a SQLite metadata DB (a caller's own values win)."""
    return {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "devtools.sqlite_metadata.CONNECT_ARGS",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS_ASYNC": "devtools.sqlite_metadata.CONNECT_ARGS",
        "AIRFLOW__DATABASE__MAX_DB_RETRIES": "10",
        "AIRFLOW__CORE__PARALLELISM": "8",
    }
