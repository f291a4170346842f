"""The proof as a user would install it: a fresh virtualenv with only ``apache-airflow==3.3.2`` (under
the repository's constraints) and the built wheel, ``AIRFLOW_HOME`` and the DAGs folder outside the
repository, no ``plugins/`` folder and no ``PYTHONPATH``. Shows: ``pip check`` is clean, ``airflow
providers list`` lists the provider, an example DAG that imports only the installed package runs under
``airflow dags test`` (which runs ``dag.test()``) and under a real scheduler, the api-server offers
the ``resilient_http`` connection form (``GET /ui/connections/hook_meta``) and serves the status page
through the ``airflow.plugins`` entry point.

pip's cache is reused (``~/.cache/pip``); only PyPI is needed. Timings are printed (``-s``) and written
to ``tests/artifacts/install-timings.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO
from devtools import build_dist
from devtools.cluster import LocalAirflow, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DIST = "airflow-provider-api-orchestration"
DAG_ID = "installed_provider_example"
CONN_ID = "installed_api"
TIMINGS: dict[str, float] = {}

DAG_FILE = '''"""An Airflow DAG file using only the installed provider: no repository on the path."""

import asyncio

import pendulum
from airflow.sdk import DAG, task

import api_orchestration
from api_orchestration import ResilientHttpOperator

with DAG("installed_provider_example", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC")) as dag:
    operator_call = ResilientHttpOperator(task_id="operator_call", http_conn_id="installed_api", endpoint="/echo/op")

    @task.resilient_http(http_conn_id="installed_api")
    def decorated(client):
        return {"paths": [client.get(f"/echo/deco-{i}").json()["path"] for i in range(3)],
                "package": api_orchestration.__file__}

    @task.resilient_http(http_conn_id="installed_api")
    async def decorated_async(client):
        replies = await asyncio.gather(*(client.get(f"/echo/async-{i}") for i in range(3)))
        return sorted(r.json()["path"] for r in replies)

    operator_call >> decorated() >> decorated_async()
'''


def timed(name: str, *cmd: str, env: dict[str, str], cwd: Path, timeout: float = 600) -> str:
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    TIMINGS[name] = round(time.monotonic() - started, 1)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory, demo_server) -> Iterator[dict]:
    """The wheel built from this checkout, installed with Airflow into a fresh virtualenv."""
    base = tmp_path_factory.mktemp("install")
    started = time.monotonic()
    (wheel,) = build_dist.build(base / "dist", wheel_only=True)
    TIMINGS["build wheel"] = round(time.monotonic() - started, 1)
    venv = base / "venv"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON", "VIRTUAL_ENV"))}
    timed("create venv", sys.executable, "-m", "venv", str(venv), env=clean, cwd=base)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    timed(
        "pip install apache-airflow==3.3.2 + wheel",
        *pip, "install", "--quiet", "--no-compile", "apache-airflow==3.3.2", str(wheel), "-c", str(REPO / "constraints.txt"),
        env=clean, cwd=base,
    )  # fmt: skip
    home, dags, plugins = base / "home", base / "dags", base / "plugins"
    for d in (home, dags, plugins):
        d.mkdir()
    (dags / f"{DAG_ID}.py").write_text(DAG_FILE)
    env = {
        **clean,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(plugins),  # empty: the plugin comes from the entry point
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API_ORCHESTRATION__STATE_URL": f"sqlite:///{home / 'state.db'}",
        f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(
            {"conn_type": "resilient_http", "host": "127.0.0.1", "port": demo_server.port,
             "extra": {"rate_limit_permits": 5, "retry_base_delay": 0.01}}
        ),
    }  # fmt: skip
    yield {
        "venv": venv,
        "wheel": wheel,
        "pip": pip,
        "env": env,
        "base": base,
        "dags": dags,
        "plugins": plugins,
    }
    artifacts = REPO / "tests" / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "install-timings.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")
    print("\ninstall test timings (s):", json.dumps(TIMINGS, indent=2))


def test_pip_check_is_clean_and_the_provider_is_listed(installed):
    out = timed("pip check", *installed["pip"], "check", env=installed["env"], cwd=installed["base"])
    assert "No broken requirements found" in out
    airflow = str(installed["venv"] / "bin" / "airflow")
    listed = timed("airflow providers list", airflow, "providers", "list", "--output", "json",
                   env=installed["env"], cwd=installed["base"])  # fmt: skip
    listing = next(line for line in listed.splitlines() if line.startswith("[{"))
    providers = {p["package_name"]: p for p in json.loads(listing)}
    assert providers[DIST]["version"] == "0.9.0"


def test_the_example_dag_runs_under_airflow_dags_test(installed, demo_server):
    demo_server.reset()
    airflow = str(installed["venv"] / "bin" / "airflow")
    timed("airflow db migrate", airflow, "db", "migrate", env=installed["env"], cwd=installed["base"])
    out = timed(
        "airflow dags test", airflow, "dags", "test", DAG_ID, env=installed["env"], cwd=installed["base"]
    )
    assert f"dag_id={DAG_ID}" in out and "state=success" in out, out[-4000:]
    paths = demo_server.calls()["paths"]
    assert paths["/echo/op"] == 1 and all(paths[f"/echo/deco-{i}"] == 1 for i in range(3))
    assert all(paths[f"/echo/async-{i}"] == 1 for i in range(3))


def test_a_real_scheduler_runs_it_and_the_api_server_offers_the_connection_and_status_page(
    installed, demo_server, tmp_path
):
    demo_server.reset()
    env = installed["env"]
    extra = {
        "PYTHONPATH": None,
        "AIRFLOW__CORE__DAGS_FOLDER": str(installed["dags"]),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(installed["plugins"]),
        "AIRFLOW__API_ORCHESTRATION__STATE_URL": env["AIRFLOW__API_ORCHESTRATION__STATE_URL"],
        f"AIRFLOW_CONN_{CONN_ID.upper()}": env[f"AIRFLOW_CONN_{CONN_ID.upper()}"],
    }
    started = time.monotonic()
    with LocalAirflow(tmp_path / "home", free_port(), extra_env=extra,
                      airflow=[str(installed["venv"] / "bin" / "airflow")]) as af:  # fmt: skip
        TIMINGS["start Airflow (migrate, 4 components)"] = round(time.monotonic() - started, 1)
        client = af.client()

        metas = {m["connection_type"]: m for m in client.request("GET", "/ui/connections/hook_meta").json()}
        form = metas["resilient_http"]
        assert form["hook_name"] == "Resilient HTTP API"
        assert form["extra_fields"]["rate_limit_permits"]["schema"]["type"] == ["integer", "null"]
        assert form["extra_fields"]["breaker_failure_rate"]["schema"]["title"] == "Breaker: failure rate"

        plugins = client.request("GET", "/api/v2/plugins").json()["plugins"]
        (ours,) = [p for p in plugins if p["name"] == "api_orchestration"]
        assert str(ours["source"]).startswith(f"{DIST}==0.9.0: ")  # the entry point, no plugins/ folder

        t0 = time.monotonic()
        client.wait_for_dag(DAG_ID)
        client.unpause(DAG_ID)
        run_id = client.trigger(DAG_ID)
        assert client.wait_for_run(DAG_ID, run_id) == "success", client.task_instances(DAG_ID, run_id)
        TIMINGS["scheduler run of the example DAG"] = round(time.monotonic() - t0, 1)
        package = client.xcom(DAG_ID, run_id, "decorated")["package"]
        assert package.startswith(str(installed["venv"])), package  # the installed copy, not the repo's

        status = client.request("GET", "/api-orchestration/api/status")
        assert status.status_code == 200, status.text
        assert CONN_ID in {row["key"] for row in status.json()["limiters"]}
        page = client.request("GET", "/api-orchestration/", headers={"Accept": "text/html"})
        assert page.status_code == 200 and "Rate limiters" in page.text
