"""Where the package keeps files: under ``AIRFLOW_HOME`` (``~/airflow`` when unset)."""

from __future__ import annotations

import os
from pathlib import Path


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")).resolve()


def data_path(*parts: str) -> Path:
    """``$AIRFLOW_HOME/api_orchestration/<parts>`` (bulk results, sync tables)."""
    return airflow_home().joinpath("api_orchestration", *parts)
