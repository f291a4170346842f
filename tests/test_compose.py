"""docker-compose.yaml, Dockerfile and .env.example against the deployment description.

:mod:`devtools.deployment` lists the components, their commands and the settings of the distributed
deployment; the native harness (``LocalAirflow.distributed``, run by tests/e2e/test_distributed.py)
is built from it, and this test holds the compose file to it, so the two cannot drift apart. No
Docker needed: the files are parsed and ``${VAR}`` interpolated as Docker Compose does.
"""

from __future__ import annotations

import base64
import re
import shlex
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO
from devtools import deployment
from devtools.airflow_env import airflow_env
from devtools.cluster import LocalAirflow

COMPOSE_FILE = REPO / "docker-compose.yaml"
# Settings only the compose file has, and why. Every other variable an Airflow service sets must be
# one of deployment.airflow_settings(), with the value it gives for the compose network.
COMPOSE_ONLY = {
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "the scheduler's :8974/health for its healthcheck",
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "slots per worker container (native: --concurrency)",
    "DUMB_INIT_SETSID": "worker: warm shutdown under the image's dumb-init",
    "CONNECTION_CHECK_MAX_COUNT": "airflow-cli: no wait for the DB in the image's entrypoint",
    "AIRFLOW_UID": "airflow-init: owner of the shared folders",
    "AIRFLOW_ADMIN_PASSWORD": "airflow-init: written to the SimpleAuthManager passwords file",
}
ONE_SHOT = {"airflow-init", "airflow-cli"}  # run to completion: no healthcheck, no restart
AIRFLOW_SERVICES = {c.service for c in deployment.CELERY_COMPONENTS} | {"flower", *ONE_SHOT}
_VAR = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Docker Compose's interpolation: ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
    ``${VAR-default}``, ``${VAR:?error}``, ``${VAR?error}`` (a missing required one raises)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1) or match.group(4), match.group(2), match.group(3)
        current = env.get(name)
        missing = not current if op and op.startswith(":") else current is None
        if op and op.endswith("?") and missing:
            raise KeyError(f"required variable {name} is missing: {arg}")
        if op and op.endswith("-") and missing:
            return arg
        return current or ""

    return _VAR.sub(substitute, value)


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


@pytest.fixture(scope="module")
def dotenv(tmp_path_factory) -> dict[str, str]:
    """The .env that ``deployment.py write-env`` makes from .env.example (fresh secrets)."""
    path = deployment.write_env(REPO / ".env.example", tmp_path_factory.mktemp("env") / ".env")
    return deployment.parse_env_file(path.read_text())


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())  # resolves the <<: *anchor merges


@pytest.fixture(scope="module")
def services(raw_compose, dotenv) -> dict[str, dict[str, Any]]:
    return interpolate(raw_compose, dotenv)["services"]


def compose_settings(dotenv: dict[str, str]) -> dict[str, str]:
    site = deployment.compose_site(
        dotenv["POSTGRES_USER"],
        dotenv["POSTGRES_PASSWORD"],
        dotenv["POSTGRES_DB"],
        dotenv["APIORCH_STATE_PREFIX"],
    )
    return deployment.airflow_settings(site, dotenv)


def native_cluster(tmp_path: Path) -> LocalAirflow:
    """The native harness as test_distributed.py builds it (not started)."""
    site = deployment.Site(
        postgres_host="127.0.0.1", postgres_user="postgres", postgres_password="", postgres_db="apiorch_x",
        redis_host="127.0.0.1", broker_db=0, state_db=0, state_prefix="apiorch-x:state:", api_server_url="",
        passwords_file="", demo_api_host="127.0.0.1", demo_api_port=8901,
        results_url=(tmp_path / "shared").as_uri(),
    )  # fmt: skip
    return LocalAirflow.distributed(tmp_path / "home", 18080, site, workers=("w1", "w2"), broker_prefix="x:")


def test_airflow_services_run_the_commands_the_native_harness_runs(services, tmp_path):
    plan = native_cluster(tmp_path).process_plan()
    for component in deployment.CORE_COMPONENTS:
        assert command_of(services[component.service]) == list(component.args), component.service
        assert plan[component.name][0][: len(component.args)] == component.args  # plus --port
    assert command_of(services[deployment.WORKER.service]) == list(deployment.WORKER.args)
    for worker in ("w1", "w2"):
        args = plan[LocalAirflow.worker_process(worker)][0]
        assert (
            args[:2] == deployment.WORKER.args and args[args.index("--celery-hostname") + 1] == f"{worker}@%h"
        )
        # the default queue, which compose's workers serve too, plus its own (tests pin tasks with it)
        assert args[args.index(deployment.QUEUES_FLAG) + 1].split(",") == [deployment.DEFAULT_QUEUE, worker]
    assert deployment.QUEUES_FLAG not in command_of(
        services[deployment.WORKER.service]
    )  # replicas: default only
    assert (
        env_of(services[deployment.WORKER.service])["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
        == deployment.DEFAULT_QUEUE
    )
    assert command_of(services["flower"]) == list(deployment.FLOWER.args)
    assert services["flower"]["profiles"] == ["flower"]
    init = " ".join(command_of(services["airflow-init"]))
    assert f"airflow {' '.join(deployment.MIGRATE_ARGS)}" in init  # what LocalAirflow runs before starting


def test_airflow_services_share_the_native_settings(services, dotenv, tmp_path):
    expected = compose_settings(dotenv)
    for name in sorted(AIRFLOW_SERVICES):
        env = env_of(services[name])
        assert {k: env.get(k) for k in expected} == expected, name
        unexplained = set(env) - set(expected) - set(COMPOSE_ONLY)
        assert not unexplained, (
            f"{name} sets {sorted(unexplained)}: add them to deployment.airflow_settings()"
        )

    cluster = native_cluster(tmp_path)
    native = airflow_env(cluster.home, port=cluster.port, extra=cluster.extra_env)  # what start() uses
    assert set(expected) <= set(native)
    for env in (expected, native):
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
        assert env["AIRFLOW__API_ORCHESTRATION__STATE_URL"].startswith("redis://")
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].endswith("/execution/")
    assert native["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://localhost:18080/execution/"
    assert expected["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    # Compose: broker in Redis database 0, limiter/breaker state in database 1 under the .env prefix.
    assert expected["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0"
    assert expected["AIRFLOW__API_ORCHESTRATION__STATE_URL"] == "redis://redis:6379/1?prefix=apiorch:"
    assert expected["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == (
        f"postgresql+psycopg2://airflow:{dotenv['POSTGRES_PASSWORD']}@postgres:5432/airflow"
    )


def test_state_url_is_one_the_state_package_accepts(dotenv):
    from api_orchestration.state.redis import split_prefix

    url = compose_settings(dotenv)["AIRFLOW__API_ORCHESTRATION__STATE_URL"]
    assert split_prefix(url) == ("redis://redis:6379/1", "apiorch:")


def test_every_long_running_service_has_a_healthcheck(services):
    expected = {*AIRFLOW_SERVICES, "postgres", "redis", deployment.DEMO_API_SERVICE}
    assert set(services) == expected
    for name, service in services.items():
        if name in ONE_SHOT:
            assert "healthcheck" not in service and service.get("restart", "no") == "no", name
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert service.get("restart") == "always", name
    for name in {c.service for c in deployment.CELERY_COMPONENTS} | {"flower"}:  # wait for the init
        assert services[name]["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}
        assert services[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_workers_can_be_scaled(services):
    worker = services[deployment.WORKER.service]
    assert not {"container_name", "hostname", "ports"} & set(worker)  # --scale airflow-worker=3
    for name, service in services.items():
        assert "container_name" not in service, name


def test_project_folders_are_mounted_into_every_airflow_service(services):
    for name in AIRFLOW_SERVICES:
        volumes = services[name]["volumes"]
        for folder in ("dags", "plugins", "include"):
            assert f"./{folder}:/opt/airflow/{folder}" in volumes, (name, folder)


def test_demo_api_is_a_service_the_connection_points_at(services, dotenv):
    demo = services[deployment.DEMO_API_SERVICE]
    assert command_of(demo) == [*deployment.DEMO_API_ARGS, "--port", str(deployment.DEMO_API_PORT)]
    assert f"{dotenv['DEMO_API_PORT']}:{deployment.DEMO_API_PORT}" in demo["ports"]
    assert "/health" in " ".join(demo["healthcheck"]["test"])  # not counted in /admin/calls
    conn = compose_settings(dotenv)["AIRFLOW_CONN_DEMO_API"]
    assert (
        f'"host": "{deployment.DEMO_API_SERVICE}"' in conn and f'"port": {deployment.DEMO_API_PORT}' in conn
    )


def test_admin_password_reaches_the_passwords_file(services, dotenv):
    init = services["airflow-init"]
    script = " ".join(command_of(init))
    site = deployment.compose_site("u", "p", "d", "x")
    assert site.passwords_file in script and 'os.environ["AIRFLOW_ADMIN_PASSWORD"]' in script
    assert env_of(init)["AIRFLOW_ADMIN_PASSWORD"] == dotenv["AIRFLOW_ADMIN_PASSWORD"]
    assert init["user"] == "0:0"  # to chown the shared folders
    assert "airflow-auth:/opt/airflow/auth" in services["airflow-apiserver"]["volumes"]


def test_env_example_holds_no_secret_and_env_is_ignored():
    example = deployment.parse_env_file((REPO / ".env.example").read_text())
    for var in deployment.SECRET_VARS:
        assert example.get(var) == "", f".env.example must leave {var} empty"
    for key, value in example.items():
        if re.search(r"PASSWORD|SECRET|TOKEN|FERNET|_KEY$", key):
            assert value == "", f".env.example sets {key}"
    ignored = {line.strip() for line in (REPO / ".gitignore").read_text().splitlines()}
    assert ignored & {".env", "/.env"}
    assert ".env" in (REPO / ".dockerignore").read_text().split()  # never in the image either


def test_secrets_are_required_never_defaulted():
    text = COMPOSE_FILE.read_text()
    for var in deployment.SECRET_VARS:
        uses = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert uses, f"{var} unused in docker-compose.yaml"
        assert all(use.startswith(":?") for use in uses), (var, uses)  # empty -> compose refuses
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(yaml.safe_load(text), {})


def test_write_env_fills_fresh_secrets(tmp_path):
    target = deployment.write_env(REPO / ".env.example", tmp_path / ".env")
    values = deployment.parse_env_file(target.read_text())
    again = deployment.parse_env_file(deployment.write_env(REPO / ".env.example", tmp_path / "b").read_text())
    for var in deployment.SECRET_VARS:
        assert len(values[var]) >= 32 and values[var] != again[var], var
    assert len(base64.urlsafe_b64decode(values["AIRFLOW_FERNET_KEY"])) == 32  # a valid Fernet key
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        deployment.write_env(REPO / ".env.example", target)


def test_dockerfile_extends_the_official_image_with_the_runtime_pins():
    lines = [ln.strip() for ln in (REPO / "Dockerfile").read_text().splitlines()]
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert froms == [deployment.BASE_IMAGE] == ["apache/airflow:3.3.2"]
    requirements = (REPO / "requirements.txt").read_text()
    runtime, marker, _ = requirements.partition("# test and dev tools")
    assert marker, "the Dockerfile installs requirements.txt up to '# test and dev tools'"
    assert f"apache-airflow[celery,postgres]=={deployment.AIRFLOW_VERSION}" in runtime
    assert not re.search(r"^(pytest|ruff|hypothesis)", runtime, re.M)
    text = "\n".join(lines)
    assert "-r /tmp/requirements-runtime.txt" in text and "/^# test and dev tools/,$d" in text
    assert "ENV PYTHONPATH=/opt/airflow/plugins:/opt/airflow/include" in text


def test_native_workers_report_their_own_hostname(monkeypatch):
    import importlib
    import socket

    module, _, name = deployment.WORKER_HOSTNAME_CALLABLE.rpartition(".")  # as [core] hostname_callable
    hostname = getattr(importlib.import_module(module), name)
    monkeypatch.setenv(deployment.WORKER_NAME_VAR, "w7")
    assert hostname() == f"w7@{socket.gethostname()}"
    monkeypatch.delenv(deployment.WORKER_NAME_VAR)
    assert hostname() == socket.getfqdn()  # Airflow's default, as in the containers
