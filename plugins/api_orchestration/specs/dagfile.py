"""What ``dags/workflows.py`` runs: every spec in the workflows folder -> a DAG, bad files reported.

Airflow keeps import errors per DAG *file*, and one exception in ``dags/workflows.py`` would drop
every DAG it defines. So good specs become DAGs, and the bad ones are collected into one
:class:`InvalidSpecsDag` whose ``validate()`` (called by Airflow's DagBag on every DAG it loads)
raises them: the UI's import errors show ``dags/workflows.py`` with one line per problem, naming
file and field, while every good spec's DAG still loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from airflow.sdk import DAG

from api_orchestration.errors import ApiOrchestrationError, SpecError
from api_orchestration.specs.loader import load_directory

WORKFLOWS_DIR_ENV = "AIRFLOW__API_ORCHESTRATION__WORKFLOWS_DIR"
ERRORS_DAG_ID = "workflow_spec_errors"


class InvalidSpecFiles(SpecError):
    """Several spec files are invalid; ``errors`` holds one :class:`SpecError` per file."""

    def __init__(self, directory: str, errors: list[SpecError]) -> None:
        self.errors, self.source = errors, directory
        self.problems = [(f"{e.source}: {p}" if p else e.source, m) for e in errors for p, m in e.problems]
        header = f"{len(errors)} invalid workflow spec file(s) in {directory}; the other specs loaded."
        ApiOrchestrationError.__init__(self, "\n".join([header, *map(str, errors)]))


class InvalidSpecsDag(DAG):
    """Never loads: Airflow's DagBag calls ``validate()``, which raises the collected spec errors,
    and records them as the DAG file's import error."""

    spec_errors: InvalidSpecFiles

    def validate(self) -> None:
        raise self.spec_errors


def workflows_dir(default: str | Path) -> Path:
    """``[api_orchestration] workflows_dir`` (env ``AIRFLOW__API_ORCHESTRATION__WORKFLOWS_DIR``), else ``default``."""
    return Path(os.environ.get(WORKFLOWS_DIR_ENV) or default)


def workflow_dags(default_dir: str | Path) -> dict[str, Any]:
    """``{dag_id: DAG}`` for every valid spec, plus the :class:`InvalidSpecsDag` when some are bad."""
    directory = workflows_dir(default_dir)
    good, bad = load_directory(directory)
    dags: dict[str, Any] = {spec.dag.dag_id: spec.dag for spec in good}
    if bad:
        errors_dag = InvalidSpecsDag(dag_id=ERRORS_DAG_ID, schedule=None)
        errors_dag.spec_errors = InvalidSpecFiles(str(directory), bad)
        dags[ERRORS_DAG_ID] = errors_dag
    return dags
