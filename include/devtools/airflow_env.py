"""Environment for running a real local Airflow 3.3 (scheduler, dag-processor, triggerer, api-server).

Everything is configured through ``AIRFLOW__SECTION__KEY`` environment variables so that the
generated ``airflow.cfg`` in ``AIRFLOW_HOME`` never matters: the repo can move and the same home
keeps working. Used by ``make run`` (``devtools.run_local``) and by the end-to-end tests.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from devtools.sqlite_metadata import sqlite_settings

ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin"
PASSWORDS_FILE_NAME = "simple_auth_manager_passwords.json"


def repo_root() -> Path:
    """Return the repository root (the directory that holds ``dags/``, ``plugins/``, ``include/``)."""
    return Path(__file__).resolve().parents[2]


def write_passwords_file(home: Path) -> Path:
    """Make sure the SimpleAuthManager passwords file in ``home`` maps ``admin`` to ``admin``.

    Other users already in the file are kept; Airflow only generates passwords for missing users.
    """
    path = home / PASSWORDS_FILE_NAME
    passwords: dict[str, str] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text() or "{}")
            if isinstance(loaded, dict):
                passwords = {str(k): str(v) for k, v in loaded.items()}
        except json.JSONDecodeError:
            passwords = {}
    if passwords.get(ADMIN_USER) != ADMIN_PASSWORD or not path.exists():
        passwords[ADMIN_USER] = ADMIN_PASSWORD
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(passwords) + "\n")
        tmp.replace(path)
    return path


def airflow_env(
    home: Path, *, port: int = 8080, extra: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """Return ``os.environ`` plus the settings to run Airflow from this repo with ``AIRFLOW_HOME=home``.

    Precedence: caller's ``os.environ`` < the settings below < ``extra``. A ``None`` value in
    ``extra`` removes that variable. ``extra["PYTHONPATH"]`` replaces the computed PYTHONPATH.
    With a SQLite metadata DB, the settings of :func:`devtools.sqlite_metadata.sqlite_settings` are
    added unless already set. Side effect: creates ``home`` and writes the ``admin``/``admin``
    passwords file into it.
    """
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    root = repo_root()
    base_url = f"http://localhost:{port}"
    passwords_file = write_passwords_file(home)

    pythonpath = [str(root / "plugins"), str(root / "include")]
    if os.environ.get("PYTHONPATH"):
        pythonpath.append(os.environ["PYTHONPATH"])

    env = dict(os.environ)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            # Pin the config file too, so a caller's AIRFLOW_CONFIG cannot point elsewhere.
            "AIRFLOW_CONFIG": str(home / "airflow.cfg"),
            "PYTHONPATH": os.pathsep.join(pythonpath),
            "PYTHONUNBUFFERED": "1",
            # [core]
            "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(root / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
            # [database] / [logging]: explicit so a stale airflow.cfg (moved repo) cannot win.
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(
                home / "logs" / "dag_processor"
            ),
            # [api]: base_url must carry the real port, it is the default for the Execution API URL.
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": base_url,
            # [dag_processor]: notice new/changed DAG files within seconds (defaults: 300 s / 30 s / 5 s).
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "2",
            # Heartbeats (defaults 5 s): the health endpoint turns healthy sooner.
            # [scheduler] job_heartbeat_sec is also the DagProcessorJob heart rate.
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
        }
    )
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    if env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite"):  # the embedded metadata DB
        # the connect args are an import path into devtools: only where the processes can import it
        # (not for an Airflow installed elsewhere and run without this repository on its path)
        importable = str(root / "include") in env.get("PYTHONPATH", "").split(os.pathsep)
        for key, value in sqlite_settings().items():
            if importable or "CONNECT_ARGS" not in key:
                env.setdefault(key, value)
    return env
