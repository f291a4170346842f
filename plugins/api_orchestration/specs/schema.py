"""The JSON Schema of workflow specs, for editors (``make schema``)."""

from __future__ import annotations

import json
from typing import Any

from api_orchestration.specs.model import WorkflowSpec

SCHEMA_ID = "https://api-orchestration.invalid/workflow-spec.schema.json"


def json_schema() -> dict[str, Any]:
    schema = WorkflowSpec.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID, **schema}


def json_schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
