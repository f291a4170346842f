"""Idempotency keys that stay the same across in-task retries and Airflow task retries."""

from __future__ import annotations

import hashlib
from typing import Any

DEFAULT_HEADER = "Idempotency-Key"


def idempotency_key(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """A stable key for one task instance (the try number is deliberately left out)."""
    raw = f"{dag_id}\x1f{run_id}\x1f{task_id}\x1f{map_index}"
    return "af-" + hashlib.sha256(raw.encode()).hexdigest()[:40]


def task_key(ti: Any, task_id: str | None = None) -> str:
    """The key of task instance ``ti`` (or of its sibling ``task_id`` in the same run, unmapped)."""
    if task_id is not None:
        return idempotency_key(ti.dag_id, ti.run_id, task_id, -1)
    return idempotency_key(ti.dag_id, ti.run_id, ti.task_id, ti.map_index if ti.map_index is not None else -1)


def request_key(key: str, role: str) -> str:
    """The key of another request that belongs to the call keyed ``key`` (``role``: ``fallback``,
    ``compensate``): stable across retries, and never the same as the call's own key, because a
    server that saves the result of a key (Stripe) would answer the other request with it."""
    return f"{key}:{role}"
