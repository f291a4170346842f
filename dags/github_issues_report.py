"""Runs whenever ``github_issues_sync`` updated the ``github_issues`` asset: reads what it wrote.

The triggering asset event's extra says which window was synced, to which table (``uri``), the
cursor reached and the rows written; the task logs them and returns them (XCom).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Asset, task

GITHUB_ISSUES = Asset(
    "github_issues", uri="sync://demo_api/github_issues"
)  # as github_issues_sync declares it

with DAG(
    dag_id="github_issues_report",
    schedule=[GITHUB_ISSUES],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["api-orchestration", "example", "sync"],
    doc_md=__doc__,
) as dag:

    @task
    def report(triggering_asset_events=None) -> list[dict]:
        """One line per sync that triggered this run: window, rows, cursor, where."""
        seen = []
        for event in (triggering_asset_events or {}).get(GITHUB_ISSUES, []):
            extra = dict(event.extra or {})
            print(f"synced {extra.get('rows')} rows of window {extra.get('window')} into {extra.get('uri')}")
            seen.append(extra)
        return seen

    report()
