"""Saga outcomes for the status page: a short capped list in the state backend.

The saga's leaf task (``SagaOutcomeOperator``) writes one record when a saga rolled back or could
not be undone, so the page can show them without reading Airflow's metadata DB (which task code
may not touch on a worker). Recording is best effort: a store failure is logged, never raised, so
it cannot hide the saga's own outcome.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)
KEEP = 100  # records kept in the store


def record_saga_outcome(
    context: Any,
    outcome: str,
    steps: Mapping[str, str | None],
    undone: Sequence[str] = (),
    not_undone: Sequence[str] = (),
    cause: str = "",
    *,
    state_url: str | None = None,
) -> dict[str, Any] | None:
    """Record ``outcome`` (``rolled_back`` or ``not_fully_undone``) of the saga run in ``context``:
    the steps' states (``failed_steps`` failed, ``not_run`` never ran because one before them
    failed), what was undone and what could not be. Returns the record, or None if the store
    could not take it."""
    ti = context["ti"]
    entry = {
        "dag_id": ti.dag_id,
        "run_id": ti.run_id,
        "outcome": outcome,
        "failed_steps": [s for s, state in steps.items() if state == "failed"],
        "not_run": [s for s, state in steps.items() if state == "upstream_failed"],
        "undone": list(undone),
        "not_undone": list(not_undone),
        "cause": cause[:500],
        "at": time.time(),
    }
    try:
        from api_orchestration.state import get_backend

        get_backend(state_url).saga_record(entry, keep=KEEP)
    except Exception as exc:  # best effort: the saga's own failure must stay the task's error
        logger.warning("could not record the saga outcome for the status page: %s", exc)
        return None
    return entry
