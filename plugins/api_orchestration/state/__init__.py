"""Shared-state backends, chosen by URL: ``sqlite:////abs/path.db`` or ``redis://host:port/db``.

The URL comes from ``[api_orchestration] state_url`` (``AIRFLOW__API_ORCHESTRATION__STATE_URL``);
unset, it is a SQLite file under ``AIRFLOW_HOME``. Backends are cached per URL and process.
"""

from __future__ import annotations

import os
import threading

from api_orchestration.errors import ConfigurationError
from api_orchestration.paths import airflow_home
from api_orchestration.redaction import redact_url
from api_orchestration.state.base import (
    Admission,
    AdmissionRequest,
    Batch,
    BreakerStatus,
    LimiterStatus,
    Snapshot,
    StateBackend,
    Transition,
    Verdict,
)

__all__ = [
    "Admission",
    "AdmissionRequest",
    "Batch",
    "BreakerStatus",
    "LimiterStatus",
    "Snapshot",
    "StateBackend",
    "Transition",
    "Verdict",
    "backend_for_url",
    "configured_state_url",
    "get_backend",
]

_SCHEMES = {"sqlite": "sqlite", "redis": "redis", "rediss": "redis", "unix": "redis"}
_cache: dict[str, StateBackend] = {}
_lock = threading.Lock()


def configured_state_url() -> str:
    """The state URL from Airflow config, else the embedded default under AIRFLOW_HOME."""
    url = os.environ.get("AIRFLOW__API_ORCHESTRATION__STATE_URL")
    if not url:
        from airflow.configuration import conf

        url = conf.get("api_orchestration", "state_url", fallback=None)
    if not url:
        url = f"sqlite:///{airflow_home()}/api_orchestration_state.db"
    return url


def backend_for_url(url: str) -> StateBackend:
    """Build a new backend for ``url`` (see :func:`get_backend` for the cached one)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    kind = _SCHEMES.get(scheme)
    if kind == "sqlite":
        from api_orchestration.state.sqlite import SQLiteBackend

        return SQLiteBackend(url)
    if kind == "redis":
        from api_orchestration.state.redis import RedisBackend

        return RedisBackend(url)
    raise ConfigurationError(
        "[api_orchestration] state_url",
        "scheme",
        redact_url(url),
        "must be sqlite:////abs/path.db (one host) or redis://host:port/db (many hosts)",
    )


def get_backend(url: str | None = None) -> StateBackend:
    """The process-wide backend for ``url`` (default: :func:`configured_state_url`)."""
    url = url or configured_state_url()
    with _lock:
        backend = _cache.get(url)
        if backend is None:
            backend = _cache[url] = backend_for_url(url)
        return backend
