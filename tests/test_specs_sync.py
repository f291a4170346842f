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
        (
            {"steps.0.sync.partitions": {"over": []}},
            "steps[0].sync.partitions.over: must be a non-empty list, or a JMESPath such as conf.repos, got []",
        ),
        (
            {"steps.0.sync.partitions": {"over": ["docs", "gadgets"]}},
            "steps[0].call.path: must use {{ item }} (in the path, query or headers) when sync.partitions is set",
        ),
        (
            {
                "steps.0.sync.partitions": {
                    "over": "conf.repos",
                    "parent": {"path": "/orgs/acme/repos", "paginate": {"style": "link_header"}},
                }
            },
            "steps[0].sync.partitions.over/parent: needs exactly one of over (a list or a JMESPath) or parent",
        ),
        (
            {"steps.0.sync.partitions": {"parent": {"path": "/orgs/acme/repos"}}},
            "steps[0].sync.partitions.parent.paginate: is required",
        ),
        (
            {
                "steps.0.sync.partitions": {
                    "parent": {"path": "/orgs/x/repos", "paginate": {"style": "cursor"}}
                }
            },
            "steps[0].sync.partitions.parent.paginate.cursor_path: is required for style 'cursor'",
        ),
        (
            {"steps.0.sync.partitions": {"over": [{"name": "docs"}]}},
            "steps[0].sync.partitions.over[0]: must be a string or integer label, or set key: a JMESPath",
        ),
        (
            {"steps.0.sync.partitions": {"over": "repos[*].name"}},
            "steps[0].sync.partitions.over: reads 'repos'; expressions see conf, params and results",
        ),
        (
            {"steps.0.sync.partitions": {"over": "conf.repos", "key": "name[["}},
            "steps[0].sync.partitions.key: is not a valid JMESPath expression",
        ),
        (
            {"steps.0.sync.partition": "docs", "steps.0.sync.partitions": {"over": ["docs"]}},
            "steps[0].sync.partition: must not be set with partitions: each partition's label comes from partitions",
        ),
        (
            {
                "steps.0.call.path": "/github/repos/acme/{{ item }}/issues",
                "steps.0.sync.partitions": {
                    "parent": {"path": "/orgs/{{ item }}/repos", "paginate": {"style": "link_header"}}
                },
            },
            "steps[0].sync.partitions.parent.path: template uses 'item', which exists only in fan_out, bulk and",
        ),
        (
            {"steps.0.sync.partitions": {"over": ["docs"], "max_active": 0}},
            "steps[0].sync.partitions.max_active: must be an integer >= 1, got 0",
        ),
        (
            {"steps.0.sync.partitions": {"over": ["docs"], "parnet": {}}},
            "steps[0].sync.partitions.parnet: unknown field 'parnet' (did you mean 'parent'?)",
        ),
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


def test_a_partitioned_sync_spec_builds_a_listing_and_one_mapped_sync_per_partition():
    from api_orchestration.operators.partitions import SyncPartitionsOperator
    from api_orchestration.operators.sync import ApiSyncOperator

    parent = {"path": "/github/orgs/acme/repos", "paginate": {"style": "link_header", "page_size": 2,
                                                             "size_param": "per_page"}}  # fmt: skip
    text = spec(**{
        "steps.0.call.path": "/github/repos/{{ item.full_name }}/issues",
        "steps.0.sync.partitions": {"parent": parent, "key": "name", "max_active": 2},
    })  # fmt: skip
    dag = load_text(text, "sync.yaml", default_dag_id="partitioned_sync").dag
    listing, each = dag.get_task("sync_issues_partitions"), dag.get_task("sync_issues")
    assert isinstance(listing, SyncPartitionsOperator) and listing.parent_endpoint == parent["path"]
    assert listing.key == "name" and listing.parent_pagination.page_size == 2
    assert each.operator_class is ApiSyncOperator and each.max_active_tis_per_dagrun == 2
    assert each.upstream_task_ids == {"sync_issues_partitions"}
