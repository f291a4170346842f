"""Workflow specs become Airflow DAGs: every valid ``include/workflows/*.yaml`` is one dag.

Drop a YAML file into the folder and its DAG appears at the next DAG-processor refresh. A bad file
does not stop the others: its problems (file, field path, fix) show in the UI as the import error of
``workflow_spec_errors.py`` (not of this file, so the good DAGs stay triggerable), and
``make lint-specs`` prints the same messages. The folder can be moved with
``AIRFLOW__API_ORCHESTRATION__WORKFLOWS_DIR``. Format: the README's "Workflow specs" section.
"""

from __future__ import annotations

from pathlib import Path

from api_orchestration.specs.dagfile import workflow_dags

globals().update(workflow_dags(Path(__file__).resolve().parent.parent / "include" / "workflows"))
