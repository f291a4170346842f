"""The distributed deployment (CeleryExecutor, PostgreSQL, Redis) described once.

Two things run it: ``docker-compose.yaml`` at the repo root, and the native harness
(``LocalAirflow.distributed`` in :mod:`devtools.cluster`, used by ``tests/e2e/test_distributed.py``).
Both take their components, commands and settings from here: the harness by calling these
functions, the compose file by being checked against them (``tests/test_compose.py``), so the two
cannot drift apart. Only the addresses differ (a :class:`Site`): service names on the compose network,
``127.0.0.1`` and throwaway databases and key prefixes natively.

Standard library only, so that ``python3 include/devtools/deployment.py write-env`` works without
the virtualenv: it writes ``.env`` for Docker Compose from ``.env.example`` with fresh secrets.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

AIRFLOW_VERSION = "3.3.2"
BASE_IMAGE = f"apache/airflow:{AIRFLOW_VERSION}"
EXECUTOR = "CeleryExecutor"
ADMIN_USER = "admin"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
WORKER_NAME_VAR = "APIORCH_WORKER_NAME"  # read by worker_hostname() (native harness only)
WORKER_HOSTNAME_CALLABLE = "devtools.deployment.worker_hostname"  # [core] hostname_callable


@dataclass(frozen=True)
class Component:
    """One long-running Airflow process: its name in the native harness, its compose service and
    the ``airflow`` CLI arguments both run (the native harness adds per-process flags, see cluster)."""

    name: str
    service: str
    args: tuple[str, ...]


SCHEDULER = Component("scheduler", "airflow-scheduler", ("scheduler",))
DAG_PROCESSOR = Component("dag-processor", "airflow-dag-processor", ("dag-processor",))
TRIGGERER = Component("triggerer", "airflow-triggerer", ("triggerer",))
API_SERVER = Component("api-server", "airflow-apiserver", ("api-server",))
WORKER = Component("worker", "airflow-worker", ("celery", "worker"))
FLOWER = Component("flower", "flower", ("celery", "flower"))
MIGRATE_ARGS: tuple[str, ...] = ("db", "migrate")  # before the components start (compose: airflow-init)
CORE_COMPONENTS: tuple[Component, ...] = (SCHEDULER, DAG_PROCESSOR, TRIGGERER, API_SERVER)
CELERY_COMPONENTS: tuple[Component, ...] = (*CORE_COMPONENTS, WORKER)

# The demo API (``python -m demo_services``) as a service of the deployment, so the example DAGs'
# connection ``demo_api`` has something to call.
DEMO_API_SERVICE = "demo-api"
DEMO_API_PORT = 8900
DEMO_API_ARGS: tuple[str, ...] = ("python", "-m", "demo_services", "--host", "0.0.0.0")

# Airflow setting -> the .env variable holding its secret. The same value must reach every
# component: JWTs are signed by the scheduler and checked by the api-server, connections are
# encrypted with the Fernet key by one process and read by another, the api secret key signs
# log-fetch tokens.
SECRET_SETTINGS: dict[str, str] = {
    "AIRFLOW__CORE__FERNET_KEY": "AIRFLOW_FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET": "AIRFLOW_JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY": "AIRFLOW_API_SECRET_KEY",
}
# Other secrets in .env (not Airflow settings): the metadata DB password, the admin's password.
OTHER_SECRETS: tuple[str, ...] = ("POSTGRES_PASSWORD", "AIRFLOW_ADMIN_PASSWORD")
SECRET_VARS: tuple[str, ...] = (*SECRET_SETTINGS.values(), *OTHER_SECRETS)


# Celery queues. Every worker serves DEFAULT_QUEUE (``[operators] default_queue``: tasks that set no
# ``queue``). The native harness's workers also serve a queue named after themselves, so a test can
# pin a task to one worker (``queue="w1"``); compose's workers are identical replicas (--scale) and
# serve the default queue only: a dedicated worker there is a service with ``--queues <name>``.
DEFAULT_QUEUE = "default"
QUEUES_FLAG = "--queues"


def worker_queues(name: str) -> str:
    """The ``--queues`` value of the native worker ``name``: the default queue and its own."""
    return f"{DEFAULT_QUEUE},{name}"


SHARED_DIR = "/opt/airflow/shared"  # compose: a volume every Airflow container mounts (bulk results)


@dataclass(frozen=True)
class Site:
    """Where one deployment's parts are, as the Airflow processes reach them."""

    postgres_host: str
    postgres_user: str
    postgres_password: str
    postgres_db: str
    redis_host: str
    api_server_url: str  # base URL of the api-server (workers call its /execution/ API)
    demo_api_host: str
    demo_api_port: int
    passwords_file: str  # SimpleAuthManager's {user: password} JSON file
    postgres_port: int = 5432
    redis_port: int = 6379
    broker_db: int = 0  # Redis database of the Celery broker
    state_db: int = 1  # Redis database of the limiter/breaker state
    state_prefix: str = "apiorch:"  # key prefix of the limiter/breaker state
    results_url: str | None = None  # bulk results, readable by every worker (ObjectStoragePath URI)


def compose_site(postgres_user: str, postgres_password: str, postgres_db: str, state_prefix: str) -> Site:
    """The addresses inside docker-compose.yaml (service names on the compose network)."""
    return Site(
        postgres_host="postgres",
        postgres_user=postgres_user,
        postgres_password=postgres_password,
        postgres_db=postgres_db,
        redis_host="redis",
        api_server_url=f"http://{API_SERVER.service}:8080",
        demo_api_host=DEMO_API_SERVICE,
        demo_api_port=DEMO_API_PORT,
        passwords_file="/opt/airflow/auth/passwords.json",
        state_prefix=state_prefix,
        results_url=f"file://{SHARED_DIR}/results",  # the airflow-shared volume, mounted on every worker
    )


def metadata_url(site: Site) -> str:
    """SQLAlchemy URL of the metadata DB (psycopg2, as Airflow's official compose file uses)."""
    auth = f"{quote(site.postgres_user, safe='')}:{quote(site.postgres_password, safe='')}"
    return f"postgresql+psycopg2://{auth}@{site.postgres_host}:{site.postgres_port}/{site.postgres_db}"


def result_backend_url(site: Site) -> str:
    """Celery's result backend: a table in the metadata DB (Airflow's recommendation over Redis)."""
    return f"db+{metadata_url(site)}"


def broker_url(site: Site) -> str:
    return f"redis://{site.redis_host}:{site.redis_port}/{site.broker_db}"


def state_url(site: Site) -> str:
    """``[api_orchestration] state_url``: the limiter/breaker store every worker and the triggerer share."""
    return f"redis://{site.redis_host}:{site.redis_port}/{site.state_db}?prefix={site.state_prefix}"


def demo_api_connection(site: Site) -> str:
    return json.dumps({"conn_type": "http", "host": site.demo_api_host, "port": site.demo_api_port})


def airflow_settings(site: Site, secret_values: Mapping[str, str]) -> dict[str, str]:
    """The environment every Airflow component of the distributed deployment gets.

    ``secret_values`` maps the .env variable names of :data:`SECRET_SETTINGS` to their values.
    """
    settings = {
        "AIRFLOW__CORE__EXECUTOR": EXECUTOR,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url(site),
        "AIRFLOW__CELERY__BROKER_URL": broker_url(site),
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend_url(site),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{site.api_server_url}/execution/",
        "AIRFLOW__API_ORCHESTRATION__STATE_URL": state_url(site),
        "AIRFLOW_CONN_DEMO_API": demo_api_connection(site),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": DEFAULT_QUEUE,  # the queue every worker serves
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": site.passwords_file,
    }
    if site.results_url:
        settings["AIRFLOW__API_ORCHESTRATION__RESULTS_URL"] = site.results_url
    settings.update({setting: secret_values[var] for setting, var in SECRET_SETTINGS.items()})
    return settings


def new_secret_values() -> dict[str, str]:
    """Fresh random values for :data:`SECRET_VARS` (URL-safe, so they fit into URLs unquoted)."""
    values = {var: secrets.token_hex(24) for var in SECRET_VARS}
    values["AIRFLOW_FERNET_KEY"] = base64.urlsafe_b64encode(os.urandom(32)).decode()  # a valid Fernet key
    return values


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the native harness's Celery workers.

    Native workers share one machine, so the default (the FQDN) would give every task instance
    the same ``hostname``; each worker process sets ``APIORCH_WORKER_NAME`` and its task instances
    report ``<name>@<host>``, the node name of the Celery worker (``--celery-hostname <name>@%h``).
    In Docker every worker container has its own hostname and Airflow's default is kept.
    """
    name = os.environ.get(WORKER_NAME_VAR)
    return f"{name}@{socket.gethostname()}" if name else socket.getfqdn()


def parse_env_file(text: str) -> dict[str, str]:
    """``KEY=value`` lines of a Docker Compose .env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def write_env(example: Path, target: Path) -> Path:
    """Copy ``example`` to ``target``, filling every empty secret with a fresh random value.

    Refuses to overwrite ``target`` (it holds the secrets the database was created with).
    """
    if target.exists():
        raise FileExistsError(f"{target} exists; delete it first to generate new secrets")
    fresh = new_secret_values()
    lines = []
    for raw in example.read_text().splitlines():
        key, sep, value = raw.partition("=")
        if sep and not raw.lstrip().startswith("#") and key.strip() in fresh and not value.strip():
            raw = f"{key.strip()}={fresh[key.strip()]}"
        lines.append(raw)
    if sys.platform.startswith("linux"):  # files on bind mounts must belong to the host user
        lines = [f"AIRFLOW_UID={os.getuid()}" if ln.startswith("AIRFLOW_UID=") else ln for ln in lines]
    target.write_text("\n".join(lines) + "\n")
    target.chmod(0o600)
    return target


def main(argv: list[str]) -> int:
    if argv[1:2] != ["write-env"]:
        print("usage: python3 include/devtools/deployment.py write-env   (writes .env from .env.example)")
        return 2
    root = Path(__file__).resolve().parents[2]
    try:
        path = write_env(root / ".env.example", root / ".env")
    except FileExistsError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"wrote {path} with fresh secrets (admin password: AIRFLOW_ADMIN_PASSWORD in it)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
