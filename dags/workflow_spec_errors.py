"""The invalid workflow specs, as this Airflow DAG file's import error (it defines no dag).

While any ``include/workflows/*.yaml`` is invalid, importing this file raises one error with a line
per problem (file, field path, fix), which the UI shows under Dag Import Errors. The valid specs'
DAGs come from ``workflows.py``, which never fails, so they stay triggerable meanwhile.
"""

from __future__ import annotations

from pathlib import Path

from api_orchestration.specs.dagfile import raise_spec_errors

raise_spec_errors(Path(__file__).resolve().parent.parent / "include" / "workflows")
