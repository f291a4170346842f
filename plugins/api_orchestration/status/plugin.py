"""The Airflow plugin of api-orchestration: a status page and API for circuit breakers, rate
limiters and recent saga outcomes, mounted in the api-server under ``/api-orchestration`` and
linked from the UI's navigation (Browse → API orchestration).

An installed distribution registers it through the ``airflow.plugins`` entry point; a checkout
(``make run``) through ``plugins/api_orchestration_plugin.py``, which exports it only when no
entry point does (:func:`registered_by_entry_point`), so it is never registered twice. Airflow
loads plugins in every process, task processes included: the FastAPI app is therefore built only
when the api-server asks for it (``fastapi_apps``).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/api-orchestration"
ENTRY_POINT = "api_orchestration.status.plugin:ApiOrchestrationPlugin"


@cache
def _fastapi_apps() -> list[dict[str, Any]]:
    from api_orchestration.status.app import create_app

    return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "api-orchestration status"}]


def registered_by_entry_point() -> bool:
    """Whether an installed distribution (or the checkout's generated metadata) registers this
    plugin through the ``airflow.plugins`` entry point."""
    return any(ep.value == ENTRY_POINT for ep in entry_points(group="airflow.plugins"))


class ApiOrchestrationPlugin(AirflowPlugin):
    """Status page and API (breakers, limiters, sagas) for api-orchestration."""

    name = "api_orchestration"
    external_views = [
        {
            "name": "API orchestration",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "api-orchestration",
        }
    ]

    @property
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return _fastapi_apps()
