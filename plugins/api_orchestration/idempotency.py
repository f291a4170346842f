"""Idempotency keys that stay the same across in-task retries and Airflow task retries."""

from __future__ import annotations

import hashlib

DEFAULT_HEADER = "Idempotency-Key"


def idempotency_key(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """A stable key for one task instance (the try number is deliberately left out)."""
    raw = f"{dag_id}\x1f{run_id}\x1f{task_id}\x1f{map_index}"
    return "af-" + hashlib.sha256(raw.encode()).hexdigest()[:40]
