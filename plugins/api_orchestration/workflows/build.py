"""Render a validated :class:`~api_orchestration.workflows.model.Workflow` as an Airflow DAG.

Each step becomes a task named after it, so the graph shows the workflow's shape:

- a call step -> ``StepOperator`` (condition ``when``, ``output`` filter, ``fallback`` call); with
  ``call.paginate``, every page of the call (the result: the records of all pages, see ``operators.paging``);
- a poll step -> ``PollingHttpOperator`` (a ``StepOperator`` that submits, polls until done, fetches);
- a bulk step -> ``BulkHttpOperator`` (every call in one task; ``items_from``: over a paginated list);
- a sync step -> ``ApiSyncOperator``; with partitions, ``<step>_partitions`` (the list) -> ``<step>``
  (mapped: one sync per partition);
- a merge step -> a task returning ``{step: result}`` for the merged steps;
- a fan-out step -> ``<step>_items`` (the list) -> ``<step>_each`` (mapped, ``max_active`` at once)
  -> ``<step>`` (collects results, fails past ``tolerate_failures``);
- compensations -> a ``saga_check`` gate, ``undo_<step>`` tasks in reverse order and a ``saga_outcome``
  leaf (see ``saga``).

Dependencies follow ``depends_on`` (and ``merge``). The workflow's ``output`` step becomes the DAG's
result (Airflow's ``dag.add_result``: REST ``GET /api/v2/dags/{dag}/dagRuns/{run}/wait`` returns it). DAGs render templates as native objects, so
``result("user", "id")`` in a JSON body stays an int. Step templates render in a sandbox
(:mod:`api_orchestration.rendering`); the builder's own Python tasks get their arguments as
literals, never as templates (a JMESPath may hold ``{{``, and Airflow's native environment is not
sandboxed).
"""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.python import PythonOperator, ShortCircuitOperator
from airflow.sdk import DAG, TriggerRule, literal
from airflow.sdk.exceptions import AirflowFailException

from api_orchestration.calls.idempotency import request_key
from api_orchestration.operators.bulk import BulkHttpOperator
from api_orchestration.operators.paging import PagedList
from api_orchestration.operators.poll import PollingHttpOperator
from api_orchestration.operators.saga import (
    COMPENSATE,
    CompensationOperator,
    SagaOutcomeOperator,
    saga_failed,
    saga_step_class,
)
from api_orchestration.operators.step import StepOperator, items_from
from api_orchestration.workflows.model import Call, FanOut, Step, Workflow, allowed_failures


def _untemplated(**kwargs: Any) -> dict[str, Any]:
    """``op_kwargs`` that Airflow passes as they are, without rendering them as templates."""
    return {name: literal(value) for name, value in kwargs.items()}


def _call_kwargs(wf: Workflow, call: Call) -> dict[str, Any]:
    kwargs = {
        "method": call.method,
        "endpoint": call.path,
        "json": call.json,
        "query": call.query,
        "headers": call.headers,
        "http_conn_id": call.conn_id or wf.conn_id,
        "oauth2_conn_id": call.oauth2_conn_id or wf.oauth2_conn_id,
    }
    if call.idempotency_key is not None:  # a business key (template); default: derived per run
        kwargs["idempotency_key"] = call.idempotency_key
    return kwargs


def _policies(wf: Workflow, step: Step) -> dict[str, Any]:
    timeout = step.timeout or wf.timeout
    cache = step.cache or wf.cache  # the workflow's applies to the steps whose method it caches
    if cache is not None and step.call is not None and step.call.method not in cache.methods:
        cache = None
    if step.poll is not None or step.paginated:  # a job's status, pages: read anew every time
        cache = None
    return {
        "rate_limit_key": step.key,
        "breaker_key": step.key,
        "retry": step.retry or wf.retry,
        "rate_limit": step.rate_limit or wf.rate_limit,
        "breaker": step.breaker or wf.breaker,
        "max_in_flight": step.max_in_flight or wf.max_in_flight,
        "timeout": (min(10.0, timeout), timeout),
        "cache": cache,
        "log_response": step.log_response or wf.log_response,
    }


def _merge(steps: tuple[str, ...], **context: Any) -> dict[str, Any]:
    ti = context["ti"]
    return {s: ti.xcom_pull(task_ids=s) for s in steps}


def _fan_out_items(expression: str, upstream: tuple[str, ...], **context: Any) -> list[Any]:
    return items_from(expression, context, upstream)


def _collect(step: str, fan_out: FanOut, **context: Any) -> dict[str, Any]:
    ti = context["ti"]
    each = f"{step}_each"
    found = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id], task_ids=[each]).get(ti.run_id, {})
    indexes = sorted(int(k.rsplit("_", 1)[1]) for k in found if k.startswith(f"{each}_"))
    ok = [i for i in indexes if found[f"{each}_{i}"] == "success"]
    failed = [i for i in indexes if found[f"{each}_{i}"] != "success"]
    allowed = allowed_failures(fan_out.tolerate_failures, len(indexes))
    summary = {
        "total": len(indexes),
        "succeeded": len(ok),
        "failed": failed,
        "results": [ti.xcom_pull(task_ids=each, map_indexes=i) for i in ok],
    }
    if len(failed) > allowed:
        raise AirflowFailException(
            f"fan-out {step!r}: {len(failed)} of {len(indexes)} failed (map indexes {failed}); at most {allowed:g} tolerated"
        )
    return summary


def _step_task(wf: Workflow, step: Step, dag: DAG, saga: bool) -> tuple[Any, Any]:
    """Create the task(s) of one step; returns (first, last) for wiring."""
    if step.merge:
        task = PythonOperator(
            task_id=step.name, python_callable=_merge, op_kwargs=_untemplated(steps=step.merge), dag=dag
        )
        return task, task
    assert step.call is not None
    if step.sync is not None:
        return _sync_task(wf, step, dag)
    if step.bulk is not None:
        listing = step.bulk.items_from
        over: Any = step.bulk.over
        if listing is not None:
            assert listing.paginate is not None
            over = PagedList(listing.path, listing.paginate, listing.query, listing.headers)
        task = BulkHttpOperator(
            task_id=step.name, dag=dag, items=over, inputs=wf.upstream(step.name),
            concurrency=step.bulk.concurrency, tolerate_failures=step.bulk.tolerate_failures, select=step.output,
            **_call_kwargs(wf, step.call), **_policies(wf, step),
        )  # fmt: skip
        return task, task
    kwargs = {**_call_kwargs(wf, step.call), **_policies(wf, step)}
    kwargs.update(when=step.when, inputs=wf.upstream(step.name), select=step.output)
    if step.paginated:
        kwargs["pagination"] = step.call.paginate
    if step.fallback is not None:  # its own breaker: the step's may be open, which is why it runs
        key = f"{step.key or step.fallback.conn_id or wf.conn_id}:fallback"
        kwargs["fallback"] = {**_call_kwargs(wf, step.fallback), "breaker_key": key}
    operator: type[StepOperator] = StepOperator
    if step.poll is not None:
        operator, kwargs["poll"] = PollingHttpOperator, step.poll
    if step.fan_out is None:
        if saga:  # a saga step records its own failure (no dag-processor callback)
            operator = saga_step_class(operator)
        task = operator(task_id=step.name, dag=dag, **kwargs)
        return task, task
    fan_out = step.fan_out
    if isinstance(fan_out.over, str):
        items = PythonOperator(
            task_id=f"{step.name}_items", python_callable=_fan_out_items, dag=dag,
            op_kwargs=_untemplated(expression=fan_out.over, upstream=wf.upstream(step.name)),
        )  # fmt: skip
        source: Any = items.output
    else:
        items, source = None, list(fan_out.over)
    each = operator.partial(
        task_id=f"{step.name}_each", dag=dag, max_active_tis_per_dagrun=fan_out.max_active, **kwargs
    ).expand(item=source)
    collect = PythonOperator(
        task_id=step.name, python_callable=_collect, dag=dag, trigger_rule=TriggerRule.ALL_DONE,
        op_kwargs=_untemplated(step=step.name, fan_out=fan_out),
    )  # fmt: skip
    each >> collect
    if items is not None:
        items >> each
        return items, collect
    return each, collect


def _sync_policies(wf: Workflow, step: Step) -> dict[str, Any]:
    """A sync's pages are never served from the response cache, and its bodies are not logged."""
    policies = _policies(wf, step)
    del policies["cache"], policies["log_response"]
    return policies


def _sync_task(wf: Workflow, step: Step, dag: DAG) -> tuple[Any, Any]:
    """A sync step: one ``ApiSyncOperator``; with partitions, ``<step>_partitions`` (the list) ->
    ``<step>`` mapped over it (one sync per partition, ``max_active`` at once)."""
    from airflow.sdk import Asset

    from api_orchestration.operators.partitions import SyncPartitionsOperator
    from api_orchestration.operators.sync import ApiSyncOperator

    call, sync = step.call, step.sync
    assert call is not None and sync is not None and call.paginate is not None
    conn = {
        "http_conn_id": call.conn_id or wf.conn_id,
        "oauth2_conn_id": call.oauth2_conn_id or wf.oauth2_conn_id,
    }
    kwargs = dict(
        task_id=step.name, dag=dag, endpoint=call.path, query=call.query, headers=call.headers,
        pagination=call.paginate, stream=sync.stream, destination=sync.destination, columns=sync.columns,
        keep_raw=sync.keep_raw, outlets=[Asset(sync.asset)] if sync.asset else [], **conn, **_sync_policies(wf, step),
    )  # fmt: skip
    parts = sync.partitions
    if parts is None:
        task = ApiSyncOperator(**kwargs)
        return task, task
    parent = parts.parent
    if parent is not None:  # its own connection if it names one, else the sync call's
        conn = {
            "http_conn_id": parent.conn_id or conn["http_conn_id"],
            "oauth2_conn_id": parent.oauth2_conn_id or conn["oauth2_conn_id"],
        }
    listing = SyncPartitionsOperator(
        task_id=f"{step.name}_partitions", dag=dag, step=step.name, over=parts.over, key=parts.key,
        inputs=wf.upstream(step.name), max_partitions=parts.max_partitions,
        parent_endpoint=parent.path if parent else None, parent_query=parent.query if parent else None,
        parent_headers=parent.headers if parent else None, parent_pagination=parent.paginate if parent else None,
        **conn, **_sync_policies(wf, step),
    )  # fmt: skip
    each = ApiSyncOperator.partial(max_active_tis_per_dagrun=parts.max_active, **kwargs).expand_kwargs(
        listing.output
    )
    listing >> each
    return listing, each


def build(workflow: Workflow, **dag_kwargs: Any) -> DAG:
    """The DAG for ``workflow`` (``dag_kwargs`` go to ``DAG``: schedule, start_date, tags ...)."""
    wf = workflow.validate()
    dag_kwargs.setdefault("render_template_as_native_obj", True)
    dag = DAG(dag_id=wf.name, **dag_kwargs)
    saga = any(s.compensate for s in wf.steps)
    ends: dict[str, tuple[Any, Any]] = {}
    for name in wf.order():
        first, last = _step_task(wf, wf.step(name), dag, saga)
        for up in wf.upstream(name):
            ends[up][1] >> first
        ends[name] = (first, last)
    if saga:
        _wire_saga(wf, dag, ends)
    if wf.output is not None:  # the run's result: GET .../dagRuns/{run}/wait returns it
        dag.add_result(ends[wf.output][1].output)
    return dag


def _wire_saga(wf: Workflow, dag: DAG, ends: dict[str, tuple[Any, Any]]) -> None:
    steps = wf.order()
    check = ShortCircuitOperator(
        task_id="saga_check", dag=dag, python_callable=saga_failed, op_kwargs=_untemplated(saga_steps=steps),
        trigger_rule=TriggerRule.ALL_DONE, ignore_downstream_trigger_rules=True,
    )  # fmt: skip
    for s in steps:
        ends[s][1] >> check
    compensations: dict[str, str] = {}
    previous: Any = check
    for name in reversed(steps):
        step = wf.step(name)
        if step.compensate is None:
            continue
        undo_call = _call_kwargs(wf, step.compensate)
        if step.compensate.idempotency_key is None and step.call and step.call.idempotency_key is not None:
            # the undo of a business-keyed step: its own key, derived from the step's (stable across runs)
            undo_call["idempotency_key"] = request_key(step.call.idempotency_key, COMPENSATE)
        undo = CompensationOperator(
            task_id=f"undo_{name}", dag=dag, undoes=name, saga_steps=steps, trigger_rule=TriggerRule.ALL_DONE,
            compensation_retry=step.compensation_retry or wf.compensation_retry,
            **undo_call, **{**_policies(wf, step), "cache": None},
        )  # fmt: skip
        previous >> undo
        previous = undo
        compensations[undo.task_id] = name
    outcome = SagaOutcomeOperator(
        task_id="saga_outcome",
        dag=dag,
        saga_steps=steps,
        compensations=compensations,
        trigger_rule=TriggerRule.ALL_DONE,
    )
    previous >> outcome
