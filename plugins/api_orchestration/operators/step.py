"""``StepOperator``: a workflow step's call, plus its condition, output filter and fallback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jmespath
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from api_orchestration.calls.idempotency import request_key, task_key
from api_orchestration.errors import CircuitOpenError, HttpCallError
from api_orchestration.operators.http import (
    UNSAFE_METHODS,
    CallSpec,
    ResilientHttpOperator,
    default_response_filter,
)
from api_orchestration.operators.resume import Resume
from api_orchestration.redaction import register_secrets, request_secrets

FALLBACK = "fallback"


def step_inputs(context: Context, steps: Sequence[str]) -> dict[str, Any]:
    """What conditions and fan-out expressions see: ``conf``, ``params`` and upstream ``results``."""
    ti = context["ti"]
    dag_run = context.get("dag_run")
    conf = dict(getattr(dag_run, "conf", None) or {})
    return {
        "conf": conf,
        "params": dict(context.get("params") or {}),
        "results": {s: ti.xcom_pull(task_ids=s) for s in steps},
    }


def items_from(expression: str, context: Context, steps: Sequence[str]) -> list[Any]:
    """The list a fan-out or bulk step iterates: ``expression`` (JMESPath) over :func:`step_inputs`."""
    items = jmespath.search(expression, step_inputs(context, steps))
    if not isinstance(items, list):
        raise AirflowFailException(f"items expression {expression!r} gave {type(items).__name__}, not a list")
    return items


class StepOperator(ResilientHttpOperator):
    """A :class:`ResilientHttpOperator` that knows its place in a workflow.

    :param when: JMESPath over ``{"conf", "params", "results"}``; falsy -> the step is skipped.
    :param inputs: the upstream steps whose results ``when`` may read.
    :param select: JMESPath applied to the response (JSON or text) to form the step's result; with
        ``pagination``, applied to the list of every page's records.
    :param fallback: a second call (``endpoint``, ``method``, ``json``, ``query``, ``headers``,
        ``http_conn_id``, ``breaker_key``, ``rate_limit_key``, ``oauth2_conn_id``) made when the call fails for good: its
        own request, keys and idempotency key (``<the step's key>:fallback``); the result is then
        ``{"fallback": true, "result": ...}``.
    :param item: one fan-out item, available as ``{{ item }}`` in templated fields.
    """

    template_fields: Sequence[str] = (*ResilientHttpOperator.template_fields, "fallback")

    def __init__(
        self,
        *,
        when: str | None = None,
        inputs: Sequence[str] = (),
        select: str | None = None,
        fallback: dict[str, Any] | None = None,
        item: Any = None,
        **kwargs: Any,
    ) -> None:
        paged = kwargs.get("pagination") is not None
        if select is not None and "response_filter" not in kwargs and not paged:
            expression = jmespath.compile(select)
            kwargs["response_filter"] = lambda r: expression.search(default_response_filter(r))
        super().__init__(**kwargs)
        self.when, self.inputs, self.select, self.fallback, self.item = (
            when,
            tuple(inputs),
            select,
            fallback,
            item,
        )
        self._when = jmespath.compile(when) if when else None
        self._select = jmespath.compile(select) if select and paged else None

    def template_context(self, context: Any) -> None:
        # both paths (plain and mapped tasks) render through here; a mapped task's item is set by now
        context["item"] = self.item
        super().template_context(context)

    def after_rendering(self, context: Any) -> None:
        super().after_rendering(context)
        if self.fallback:
            fb = self.fallback
            register_secrets(
                request_secrets(fb.get("endpoint"), fb.get("query"), fb.get("headers"), fb.get("json"))
            )

    def execute(self, context: Context) -> Any:
        if self._when is not None and not self._when.search(step_inputs(context, self.inputs)):
            raise AirflowSkipException(f"condition {self.when!r} is false: step {self.task_id!r} skipped")
        return super().execute(context)

    def call_spec(self, context: Context, phase: str) -> CallSpec:
        if phase != FALLBACK:
            return super().call_spec(context, phase)
        f = dict(self.fallback or {})
        method = str(f.get("method", "GET")).upper()
        key = None
        if method in UNSAFE_METHODS:
            key = request_key(self.own_key(context) or task_key(context["ti"]), FALLBACK)
        return CallSpec(
            f["endpoint"], method, f.get("http_conn_id") or self.http_conn_id, f.get("json"), f.get("data"),
            f.get("query"), f.get("headers"), f.get("rate_limit_key"), f.get("breaker_key"), key,
            oauth2_conn_id=f.get("oauth2_conn_id", self.oauth2_conn_id),
        )  # fmt: skip

    def on_call_failed(self, context: Context, phase: str, error: Exception) -> Any:
        if phase == FALLBACK or not self.fallback or not isinstance(error, HttpCallError | CircuitOpenError):
            raise error
        self.log.warning("step %r failed (%s); calling its fallback", self.task_id, error)
        return self.run_phase(context, Resume(FALLBACK, 1))

    def on_pages_done(self, context: Context, manifest: dict[str, Any]) -> Any:
        value = super().on_pages_done(context, manifest)
        return value if self._select is None else self._select.search(value)

    def on_call_succeeded(self, context: Context, phase: str, spec: CallSpec, response: Any) -> Any:
        result = super().on_call_succeeded(context, phase, spec, response)
        return {"fallback": True, "result": result} if phase == FALLBACK else result
