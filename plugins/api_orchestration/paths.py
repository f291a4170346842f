"""Where the package keeps files: under ``AIRFLOW_HOME`` (``~/airflow`` when unset), or, for bulk
results and file syncs, under the shared ``[api_orchestration] results_url`` when it is configured."""

from __future__ import annotations

import os
from pathlib import Path


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")).resolve()


def data_path(*parts: str) -> Path:
    """``$AIRFLOW_HOME/api_orchestration/<parts>`` (bulk results, sync tables)."""
    return airflow_home().joinpath("api_orchestration", *parts)


def shared_results_url() -> str | None:
    """``[api_orchestration] results_url`` (``AIRFLOW__API_ORCHESTRATION__RESULTS_URL``): an
    ``ObjectStoragePath`` URI every worker reaches (``s3://bucket/x``, a shared volume), or None."""
    url = os.environ.get("AIRFLOW__API_ORCHESTRATION__RESULTS_URL")
    if not url:
        from airflow.configuration import conf

        url = conf.get("api_orchestration", "results_url", fallback=None)
    return url or None
