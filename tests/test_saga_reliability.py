"""Sagas that survive outages and duplicates: compensations retry with backoff for minutes, a business
id is the unit of idempotency, a failed step records its failure inside its own task.

Through dag.test() against the demo API (its ledger and call log); specs through the same loader."""

from __future__ import annotations

import uuid

import pytest
import requests
from test_dags import _register, _states
from test_example_workflows import ORDER, ledger

from api_orchestration import (
    Bulk,
    Call,
    ConfigurationError,
    FanOut,
    RetryPolicy,
    SpecError,
    Step,
    Workflow,
    build,
)
from api_orchestration.operators.saga import CompensationOperator, SagaStepOperator
from api_orchestration.policy import CompensationRetry
from api_orchestration.specs import load_text

pytestmark = pytest.mark.usefixtures("airflow_db")

FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)


@pytest.fixture(autouse=True)
def closed_breakers():
    """order_saga's breakers closed: an earlier test may have opened "payments" (a service down)."""
    from api_orchestration.state import get_backend

    for key in ("payments", "inventory", "shipping"):
        get_backend().breaker_reset(key)


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag()


def _ti(run, task_id: str):
    return next(t for t in run.get_task_instances() if t.task_id == task_id)


# -- compensations keep trying ----------------------------------------------------------------------
def test_default_compensation_retry_keeps_trying_for_minutes():
    default = CompensationRetry()
    waits = default.waits()
    assert len(waits) == default.retries == 8 and waits[:3] == [5, 10, 20] and max(waits) == 120
    assert 8 * 60 < sum(waits) < sum(min(2 * w, 120) for w in waits) < 11 * 60  # not ~20 s
    wf = Workflow(
        "wf_comp_default",
        conn_id="demo_api",
        steps=(Step("charge", Call("POST", "/echo/charge"), compensate=Call("POST", "/echo/refund")),),
    )
    undo = build(wf, schedule=None).get_task("undo_charge")
    assert isinstance(undo, CompensationOperator)
    assert (undo.retries, undo.retry_delay.total_seconds(), undo.retry_exponential_backoff) == (8, 5, 2)
    assert undo.max_retry_delay.total_seconds() == 120


def test_compensation_retry_is_set_per_workflow_and_per_step():
    wf = Workflow(
        "wf_comp_custom",
        conn_id="demo_api",
        compensation_retry=CompensationRetry(retries=20, delay=10, max_delay=300),
        steps=(
            Step("charge", Call("POST", "/echo/charge"), compensate=Call("POST", "/echo/refund")),
            Step(
                "ship",
                Call("POST", "/echo/ship"),
                depends_on=("charge",),
                compensate=Call("POST", "/echo/cancel"),
                compensation_retry=CompensationRetry(retries=2, delay=1, multiplier=1, max_delay=1),
            ),
        ),
    )
    dag = build(wf, schedule=None)
    charge, ship = dag.get_task("undo_charge"), dag.get_task("undo_ship")
    assert (charge.retries, charge.retry_delay.total_seconds(), charge.max_retry_delay.total_seconds()) == (
        20, 10, 300,
    )  # fmt: skip
    assert (ship.retries, ship.retry_exponential_backoff) == (2, 0)  # multiplier 1: a constant delay


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retries": -1}, "CompensationRetry: retries must be an integer from 0 to 100, got -1"),
        ({"multiplier": 0.5}, "CompensationRetry: multiplier must be a number >= 1"),
        ({"delay": 60, "max_delay": 30}, "CompensationRetry: max_delay must be seconds >= delay (60)"),
    ],
)
def test_compensation_retry_values_are_checked(kwargs, message):
    with pytest.raises(ConfigurationError) as info:
        CompensationRetry(**kwargs)
    assert message in str(info.value)


def test_compensation_retry_without_a_compensation_is_refused():
    with pytest.raises(ConfigurationError, match=r"compensation_retry.*needs a compensate call"):
        Workflow(
            "wf_comp_orphan",
            steps=(Step("a", Call("GET", "/a"), compensation_retry=CompensationRetry()),),
        ).validate()


def test_a_compensation_retries_with_backoff_until_the_service_is_back(demo, capfd):
    """The refund endpoint is down for 6 calls (3 tries of 2 attempts): the 4th try undoes the charge,
    after waits that grow, each failed try logged with when the next one is due."""
    flaky = f"undo-{uuid.uuid4().hex[:8]}"
    wf = Workflow(
        "wf_comp_outage",
        conn_id="demo_api",
        retry=FAST,
        compensation_retry=CompensationRetry(retries=4, delay=1, multiplier=2, max_delay=3),
        steps=(
            Step("charge", Call("POST", "/echo/charge"), compensate=Call("POST", f"/flaky/{flaky}?fail=6")),
            Step("reserve", Call("POST", "/status/409"), depends_on=("charge",)),
        ),
    )
    dag = build(wf, schedule=None)
    _register(dag)
    run = dag.test()
    states = _states(run)
    assert run.state == "failed"  # rolled back: the saga's outcome
    assert (states["undo_charge"], _ti(run, "undo_charge").try_number) == ("success", 4)
    assert demo.calls()["paths"][f"/flaky/{flaky}"] == 7
    logged = "".join(capfd.readouterr())  # the task log, as dag.test() prints it
    assert (
        "compensation of 'charge' failed on try 1 of 5" in logged
        and "retrying in 1 to 2 s (backoff)" in logged
    )
    assert "failed on try 3 of 5" in logged and "retrying in 3 s" in logged  # 4 to 8 s, capped at 3
    assert "compensation retry: undoing 'charge', try 4 of 5" in logged


# -- a business id is the dedup key ----------------------------------------------------------------
def test_call_idempotency_key_is_a_template_sent_as_the_key(demo):
    wf = Workflow(
        "wf_business_key",
        conn_id="demo_api",
        steps=(
            Step(
                "charge",
                Call("POST", "/echo/charge", idempotency_key="order-{{ dag_run.conf['order_id'] }}-charge"),
            ),
        ),
    )
    dag = build(wf, schedule=None)
    _register(dag)
    assert dag.test(run_conf={"order_id": "o-77"}).state == "success"
    assert dag.test(run_conf={"order_id": "o-77"}).state == "success"
    assert demo.calls()["by_path_and_key"]["/echo/charge"] == {"order-o-77-charge": 2}  # one key, 2 runs


@pytest.mark.parametrize("dag_id", ["order_saga", "order_saga_spec"])
def test_the_same_order_triggered_twice_is_charged_once(dagbag, demo, dag_id):
    order_id = f"o-twice-{dag_id}"
    dag = dagbag.get_dag(dag_id)
    for _ in range(2):
        run = dag.test(run_conf={**ORDER, "order_id": order_id, "amount_cents": 4200})
        assert run.state == "success", _states(run)
    book = ledger(demo, order_id)
    assert [e["type"] for e in book["entries"]] == ["charge", "reservation", "shipment"]
    assert book["orders"][order_id]["charged"] == 4200
    keys = demo.calls()["by_path_and_key"]["/payments/charges"]
    assert keys == {f"order-{order_id}-charge": 2}  # sent twice, acted on once


def test_without_an_order_id_each_run_has_its_own_key(dagbag, demo):
    dag = dagbag.get_dag("order_saga")
    for _ in range(2):
        assert dag.test(run_conf={**ORDER, "order_id": ""}).state == "success"
    keys = demo.calls()["by_path_and_key"]["/payments/charges"]
    assert len(keys) == 2 and all(k.startswith("order-manual__") for k in keys)  # the run id


@pytest.mark.parametrize(
    ("step", "message"),
    [
        (
            Step("b", Call("POST", "/x", idempotency_key="k-{{ index }}"), bulk=Bulk(over=[1])),
            "not supported on bulk steps",
        ),
        (
            Step("f", Call("POST", "/x", idempotency_key="same-for-all"), fan_out=FanOut(over=[1, 2])),
            "must use {{ item }} in a fan-out step",
        ),
    ],
)
def test_idempotency_keys_that_would_collide_are_refused(step, message):
    with pytest.raises(ConfigurationError) as info:
        Workflow("wf_keys", steps=(step,)).validate()
    assert message in str(info.value)


def test_an_empty_idempotency_key_is_refused():
    with pytest.raises(ConfigurationError, match="idempotency_key must be a non-empty string"):
        Call("POST", "/x", idempotency_key=" ")


SPEC = """
dag_id: spec_keys
defaults: {conn_id: demo_api, compensation_retry: {retries: 12, delay: 2}}
steps:
  - name: charge
    call: {method: POST, path: /echo/charge, idempotency_key: "order-{{ params.order_id }}-charge"}
    compensate: {method: POST, path: /echo/refund}
    compensation_retry: {retries: 3, max_delay: 30}
  - name: ship
    depends_on: charge
    call: {method: POST, path: /echo/ship}
    compensate: {method: POST, path: /echo/cancel}
params: {order_id: o-1}
"""


def test_specs_set_the_idempotency_key_and_compensation_retry():
    dag = load_text(SPEC, "spec_keys.yaml").dag
    assert dag.get_task("charge").idempotency_key == "order-{{ params.order_id }}-charge"
    charge, ship = dag.get_task("undo_charge"), dag.get_task("undo_ship")
    assert (charge.retries, charge.retry_delay.total_seconds(), charge.max_retry_delay.total_seconds()) == (
        3, 5, 30,
    )  # fmt: skip
    assert (ship.retries, ship.retry_delay.total_seconds()) == (12, 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("retries: 3, max_delay: 30", "retries: 3, multiplier: 0"),
            "steps[0].compensation_retry.multiplier: must be a number >= 1",
        ),
        (
            (
                'idempotency_key: "order-{{ params.order_id }}-charge"',
                'idempotency_key: "order-{{ conf.order_id }}"',
            ),
            "steps[0].call.idempotency_key",
        ),
    ],
)
def test_spec_errors_name_the_field(change, message):
    with pytest.raises(SpecError) as info:
        load_text(SPEC.replace(*change), "spec_keys.yaml")
    assert message in str(info.value)


# -- a failed saga step records its failure in its own task ----------------------------------------
def test_saga_steps_record_their_failure_without_a_dag_processor_callback(demo):
    """No on_failure_callback: Airflow runs it in the dag-processor when a task dies outside its
    runner, and a conf it cannot serialize (an int above 2**64) crashed the dag-processor."""
    wf = Workflow(
        "wf_saga_record",
        conn_id="demo_api",
        retry=FAST,
        steps=(
            Step("charge", Call("POST", "/echo/charge"), compensate=Call("POST", "/echo/refund")),
            Step("reserve", Call("POST", "/status/409"), depends_on=("charge",)),
        ),
    )
    dag = build(wf, schedule=None)
    for step in ("charge", "reserve"):
        task = dag.get_task(step)
        assert isinstance(task, SagaStepOperator) and not task.on_failure_callback
    _register(dag)
    run = dag.test()
    record = _ti(run, "reserve").xcom_pull(task_ids="reserve", key="saga_failure")
    assert (record["step"], record["error_type"], record["no_effect"], record["try"]) == (
        "reserve", "PermanentHttpStatusError", True, 1,
    )  # fmt: skip
    assert _states(run)["undo_charge"] == "success"
    requests.delete(f"{demo.url}/admin/faults", timeout=5)
