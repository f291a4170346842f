"""Declarative workflow specs: YAML files that become DAGs, validated with errors by field path.

See the README's "Workflow specs" section for the format; :mod:`.model` is its typed shape.
"""

from api_orchestration.specs.loader import (
    LoadedSpec,
    load_directory,
    load_document,
    load_file,
    load_text,
    spec_files,
)
from api_orchestration.specs.model import WorkflowSpec
from api_orchestration.specs.schema import json_schema

__all__ = [
    "LoadedSpec",
    "WorkflowSpec",
    "json_schema",
    "load_directory",
    "load_document",
    "load_file",
    "load_text",
    "spec_files",
]
