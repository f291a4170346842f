"""``StepOperator``: a workflow step's call, plus its condition, output filter and fallback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jmespath
from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from api_orchestration.errors import CircuitOpenError, HttpCallError
from api_orchestration.operators.http import ResilientHttpOperator, default_response_filter
from api_orchestration.redact import register_secrets, request_secrets


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
    :param select: JMESPath applied to the response (JSON or text) to form the step's result.
    :param fallback: kwargs of a second call (endpoint, method, json...) made when the call fails for good.
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
        if select is not None and "response_filter" not in kwargs:
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

    def before_rendering(self, context: Context) -> None:
        # both paths (plain and mapped tasks) render through here; a mapped task's item is set by now
        context["item"] = self.item  # type: ignore[typeddict-unknown-key]
        super().before_rendering(context)

    def after_rendering(self, context: Context) -> None:
        super().after_rendering(context)
        if self.fallback:
            fb = self.fallback
            register_secrets(
                request_secrets(fb.get("endpoint"), fb.get("query"), fb.get("headers"), fb.get("json"))
            )

    def execute(self, context: Context) -> Any:
        if self._when is not None and not self._when.search(step_inputs(context, self.inputs)):
            raise AirflowSkipException(f"condition {self.when!r} is false: step {self.task_id!r} skipped")
        try:
            return super().execute(context)
        except (HttpCallError, CircuitOpenError) as exc:
            if not self.fallback:
                raise
            self.log.warning("step %r failed (%s); calling its fallback", self.task_id, exc)
            return self._call_fallback(context)

    def _call_fallback(self, context: Context) -> Any:
        spec = dict(self.fallback or {})
        saved = {
            k: getattr(self, k) for k in ("endpoint", "method", "json", "query", "headers", "http_conn_id")
        }
        try:
            for key, value in spec.items():
                setattr(self, key, value.upper() if key == "method" else value)
            return {"fallback": True, "result": super().execute(context)}
        finally:
            for key, value in saved.items():
                setattr(self, key, value)
