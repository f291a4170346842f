"""The provider info Airflow's providers manager reads through the ``apache_airflow_provider``
entry point: the connection type (with its form fields) and the ``@task.resilient_http`` decorator.

A package of its own, importing nothing of Airflow or of ``api_orchestration``: Airflow reads
provider info while it loads its configuration, before ``airflow`` itself is importable, and
``import api_orchestration`` imports Airflow's SDK.

``airflow providers list`` shows it; the connection form (``GET /ui/connections/hook_meta``) offers
``resilient_http``; ``@task.resilient_http`` resolves through ``task-decorators``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from api_orchestration_provider.connection_fields import (
    CONN_TYPE,
    HOOK_CLASS,
    HOOK_NAME,
    conn_fields,
    ui_field_behaviour,
)

PACKAGE = "airflow-provider-api-orchestration"


def package_version() -> str:
    """The installed distribution's version ("0+unknown" when it is not installed)."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        return "0+unknown"


def get_provider_info() -> dict[str, Any]:
    """The provider info dictionary (``airflow/provider_info.schema.json``)."""
    return {
        "package-name": PACKAGE,
        "name": "API orchestration",
        "description": "Resilient HTTP calls: shared rate limiters and circuit breakers, retries, "
        "idempotency keys, workflows, sagas and YAML workflow specs.",
        "versions": [package_version()],
        "integrations": [
            {
                "integration-name": "API orchestration",
                "external-doc-url": "https://pypi.org/project/airflow-provider-api-orchestration/",
                "tags": ["protocol"],
            }
        ],
        "operators": [
            {
                "integration-name": "API orchestration",
                "python-modules": [
                    "api_orchestration.operators.http",
                    "api_orchestration.operators.bulk",
                    "api_orchestration.operators.step",
                ],
            }
        ],
        "hooks": [
            {
                "integration-name": "API orchestration",
                "python-modules": ["api_orchestration.connections.hook"],
            }
        ],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": HOOK_CLASS,
                "hook-name": HOOK_NAME,
                "ui-field-behaviour": ui_field_behaviour(),
                "conn-fields": conn_fields(),
            }
        ],
        "task-decorators": [
            {
                "name": "resilient_http",
                "class-name": "api_orchestration.decorators.resilient_http.resilient_http_task",
            },
        ],
    }
