"""What the DAG files of the specs run: good specs -> DAGs (``dags/workflows.py``), bad ones ->
one import error (``dags/workflow_spec_errors.py``).

Airflow keeps import errors per DAG *file*, and a DAG file with an import error must not be the one
that defines the good specs' DAGs: Airflow lists such DAGs but refuses to trigger them. So the good
specs and the bad ones are reported by two files: ``workflows.py`` defines every good spec's DAG and
never fails; ``workflow_spec_errors.py`` defines none and raises :class:`InvalidSpecFiles` (one line
per problem, naming file and field) while any spec is bad, so the UI shows it as that file's import
error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from api_orchestration.errors import ApiOrchestrationError, SpecError
from api_orchestration.specs.loader import load_directory

WORKFLOWS_DIR_ENV = "AIRFLOW__API_ORCHESTRATION__WORKFLOWS_DIR"


class InvalidSpecFiles(SpecError):
    """Several spec files are invalid; ``errors`` holds one :class:`SpecError` per file."""

    def __init__(self, directory: str, errors: list[SpecError]) -> None:
        self.errors, self.source = errors, directory
        self.problems = [(f"{e.source}: {p}" if p else e.source, m) for e in errors for p, m in e.problems]
        header = f"{len(errors)} invalid workflow spec file(s) in {directory}; the other specs loaded."
        ApiOrchestrationError.__init__(self, "\n".join([header, *map(str, errors)]))


def workflows_dir(default: str | Path) -> Path:
    """``[api_orchestration] workflows_dir`` (env ``AIRFLOW__API_ORCHESTRATION__WORKFLOWS_DIR``), else ``default``."""
    return Path(os.environ.get(WORKFLOWS_DIR_ENV) or default)


def workflow_dags(default_dir: str | Path) -> dict[str, Any]:
    """``{dag_id: DAG}`` for every valid spec (the bad ones are :func:`raise_spec_errors`'s)."""
    good, _ = load_directory(workflows_dir(default_dir))
    return {spec.dag.dag_id: spec.dag for spec in good}


def raise_spec_errors(default_dir: str | Path) -> None:
    """Raise :class:`InvalidSpecFiles` if any spec in the folder is invalid."""
    directory = workflows_dir(default_dir)
    _, bad = load_directory(directory)
    if bad:
        raise InvalidSpecFiles(str(directory), bad)
