"""Spec DAGs run through dag.test() against the demo services and behave like their Python twins."""

from __future__ import annotations

import pytest
from test_dags import _register, _states
from test_example_workflows import ORDER, _xcom, ledger

from api_orchestration.specs import load_text

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag()


def test_spec_dags_load_from_the_dags_folder(dagbag):
    assert dagbag.import_errors == {}
    assert {"order_saga_spec", "user_enrichment_spec"} <= set(dagbag.dag_ids)


def test_order_saga_spec_rolls_back_exactly_like_the_python_dag(dagbag, demo):
    conf = {**ORDER, "skus": ["OUT-OF-STOCK"]}
    python_run = dagbag.get_dag("order_saga").test(run_conf={**conf, "order_id": "o-py"})
    spec_run = dagbag.get_dag("order_saga_spec").test(run_conf={**conf, "order_id": "o-spec"})
    assert spec_run.state == python_run.state == "failed"
    assert _states(spec_run) == _states(python_run)
    assert _states(spec_run)["undo_charge_payment"] == "success"
    py_book, spec_book = ledger(demo, "o-py"), ledger(demo, "o-spec")
    fields = ("charged", "refunded", "net_cents", "open_reservations", "open_shipments")
    spec_order, py_order = spec_book["orders"]["o-spec"], py_book["orders"]["o-py"]
    assert [spec_order[f] for f in fields] == [py_order[f] for f in fields] == [1250, 1250, 0, 0, 0]
    assert (
        [e["type"] for e in spec_book["entries"]]
        == [e["type"] for e in py_book["entries"]]
        == ["charge", "refund"]
    )


def test_order_saga_spec_happy_path(dagbag, demo):
    run = dagbag.get_dag("order_saga_spec").test(run_conf={**ORDER, "order_id": "o-spec-ok"})
    assert run.state == "success", _states(run)
    order = ledger(demo, "o-spec-ok")["orders"]["o-spec-ok"]
    assert (order["charged"], order["refunded"], order["open_reservations"], order["open_shipments"]) == (
        1250, 0, 1, 1,
    )  # fmt: skip


def test_user_enrichment_spec_merges_the_same_result(dagbag, demo):
    python_run = dagbag.get_dag("user_enrichment").test(run_conf={"user_id": 11})
    spec_run = dagbag.get_dag("user_enrichment_spec").test(run_conf={"user_id": 11})
    assert spec_run.state == python_run.state == "success"
    assert _xcom(spec_run, "profile") == _xcom(python_run, "profile")
    assert _xcom(spec_run, "profile")["user"]["id"] == 11


PIPELINE = """
dag_id: spec_pipeline
defaults: {conn_id: demo_api}
params:
  per_page: {default: 3, type: integer}
steps:
  - name: list_users
    call: {path: /users, query: {per_page: "{{ params.per_page }}"}}
    output: items
  - name: posts
    depends_on: list_users
    fan_out: {over: "results.list_users[*].id", max_active: 2}
    call: {path: "/users/{{ item }}/posts", query: {per_page: 1}}
    output: items[0].user_id
  - name: greet
    depends_on: [list_users]
    call:
      method: POST
      path: /echo/greet
      json: {first: "{{ results.list_users[0].name }}", ids: "{{ results.list_users | map(attribute='id') | list }}"}
    output: json
  - name: notify
    depends_on: greet
    when: conf.notify
    call: {method: POST, path: /notifications/email, json: {to: "{{ results.greet.first }}"}}
"""


def test_spec_pipeline_fan_out_and_condition_render_upstream_results(demo):
    dag = load_text(PIPELINE, "pipeline.yaml").dag
    _register(dag)
    run = dag.test(run_conf={})
    states = _states(run)
    assert run.state == "success", states
    assert states["notify"] == "skipped" and states["posts"] == "success"
    users = _xcom(run, "list_users")
    assert len(users) == 3
    assert _xcom(run, "greet") == {"first": users[0]["name"], "ids": [u["id"] for u in users]}  # native types
    assert _xcom(run, "posts")["results"] == [u["id"] for u in users]
