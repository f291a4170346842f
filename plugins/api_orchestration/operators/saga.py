"""Sagas: compensations that undo, in reverse order, exactly the steps that completed.

Wiring (done by :func:`api_orchestration.workflows.build.build`)::

    step_a >> step_b >> step_c            (the forward steps; any shape)
    [all steps] >> saga_check >> undo_c >> undo_b >> undo_a >> saga_outcome   (all trigger_rule ALL_DONE)

- ``saga_check`` (a ShortCircuitOperator) waits for every step (ALL_DONE, not ONE_FAILED: parallel
  siblings may still be running). If none failed it skips everything downstream at once, so the happy
  path launches no compensation task at all; otherwise the chain runs.
- A failing step (:class:`SagaStepOperator`) records what failed (step, error, try) as the XCom
  ``saga_failure`` of that step, inside its own task. Not in an ``on_failure_callback``: when a task
  dies outside its runner Airflow runs that callback in the dag-processor, and a run whose conf the
  dag-processor cannot serialize (an integer above 2**64) crashed it.
- Each ``undo_<step>`` (ALL_DONE, so one failed compensation does not stop the others) compensates
  if its step completed or
  may have had an effect (a timeout, a 5xx, a task killed or marked failed), and skips if the step
  provably had none (a 4xx answer, an open circuit, a store down before any request, never
  started). Its idempotency key is its own, derived from the step's (``<step key>:compensate``), so
  undoing twice is harmless and a server that saves results per key never answers the undo with the
  step's saved result. It keeps trying for minutes (:class:`CompensationRetry`: Airflow retries with
  exponential backoff), logging each failed try and when the next one is due.
- ``saga_outcome`` is the leaf: it fails the run when the saga rolled back (so nobody mistakes a
  rolled-back order for a success) and names anything that could not be undone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from api_orchestration import metrics
from api_orchestration.calls.idempotency import request_key, task_key
from api_orchestration.errors import (
    CircuitOpenError,
    ConfigurationError,
    PermanentHttpStatusError,
    StateBackendError,
)
from api_orchestration.operators.http import CallSpec, ResilientHttpOperator
from api_orchestration.operators.poll import PollingHttpOperator
from api_orchestration.operators.resume import Resume
from api_orchestration.operators.step import StepOperator
from api_orchestration.policy import CompensationRetry
from api_orchestration.state.sagas import record_saga_outcome

logger = logging.getLogger(__name__)
FAILED = ("failed", "upstream_failed")
NO_EFFECT_ERRORS = (PermanentHttpStatusError, CircuitOpenError, ConfigurationError)
RECORD_KEY = "saga_failure"
COMPENSATE = "compensate"


def had_no_effect(error: BaseException | None) -> bool:
    """Whether a step's error proves it changed nothing: a 4xx, an open circuit, a bad argument, or
    a store that failed before any request was sent."""
    if isinstance(error, StateBackendError):
        return error.calls_made == 0
    return isinstance(error, NO_EFFECT_ERRORS)


def record_failure(context: Context, error: BaseException | None = None) -> None:
    """Record what failed, for compensations and the outcome (also usable as an ``on_failure_callback``)."""
    ti = context["ti"]
    error = error if error is not None else context.get("exception")
    ti.xcom_push(
        key=RECORD_KEY,
        value={
            "step": ti.task_id,
            "error": str(error)[:500] if error else "marked failed",
            "error_type": type(error).__name__ if error else None,
            "try": ti.try_number,
            "no_effect": had_no_effect(error),
        },
    )


class RecordsSagaFailure:
    """Mixin for a saga's forward step: record its failure (``saga_failure``) before failing."""

    def execute(self, context: Context) -> Any:
        try:
            return super().execute(context)  # type: ignore[misc]
        except AirflowSkipException:
            raise
        except Exception as exc:
            record_failure(context, exc)
            raise

    def execute_resume(self, context: Context, event: Any = None, attempt: int = 1, **kwargs: Any) -> Any:
        try:
            return super().execute_resume(context, event, attempt, **kwargs)  # type: ignore[misc]
        except AirflowSkipException:
            raise
        except Exception as exc:
            record_failure(context, exc)
            raise


class SagaStepOperator(RecordsSagaFailure, StepOperator):
    """A saga's call step."""


class SagaPollingOperator(RecordsSagaFailure, PollingHttpOperator):
    """A saga's poll step (submit an async job, poll it until done)."""


def saga_step_class(operator: type[StepOperator]) -> type[StepOperator]:
    """The saga version of a step's operator class."""
    saga_classes: dict[type[StepOperator], type[StepOperator]] = {
        StepOperator: SagaStepOperator,
        PollingHttpOperator: SagaPollingOperator,
    }
    if operator not in saga_classes:
        raise TypeError(f"no saga version of {operator.__name__}")
    return saga_classes[operator]


def saga_failed(saga_steps: Sequence[str], **context: Any) -> bool:
    """``saga_check``'s condition: did any step fail (or was it marked failed)?"""
    failed = [s for s, st in _states(context, saga_steps).items() if st in FAILED]
    if failed:
        logger.warning("saga failed at %s: compensating in reverse order", failed)
    return bool(failed)


def _states(context: Context, task_ids: Sequence[str]) -> dict[str, str | None]:
    ti = context["ti"]
    found = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id], task_ids=list(task_ids))
    states = found.get(ti.run_id, {})
    return {t: states.get(t) for t in task_ids}


class CompensationOperator(ResilientHttpOperator):
    """Undo step ``undoes`` if the saga failed and the step may have had an effect.

    ``compensation_retry`` (default :class:`CompensationRetry`: about 9 minutes) sets the task's
    ``retries``, ``retry_delay``, ``retry_exponential_backoff`` and ``max_retry_delay``; without it,
    explicit task arguments (or ``default_args``) win over the default.
    """

    ui_color = "#fff0e6"

    def __init__(
        self,
        *,
        undoes: str,
        saga_steps: Sequence[str],
        compensation_retry: CompensationRetry | None = None,
        **kwargs: Any,
    ) -> None:
        if compensation_retry is not None and not isinstance(compensation_retry, CompensationRetry):
            raise ConfigurationError(
                f"task {kwargs.get('task_id')!r}", "compensation_retry", compensation_retry,
                "must be a CompensationRetry(retries, delay, multiplier, max_delay)",
            )  # fmt: skip
        for name, value in (compensation_retry or CompensationRetry()).task_kwargs().items():
            if compensation_retry is not None:
                kwargs[name] = value
            else:
                kwargs.setdefault(name, value)
        super().__init__(**kwargs)
        self.undoes, self.saga_steps = undoes, tuple(saga_steps)
        self.compensation_retry = compensation_retry

    def own_key(self, context: Context) -> str | None:
        if isinstance(self.idempotency_key, str) and self.idempotency_key:
            return self.idempotency_key
        return request_key(task_key(context["ti"], self.undoes), COMPENSATE)  # never the step's own key

    def execute(self, context: Context) -> Any:
        states = _states(context, self.saga_steps)
        failed = [s for s, st in states.items() if st in FAILED]
        if not failed:
            raise AirflowSkipException("the saga did not fail: nothing to undo")
        mine = states.get(self.undoes)
        if mine != "success":
            record = (
                context["ti"].xcom_pull(task_ids=self.undoes, key=RECORD_KEY) if mine == "failed" else None
            )
            if mine != "failed" or (record and record.get("no_effect")):
                why = f"{record['error_type']}: no effect" if record else f"state {mine}"
                raise AirflowSkipException(f"step {self.undoes!r} did not complete ({why}): nothing to undo")
            self.log.warning("step %r failed with an unknown effect (%s): compensating", self.undoes, record)
        try_number, tries = context["ti"].try_number, self.retries + 1
        if try_number > 1:
            self.log.warning("compensation retry: undoing %r, try %d of %d", self.undoes, try_number, tries)
        self.log.info("saga failed at %s: undoing %r", failed, self.undoes)
        return super().execute(context)

    def run_phase(self, context: Context, resume: Resume) -> Any:
        self._started = time.monotonic()  # this try's part (a deferral starts a new one)
        return super().run_phase(context, resume)

    def on_call_failed(self, context: Context, phase: str, error: Exception) -> Any:
        metrics.compensation(self.undoes, False, time.monotonic() - self._started)
        try_number, tries = context["ti"].try_number, self.retries + 1
        if try_number < tries:
            self.log.warning(
                "compensation of %r failed on try %d of %d (%s); retrying in %s",
                self.undoes, try_number, tries, error, self._next_wait(try_number),
            )  # fmt: skip
        else:
            self.log.error(
                "COMPENSATION FAILED: could not undo step %r after %d tries (%s)",
                self.undoes,
                try_number,
                error,
            )
        raise error

    def on_call_succeeded(self, context: Context, phase: str, spec: CallSpec, response: Any) -> Any:
        try:
            result = super().on_call_succeeded(context, phase, spec, response)
        except Exception as error:
            return self.on_call_failed(context, phase, error)
        metrics.compensation(self.undoes, True, time.monotonic() - self._started)
        return result

    def _next_wait(self, try_number: int) -> str:
        """When Airflow retries (``TaskInstance.next_retry_datetime``): ``retry_delay *
        multiplier**(try-1)`` to twice that, capped at ``max_retry_delay``."""
        delay = self.retry_delay.total_seconds()
        multiplier = self.retry_exponential_backoff or 1.0
        low = delay * multiplier ** (try_number - 1) if multiplier != 1 else delay
        high = 2 * low if multiplier != 1 else low
        if self.max_retry_delay is not None:
            cap = (
                self.max_retry_delay.total_seconds()
                if hasattr(self.max_retry_delay, "total_seconds")
                else float(self.max_retry_delay)
            )
            low, high = min(low, cap), min(high, cap)
        return f"{low:.0f} s" if high - low < 1 else f"{low:.0f} to {high:.0f} s (backoff)"


class SagaOutcomeOperator(BaseOperator):
    """The saga's leaf: success on the happy path, failed when it rolled back or could not."""

    ui_color = "#eeeeee"

    def __init__(self, *, saga_steps: Sequence[str], compensations: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.saga_steps, self.compensations = tuple(saga_steps), dict(compensations)

    def execute(self, context: Context) -> dict[str, Any]:
        states = _states(context, [*self.saga_steps, *self.compensations])
        failed_steps = [s for s in self.saga_steps if states[s] in FAILED]
        if not failed_steps:
            return {"outcome": "completed", "steps": {s: states[s] for s in self.saga_steps}}
        ti = context["ti"]
        records = [r for s in failed_steps if (r := ti.xcom_pull(task_ids=s, key=RECORD_KEY))]
        undone = [step for undo, step in self.compensations.items() if states[undo] == "success"]
        not_undone = [step for undo, step in self.compensations.items() if states[undo] in FAILED]
        cause = "; ".join(f"{r['step']} failed on try {r['try']}: {r['error']}" for r in records) or str(
            failed_steps
        )
        outcome = "not_fully_undone" if not_undone else "rolled_back"
        metrics.saga_outcome(ti.dag_id, outcome)
        record_saga_outcome(
            context, outcome, {s: states[s] for s in self.saga_steps}, undone, not_undone, cause
        )
        if not_undone:
            raise AirflowFailException(
                f"SAGA NOT FULLY UNDONE: compensation failed for {not_undone} (undone: {undone}). "
                f"Cause: {cause}. Fix by hand, then clear the failed undo_ tasks to retry them."
            )
        raise AirflowFailException(
            f"saga rolled back: {cause}; undone in reverse order: {undone or 'nothing'}"
        )
