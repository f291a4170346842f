"""Specs: ``paginate:`` on calls, the ``sync:`` step kind, schedules with data intervals or on assets;
the spec twin of github_issues_sync; bad sync specs named by file and field path with the fix."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from api_orchestration.errors import SpecError
from api_orchestration.specs import load_file, load_text

ROOT = Path(__file__).resolve().parent.parent
TWIN = ROOT / "include" / "workflows" / "github_issues_sync_spec.yaml"
BASE = yaml.safe_load(TWIN.read_text())


def spec(**changes) -> str:
    """The shipped sync spec with ``changes`` (dotted paths; None deletes)."""
    doc = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return yaml.safe_dump(doc, sort_keys=False)


def test_spec_twin_builds_the_same_sync_as_the_python_dag():
    import importlib.util

    from airflow.sdk import CronDataIntervalTimetable

    module_spec = importlib.util.spec_from_file_location(
        "twin_github", ROOT / "dags" / "github_issues_sync.py"
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    python_task = module.dag.get_task("sync_issues")
    spec_dag = load_file(TWIN).dag
    spec_task = spec_dag.get_task("sync_issues")
    assert type(spec_task) is type(python_task)
    for attr in (
        "endpoint",
        "http_conn_id",
        "query",
        "pagination",
        "destination",
        "rate_limit",
        "breaker",
        "retry",
    ):
        assert getattr(spec_task, attr) == getattr(python_task, attr), attr
    python_stream, spec_stream = python_task.stream, spec_task.stream
    assert spec_stream.name == "github_issues_spec"  # its own table and asset: the two can run side by side
    assert spec_stream == python_stream.__class__(**{**python_stream.__dict__, "name": "github_issues_spec"})
    assert [a.name for a in spec_task.outlets] == ["github_issues_spec"]
    assert isinstance(spec_dag.timetable, CronDataIntervalTimetable)
    assert (
        spec_dag.timetable == module.dag.timetable == CronDataIntervalTimetable("0 * * * *", timezone="UTC")
    )
    assert (spec_dag.start_date, spec_dag.max_active_runs) == (
        module.dag.start_date,
        module.dag.max_active_runs,
    )


def test_asset_schedule_builds_an_asset_triggered_dag():
    text = yaml.safe_dump(
        {
            "dag_id": "on_issues",
            "schedule": {"assets": ["github_issues_spec"]},
            "steps": [{"name": "ping", "call": {"path": "/echo/updated"}}],
        }
    )
    dag = load_text(text, "on_issues.yaml").dag
    assert [a.name for a in dag.timetable.asset_condition.objects] == ["github_issues_spec"]


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (
            {"schedule": "0 * * * *"},
            "schedule: gives runs empty data intervals (Airflow 3's CronTriggerTimetable), and steps[0].sync is in "
            "interval mode; use schedule: {cron: '0 * * * *', data_interval: true}",
        ),
        (
            {"schedule": {"cron": "0 * * *", "data_interval": True}},
            "schedule.cron: is not a valid cron expression",
        ),
        ({"schedule": {"data_interval": True}}, "schedule.cron: is required"),
        ({"schedule": {"assets": []}}, "schedule.assets: must name at least one asset"),
        (
            {"steps.0.call.paginate": {"style": "cursor", "cursor_path": "next"}},
            "steps[0].call.paginate.cursor_param: is required for style 'cursor', got None",
        ),
        (
            {"steps.0.call.paginate": {"style": "pages"}},
            "steps[0].call.paginate.style: must be one of cursor, offset, page_number, link_header, next_url, got 'pages'",
        ),
        ({"steps.0.call.paginate": None}, "steps[0].call.paginate: is required on the call of a sync step"),
        ({"steps.0.call.method": "POST"}, "steps[0].call.method: must be GET for a sync step, got 'POST'"),
        (
            {"steps.0.sync.mode": "incremental"},
            "steps[0].sync.mode: must be one of interval, cursor, got 'incremental'",
        ),
        ({"steps.0.sync.stream": "github-issues"}, "steps[0].sync.stream: must be a plain identifier"),
        (
            {"steps.0.sync.destination": "postgres://admin:hunter2@db/x"},
            "steps[0].sync.destination: must name an Airflow connection id, never credentials",
        ),
        (
            {"steps.0.sync.columns": {"number": "bigint"}},
            "steps[0].sync.columns['number']: must be one of integer",
        ),
        ({"steps.0.sync.cursor_feild": "updated_at"}, "steps[0].sync.cursor_feild"),
    ],
)
def test_bad_sync_specs_name_the_field_and_the_fix(changes, problem):
    with pytest.raises(SpecError) as caught:
        load_text(spec(**changes), "sync.yaml")
    assert problem in str(caught.value), str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_paginate_on_an_ordinary_step_builds_a_paginated_step_operator():
    from api_orchestration.calls.pagination import Pagination

    text = yaml.safe_dump(
        {
            "steps": [
                {
                    "name": "a",
                    "call": {"path": "/x", "paginate": {"style": "link_header", "output": "manifest"}},
                }
            ]
        }
    )
    task = load_text(text, "a.yaml", default_dag_id="a").dag.get_task("a")
    assert type(task).__name__ == "StepOperator"
    assert task.pagination == Pagination("link_header", output="manifest") and task.cache is None
