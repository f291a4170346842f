"""Shared fixtures. Airflow's environment is set before anything imports airflow."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator

REPO = pathlib.Path(__file__).resolve().parents[1]
_HOME = tempfile.mkdtemp(prefix="apiorch_test_home_")
os.environ.update(
    AIRFLOW_HOME=_HOME,
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
    AIRFLOW__CORE__PLUGINS_FOLDER=str(REPO / "plugins"),
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{_HOME}/airflow.db",
    AIRFLOW__API_ORCHESTRATION__STATE_URL=f"sqlite:///{_HOME}/state.db",
)
os.environ.pop("AIRFLOW_CONN_DEMO_API", None)

# The checkout as an installed provider (entry points: connection type, @task.resilient_http,
# the status page plugin), before anything asks Airflow's providers manager.
sys.path.insert(0, str(REPO / "include"))
from devtools import dev_metadata  # noqa: E402

dev_metadata.write()

import pytest  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def service_missing(what: str, detail: str) -> None:
    """Fail in CI (a missing service must never pass silently), skip elsewhere."""
    message = f"{what} is not reachable ({detail}); it is required for this test"
    if IN_CI:
        pytest.fail(message + " (CI=true: not skipping)", pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def fresh_postgres_database(prefix: str) -> Iterator[str]:
    """A new database on the machine's PostgreSQL (``<prefix><random>``), dropped afterwards."""
    try:
        import psycopg2

        admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres", connect_timeout=3)
    except Exception as exc:  # ImportError or psycopg2.Error
        service_missing("PostgreSQL at 127.0.0.1:5432", str(exc).strip())
    admin.autocommit = True
    name = f"{prefix}{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def demo_server():
    """The demo API on a free loopback port, and the Airflow connection ``demo_api`` pointing at it."""
    from demo_services import DemoServer

    with DemoServer(port=0) as server:
        os.environ["AIRFLOW_CONN_DEMO_API"] = json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": server.port}
        )
        yield server
        os.environ.pop("AIRFLOW_CONN_DEMO_API", None)


@pytest.fixture
def demo(demo_server):
    """The demo API with its counters reset."""
    demo_server.reset()
    return demo_server


@pytest.fixture(scope="session")
def redis_available() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        service_missing(f"Redis at {REDIS_URL}", str(exc))
    return REDIS_URL


def unique_redis_url(base: str) -> str:
    return f"{base}?prefix=apiorch-test-{uuid.uuid4().hex[:12]}:"


@contextlib.contextmanager
def own_redis_server(
    directory: pathlib.Path, password: str | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """A redis-server on a free port for one test (``requirepass`` if ``password``): its URL without
    the password, and the process, whose ``stop()`` kills it."""
    import redis
    from devtools.cluster import free_port

    port = free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(directory)]  # fmt: skip
    try:
        proc = subprocess.Popen(
            [*args, *(["--requirepass", password] if password else [])], stdout=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        service_missing("redis-server (the binary)", str(exc))
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url, password=password).ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)

    def stop() -> None:
        proc.kill()
        proc.wait(timeout=10)

    proc.stop = stop  # type: ignore[attr-defined]
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            stop()


@pytest.fixture(params=["sqlite", "redis"])
def state_url(request, tmp_path) -> str:
    """A fresh, empty state store of each kind; deleted afterwards."""
    from api_orchestration.state import backend_for_url

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/state.db"
    else:
        url = unique_redis_url(request.getfixturevalue("redis_available"))
    yield url
    backend = backend_for_url(url)
    backend.clear()
    backend.close()


@pytest.fixture
def backend(state_url):
    from api_orchestration.state import backend_for_url

    b = backend_for_url(state_url)
    yield b
    b.close()


@pytest.fixture(autouse=True)
def _fresh_shared_state():
    """Every test starts with the suite's shared state store empty: a breaker opened by one test's
    faults must not decide the next test's calls."""
    if os.path.exists(f"{_HOME}/state.db"):
        from api_orchestration.state import get_backend

        get_backend().clear()
    yield


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """A migrated SQLite metadata DB (needed by dag.test())."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        env=os.environ,
        stdout=subprocess.DEVNULL,
    )
    return _HOME
