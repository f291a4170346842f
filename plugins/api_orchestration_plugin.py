"""The Airflow plugin of api-orchestration: a status page and API for circuit breakers, rate
limiters and recent saga outcomes, mounted in the api-server under ``/api-orchestration`` and
linked from the UI's navigation (Browse → API orchestration).

Airflow imports every top-level ``plugins/*.py`` by its bare name (``plugins/.airflowignore`` keeps
it out of the package), in every process, task processes included: the FastAPI app is therefore
built only when the api-server asks for it (``fastapi_apps``).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/api-orchestration"


@cache
def _fastapi_apps() -> list[dict[str, Any]]:
    from api_orchestration.status.app import create_app

    return [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "api-orchestration status"}]


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
