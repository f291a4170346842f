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
        "config": {"api_orchestration": CONFIG_SECTION},
    }


# ``[api_orchestration]``: shown by ``airflow config list``; ``state_url`` may carry a Redis password,
# so Airflow masks it wherever it shows configuration and reads ``..._SECRET``/``..._CMD`` forms of it
CONFIG_SECTION: dict[str, Any] = {
    "description": "Shared state (limiters, breakers, tokens, cache) and results of api-orchestration.",
    "options": {
        "state_url": {
            "description": "The store every worker shares: sqlite:////abs/path.db (one host) or "
            "redis://[:password@]host:6379/0[?prefix=apiorch:] (many hosts). Empty: "
            "$AIRFLOW_HOME/api_orchestration_state.db.",
            "version_added": "0.9.0",
            "type": "string",
            "example": "redis://:password@redis:6379/0?prefix=apiorch:",
            "default": "",
            "sensitive": True,
        },
        "results_url": {
            "description": "Where bulk results and sync files go (an ObjectStoragePath URI; shared "
            "storage when workers run on several hosts). Empty: $AIRFLOW_HOME/api_orchestration/results.",
            "version_added": "0.9.0",
            "type": "string",
            "example": "s3://aws_default@my-bucket/api-orchestration",
            "default": "",
        },
        "workflows_dir": {
            "description": "The folder of YAML workflow specs (read from the environment variable "
            "AIRFLOW__API_ORCHESTRATION__WORKFLOWS_DIR). Empty: include/workflows next to the DAGs folder.",
            "version_added": "0.9.0",
            "type": "string",
            "example": "/opt/airflow/include/workflows",
            "default": "",
        },
    },
}
