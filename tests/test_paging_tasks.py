"""Pagination on a task's call, through dag.test() against the demo listing APIs: the single-call
operator (each style), a page answered 429/5xx mid-way, an Airflow retry resuming at the failed page
(pages counted at the server), the manifest output and the XCom size error, a workflow step whose
records a later step reads, a bulk task fanned out over a paginated list, and bad ``paginate:`` specs."""

from __future__ import annotations

import datetime as dt
import random

import pendulum
import pytest
import requests
import yaml
from test_dags import _register, _states

from api_orchestration import ResilientHttpOperator, RetryPolicy
from api_orchestration.calls.pagination import Pagination

pytestmark = pytest.mark.usefixtures("airflow_db")

START = pendulum.datetime(2026, 1, 1, tz="UTC")
FAST = RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05)
SINCE = "2029-12-31T23:50:00Z"  # with the clock frozen at 2030-01-01: the 601 contacts of the last 10 minutes
CONTACTS = Pagination("offset", records="results", size_param="limit", page_size=100, total_path="total")


@pytest.fixture(autouse=True)
def _results_url(tmp_path, monkeypatch):
    """Each test's pages and bulk rows in its own folder."""
    monkeypatch.setenv("AIRFLOW__API_ORCHESTRATION__RESULTS_URL", (tmp_path / "results").as_uri())


def _freeze(demo, now: str = "2030-01-01T00:00:00Z") -> None:
    requests.post(f"{demo.url}/admin/datasets", json={"now": now}, timeout=5).raise_for_status()


def _xcom(run, task_id: str, map_index: int = -1):
    ti = next(t for t in run.get_task_instances() if t.task_id == task_id and t.map_index == map_index)
    return ti.xcom_pull(task_ids=task_id, map_indexes=None if map_index < 0 else map_index)


def _contacts_in_window(demo) -> list[int]:
    """Ground truth, read by hand: the ids of the contacts updated since ``SINCE``."""
    ids, offset, total = [], 0, None
    while total is None or offset < total:
        body = requests.get(
            f"{demo.url}/crm/contacts",
            params={"offset": offset, "limit": 100, "updated_since": SINCE},
            timeout=10,
        ).json()
        total, offset = body["total"], offset + 100
        ids += [c["id"] for c in body["results"]]
    return ids


def _seed(pattern: list[bool], rate: float) -> int:
    """A fault seed whose first draws fail exactly where ``pattern`` says (the server draws the same)."""
    for seed in range(100_000):
        rng = random.Random(seed)
        if [rng.random() < rate for _ in pattern] == pattern:
            return seed
    raise AssertionError("no seed")


def test_operator_link_header_returns_every_issue_like_providers_http(demo):
    from airflow.sdk import DAG

    _freeze(demo)
    with DAG("paging_link_header", schedule=None, start_date=START) as dag:
        ResilientHttpOperator(
            task_id="issues",
            http_conn_id="demo_api",
            endpoint="/github/repos/acme/docs/issues",
            query={"state": "all"},
            pagination=Pagination("link_header", page_size=100, size_param="per_page"),
            retry=FAST,
        )
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    issues = _xcom(run, "issues")
    assert sorted(i["number"] for i in issues) == list(range(1, 1001))  # every page's records, once
    assert demo.calls()["paths"]["/github/repos/acme/docs/issues"] == 10  # one call per page


def test_a_deferral_between_pages_resumes_at_the_next_page_and_returns_every_page(demo, tmp_path):
    """providers-http's deferrable mode returned only the last page (apache/airflow#72388): not here."""
    from airflow.sdk import DAG

    from api_orchestration import RateLimit

    with DAG("paging_deferral", schedule=None, start_date=START) as dag:
        ResilientHttpOperator(
            task_id="users", http_conn_id="demo_api", endpoint="/users",
            pagination=Pagination("page_number", records="items", size_param="per_page", page_size=50, max_pages=3),
            rate_limit=RateLimit(1, 1.0), rate_limit_key=f"paging-defer-{tmp_path.name}",
            max_sleep=0.2,  # a page's wait is longer than the task may sleep: it defers between pages
        )  # fmt: skip
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    assert [u["id"] for u in _xcom(run, "users")] == list(range(1, 151))  # all three pages, not the last
    assert demo.calls()["paths"]["/users"] == 3  # each page once, across the deferrals


@pytest.mark.parametrize("status", [429, 503])
def test_pages_answered_429_or_5xx_mid_way_are_retried_in_the_task(demo, status):
    from airflow.sdk import DAG

    _freeze(demo)
    expected = _contacts_in_window(demo)
    rule = {"path": "/crm/contacts", "error_rate": 0.3, "status": status, "retry_after": "0", "seed": 7}
    requests.post(f"{demo.url}/admin/faults", json=rule, timeout=5).raise_for_status()
    with DAG(f"paging_faults_{status}", schedule=None, start_date=START) as dag:
        ResilientHttpOperator(
            task_id="contacts", http_conn_id="demo_api", endpoint="/crm/contacts",
            query={"updated_since": SINCE}, pagination=CONTACTS, retry=FAST,
        )  # fmt: skip
    _register(dag)
    run = dag.test()
    (applied,) = requests.get(f"{demo.url}/admin/faults", timeout=5).json()["rules"]
    assert run.state == "success", _states(run)
    assert applied["injected"] >= 1  # some pages were refused, then retried by the flow
    contacts = _xcom(run, "contacts")
    assert [c["id"] for c in contacts] == expected and len(expected) == 601


def test_an_airflow_retry_resumes_at_the_page_that_failed(demo):
    """Page 3 fails for good in the first try (one attempt per page); the retry sends page 3 to 7 only."""
    from airflow.sdk import DAG

    _freeze(demo)
    expected = _contacts_in_window(demo)
    demo.reset()
    _freeze(demo)
    seed = _seed([False, False, True] + [False] * 5, 0.4)
    rule = {"path": "/crm/contacts", "error_rate": 0.4, "status": 503, "seed": seed}
    requests.post(f"{demo.url}/admin/faults", json=rule, timeout=5).raise_for_status()
    with DAG("paging_airflow_retry", schedule=None, start_date=START) as dag:
        ResilientHttpOperator(
            task_id="contacts", http_conn_id="demo_api", endpoint="/crm/contacts",
            query={"updated_since": SINCE}, pagination=CONTACTS,
            retry=RetryPolicy(max_attempts=1), retries=1, retry_delay=dt.timedelta(seconds=0),
        )  # fmt: skip
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    ti = run.get_task_instances()[0]
    assert ti.try_number == 2
    # 2 pages + the failed page 3 in the first try; pages 3..7 in the second: none sent twice but the failed one
    assert demo.calls()["paths"]["/crm/contacts"] == 3 + 5
    contacts = _xcom(run, "contacts")
    assert [c["id"] for c in contacts] == expected  # no duplicate, no gap, in order


def test_next_url_in_the_body_with_a_manifest_output_and_the_xcom_size_error(demo, tmp_path):
    from airflow.sdk import DAG

    from api_orchestration.operators.paging import iter_records

    _freeze(demo)
    expected = _contacts_in_window(demo)
    next_url = {"style": "next_url", "records": "results", "next_url_path": "paging.next.link"}
    with DAG("paging_next_url", schedule=None, start_date=START) as dag:
        ResilientHttpOperator(
            task_id="manifest", http_conn_id="demo_api", endpoint="/crm/contacts",
            query={"updated_since": SINCE, "limit": 100},
            pagination=Pagination(**next_url, output="manifest"), retry=FAST,
        )  # fmt: skip
        ResilientHttpOperator(
            task_id="too_large", http_conn_id="demo_api", endpoint="/crm/contacts",
            query={"updated_since": SINCE, "limit": 100},
            pagination=Pagination(**next_url, max_xcom_bytes=50_000), retry=FAST,
        )  # fmt: skip
    _register(dag)
    run = dag.test()
    assert _states(run) == {"manifest": "success", "too_large": "failed"}
    manifest = _xcom(run, "manifest")
    assert (manifest["pages"], manifest["rows"], manifest["stop"]) == (7, 601, "no next page")
    assert manifest["uri"].startswith((tmp_path / "results").as_uri()) and len(manifest["parts"]) == 7
    assert [c["id"] for c in iter_records(manifest)] == expected
    # the too-large task stopped after the page that crossed the limit, not after reading everything
    assert demo.calls()["paths"]["/crm/contacts"] < 7 + 7 + 7


def test_operator_refuses_pagination_it_cannot_honour():
    from api_orchestration import ConfigurationError
    from api_orchestration.policy import CachePolicy

    p = Pagination("link_header")
    with pytest.raises(ConfigurationError, match=r"method must be GET with pagination"):
        ResilientHttpOperator(task_id="a", endpoint="/x", method="POST", pagination=p)
    with pytest.raises(ConfigurationError, match=r"response_filter must not be set with pagination: pick"):
        ResilientHttpOperator(task_id="b", endpoint="/x", pagination=p, response_filter=lambda r: r)
    with pytest.raises(ConfigurationError, match=r"cache must not be set with pagination"):
        ResilientHttpOperator(task_id="c", endpoint="/x", pagination=p, cache=CachePolicy(60))
    with pytest.raises(ConfigurationError, match=r"output must be 'records'"):
        Pagination("link_header", output="pages")


def test_a_paginated_workflow_step_gives_its_records_to_later_steps(demo):
    from api_orchestration import Call, Step, Workflow, build

    users = Pagination(
        "page_number", records="items", size_param="per_page", page_size=50, total_path="total"
    )
    wf = Workflow(
        "paging_step_results",
        steps=(
            Step("list_users", Call("GET", "/users", paginate=users), output="[].id"),
            Step(
                "last_user", Call("GET", "/users/{{ results.list_users | last }}"), depends_on=("list_users",)
            ),
            Step("both", merge=("list_users", "last_user")),
        ),
        conn_id="demo_api",
        retry=FAST,
    )
    dag = build(wf, schedule=None, start_date=START)
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    assert _xcom(run, "list_users") == list(range(1, 241))  # five pages of records, then ``output``
    assert _xcom(run, "last_user")["id"] == 240
    assert demo.calls()["paths"]["/users"] == 5


def test_a_bulk_step_fans_out_over_a_paginated_list_read_page_by_page(demo):
    import json

    from airflow.sdk import ObjectStoragePath

    from api_orchestration.specs import load_text

    _freeze(demo)
    url = f"{demo.url}/stripe/v1/charges"
    newest = requests.get(url, params={"limit": 1}, timeout=5).json()["data"][0]
    gte = newest["created"] - 450  # the last 450 s: one charge a second, five pages
    expected, after = [], None
    while True:  # ground truth, by hand
        body = requests.get(
            url,
            params={"limit": 100, "created[gte]": gte, **({"starting_after": after} if after else {})},
            timeout=5,
        ).json()
        expected += [c["id"] for c in body["data"]]
        if not body["has_more"]:
            break
        after = body["data"][-1]["id"]
    demo.reset()
    _freeze(demo)
    spec = {
        "dag_id": "paging_bulk_source",
        "defaults": {"conn_id": "demo_api", "retry": {"max_attempts": 6, "base_delay": 0.01, "max_delay": 0.05}},
        "steps": [
            {
                "name": "echo_charges",
                "call": {"path": "/echo/charges/{{ item.id }}", "query": {"amount": "{{ item.amount }}"}},
                "output": "path",
                "bulk": {
                    "concurrency": 32,
                    "items_from": {
                        "path": "/stripe/v1/charges",
                        "query": {"created[gte]": gte},
                        "paginate": {
                            "style": "cursor", "records": "data", "cursor_path": "data[-1].id",
                            "cursor_param": "starting_after", "has_more_path": "has_more",
                            "page_size": 100, "size_param": "limit",
                        },
                    },
                },
            }
        ],
    }  # fmt: skip
    dag = load_text(yaml.safe_dump(spec), "paging_bulk_source.yaml").dag
    _register(dag)
    run = dag.test()
    assert run.state == "success", _states(run)
    summary = _xcom(run, "echo_charges")
    assert summary["total"] == summary["succeeded"] == len(expected) > 400
    with ObjectStoragePath(summary["uri"]).open("rb") as f:
        rows = [json.loads(line) for line in f.read().splitlines()]
    assert [r["result"] for r in rows] == [
        f"/echo/charges/{cid}" for cid in expected
    ]  # each item once, in order
    calls = demo.calls()["paths"]
    assert calls["/stripe/v1/charges"] == -(-len(expected) // 100)  # one call per page of the list
    assert sum(n for p, n in calls.items() if p.startswith("/echo/charges/")) == len(expected)


def test_paged_items_keep_a_few_pages_in_memory(tmp_path):
    """The bulk source's items: positions counted once, parts read back lazily (evicted and re-read)."""
    import gzip
    import json

    from api_orchestration.operators.paging import PagedItems

    parts = []
    for page in range(5):
        path = tmp_path / f"part-{page + 1:05d}.jsonl.gz"
        path.write_bytes(
            gzip.compress(b"".join(json.dumps({"n": page * 10 + i}).encode() + b"\n" for i in range(10)))
        )
        parts.append(path.as_uri())
    items = PagedItems({"parts": parts}, cached_parts=2)
    assert len(items) == 50 and [items[i]["n"] for i in range(50)] == list(range(50))
    assert len(items._cache) == 2 and items[3]["n"] == 3 and items[-1]["n"] == 49
    with pytest.raises(IndexError):
        items[50]


@pytest.mark.parametrize(
    ("step", "problem"),
    [
        (
            {"call": {"method": "POST", "path": "/x", "paginate": {"style": "link_header"}}},
            "steps[0].call.paginate: pages GET requests only; set method: GET or remove paginate, got 'POST'",
        ),
        (
            {"call": {"path": "/x", "paginate": {"style": "link_header", "output": "all"}}},
            "steps[0].call.paginate.output: must be 'records' (the records, in XCom) or 'manifest' (the files), got 'all'",
        ),
        (
            {"call": {"path": "/x", "paginate": {"style": "next_url", "next_url_path": "links..next"}}},
            "steps[0].call.paginate.next_url_path: must be valid JMESPath",
        ),
        (
            {"call": {"path": "/x", "paginate": {"style": "link_header"}}, "bulk": {"over": [1]}},
            "steps[0].bulk: is not supported with call.paginate: to fan out over a paginated list, put the list "
            "call in bulk.items_from",
        ),
        (
            {
                "call": {"path": "/x", "paginate": {"style": "link_header", "output": "manifest"}},
                "output": "[].id",
            },
            "steps[0].output: applies to the records, and paginate.output is 'manifest'",
        ),
        (
            {"call": {"path": "/x/{{ item }}"}, "bulk": {"items_from": {"path": "/u"}}},
            "steps[0].bulk.items_from: must be a paginated GET: Call('GET', path, paginate=Pagination(...)) "
            "(spec: paginate: {style: ...}), got 'no paginate'",
        ),
        (
            {"call": {"path": "/x/{{ item }}"}, "bulk": {"over": [1], "items_from": {"path": "/u"}}},
            "steps[0].bulk.over: must not be set with items_from",
        ),
        (
            {
                "call": {"path": "/x/{{ item }}"},
                "bulk": {"items_from": {"path": "/u/{{ item }}", "paginate": {"style": "link_header"}}},
            },
            "steps[0].bulk.items_from.path: template uses 'item', which exists only in fan_out, bulk and "
            "partitioned sync steps",
        ),
    ],
)
def test_bad_paginate_specs_name_the_file_the_field_and_the_fix(step, problem):
    from api_orchestration.errors import SpecError
    from api_orchestration.specs import load_text

    text = yaml.safe_dump({"steps": [{"name": "a", **step}]})
    with pytest.raises(SpecError) as caught:
        load_text(text, "pages.yaml", default_dag_id="pages")
    assert f"pages.yaml: {problem}" in str(caught.value), str(caught.value)
