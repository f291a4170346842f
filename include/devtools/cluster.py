"""Run a real local Airflow (scheduler, dag-processor, triggerer, api-server) and talk to its REST API.

``LocalAirflow`` starts the four components as subprocesses (each in its own process group) with the
environment from :func:`devtools.airflow_env.airflow_env`; with ``executor="CeleryExecutor"`` and
``workers`` it also starts Celery workers (``LocalAirflow.distributed`` builds that set-up from the
deployment description shared with docker-compose.yaml, :mod:`devtools.deployment`).
``AirflowRestClient`` is a thin ``requests`` client for the REST API v2. No Airflow imports here:
this module is fast to import.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import requests

from devtools import deployment
from devtools.airflow_env import ADMIN_PASSWORD, ADMIN_USER, PASSWORDS_FILE_NAME, airflow_env
from devtools.processes import Watchdog, die_with_parent, drain_session, signal_session

COMPONENTS: tuple[str, ...] = tuple(c.name for c in deployment.CORE_COMPONENTS)
EXECUTION_API_SERVER = "api-server-execution"  # the second api-server on SQLite (LocalAirflow.start)
# Health-endpoint section -> (process whose log explains it, heartbeat field).
_HEALTH_SECTIONS: dict[str, tuple[str, str | None]] = {
    "metadatabase": ("api-server", None),
    "scheduler": ("scheduler", "latest_scheduler_heartbeat"),
    "triggerer": ("triggerer", "latest_triggerer_heartbeat"),
    "dag_processor": ("dag-processor", "latest_dag_processor_heartbeat"),
}
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
# Keys printed specially, or repeated on every task-log line (TI identity, source location): not in the text.
_LOG_SKIP_KEYS = frozenset(
    [
        "timestamp",
        "level",
        "logger",
        "event",
        "ti_id",
        "dag_id",
        "run_id",
        "task_id",
        "map_index",
        "try_number",
        "filename",
        "lineno",
    ]
)


class AirflowStartError(RuntimeError):
    """Airflow did not come up (a process died, migration failed or health timed out)."""


def free_port() -> int:
    """Return a TCP port that is currently free on all interfaces."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Return True if something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of a text file ('' if missing), plus its first traceback if earlier."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 256 * 1024))
            all_lines = fh.read().decode("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    first_tb = next((i for i, line in enumerate(all_lines) if line.startswith("Traceback")), None)
    if first_tb is not None and first_tb < len(all_lines) - lines:
        return "\n".join([*all_lines[first_tb : first_tb + lines], "[...]", *all_lines[-lines:]])
    return "\n".join(all_lines[-lines:])


def airflow_command(*args: str) -> list[str]:
    """Command line for the Airflow CLI of the running interpreter (venv ``bin/airflow`` if present)."""
    script = Path(sys.executable).parent / "airflow"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "airflow", *args]


class LocalAirflow:
    """A local Airflow made of scheduler, dag-processor, triggerer and api-server subprocesses.

    Usage::

        with LocalAirflow(tmp_path / "home", free_port()) as af:
            client = af.client()

    Process output goes to ``log_dir`` (default ``home/proc-logs``), task logs to ``home/logs``.
    ``extra_env`` is passed to :func:`airflow_env` as ``extra`` (it wins over everything else).

    ``airflow`` is the Airflow CLI to run (default: this interpreter's), e.g. another virtualenv's
    ``bin/airflow``. ``executor`` sets ``[core] executor`` (default: LocalExecutor, from :func:`airflow_env`).
    ``workers`` names Celery workers to start (CeleryExecutor only): process ``worker-<name>``,
    ``airflow celery worker --celery-hostname <name>@%h --concurrency <worker_concurrency> --queues default,<name>``
    (a task with ``queue="<name>"`` runs on that worker).
    Each reports its task instances' ``hostname`` as ``<name>@<fqdn>``
    (:func:`devtools.deployment.worker_hostname`), as separate hosts would differ. The broker,
    result backend and metadata DB come from ``extra_env``: see :meth:`distributed`.
    """

    def __init__(
        self,
        home: Path,
        port: int,
        extra_env: Mapping[str, str | None] | None = None,
        log_dir: Path | None = None,
        *,
        startup_timeout: float = 180.0,
        stop_timeout: float = 20.0,
        executor: str | None = None,
        workers: Sequence[str] = (),
        worker_concurrency: int = 2,
        airflow: Sequence[str] | None = None,
    ) -> None:
        if workers and (executor or (extra_env or {}).get("AIRFLOW__CORE__EXECUTOR")) != deployment.EXECUTOR:
            raise ValueError(f"Celery workers need executor={deployment.EXECUTOR!r}")
        self.home = Path(home).resolve()
        self.port = port
        self.extra_env = dict(extra_env or {})
        if executor is not None:
            self.extra_env["AIRFLOW__CORE__EXECUTOR"] = executor
        self.workers = tuple(workers)
        self.worker_concurrency = worker_concurrency
        self.worker_nodes: list[str] = []  # Celery node names that answered the start-up ping
        self.airflow = tuple(airflow) if airflow else None  # another installation's CLI (bin/airflow)
        self.log_dir = Path(log_dir).resolve() if log_dir else self.home / "proc-logs"
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.base_url = f"http://localhost:{port}"
        self.env: dict[str, str] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: dict[str, int] = {}  # component -> times restarted by supervise()
        self.watchdog: Watchdog | None = None  # set by the launcher: sessions to clean up if it dies
        self._plan: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {}
        self._spawned_at: dict[str, float] = {}
        self._restart_due: dict[str, float] = {}
        self._crash_streak: dict[str, int] = {}  # quick crashes in a row (exited < 60 s after start)
        self._log_files: dict[str, IO[bytes]] = {}
        self._started_at: datetime | None = None
        self.startup_seconds: float | None = None
        self.execution_port: int | None = None  # a separate Execution API server (SQLite), see start()

    @classmethod
    def distributed(
        cls,
        home: Path,
        port: int,
        site: deployment.Site,
        *,
        workers: Sequence[str] = ("w1", "w2"),
        worker_concurrency: int = 2,
        broker_prefix: str | None = None,
        secret_values: Mapping[str, str] | None = None,
        extra_env: Mapping[str, str | None] | None = None,
        **kwargs: Any,
    ) -> LocalAirflow:
        """The deployment of docker-compose.yaml, natively: CeleryExecutor, the metadata DB, broker,
        result backend and state store of ``site`` (settings from :func:`deployment.airflow_settings`,
        the function the compose file is checked against), and Celery ``workers``.

        ``site.api_server_url`` and ``site.passwords_file`` are replaced by this instance's.
        ``broker_prefix`` prefixes every broker key in Redis (kombu's ``global_keyprefix``), so
        several instances can share one Redis database. ``secret_values`` default to fresh ones.
        """
        home = Path(home).resolve()
        site = dataclasses.replace(
            site,
            api_server_url=f"http://localhost:{port}",
            passwords_file=str(home / PASSWORDS_FILE_NAME),
        )
        env: dict[str, str | None] = dict(
            deployment.airflow_settings(site, secret_values or deployment.new_secret_values())
        )
        if broker_prefix:
            env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX"] = broker_prefix
        env.update(extra_env or {})
        return cls(
            home,
            port,
            extra_env=env,
            executor=deployment.EXECUTOR,
            workers=workers,
            worker_concurrency=worker_concurrency,
            **kwargs,
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def log_path(self, name: str) -> Path:
        """Log file of process ``name`` (one of ``COMPONENTS`` or ``db-migrate``)."""
        return self.log_dir / f"{name}.log"

    def start(self) -> None:
        """Migrate the DB, start all components and wait until ``/api/v2/monitor/health`` is healthy.

        Raises :class:`AirflowStartError` (after stopping everything) if start-up fails.
        """
        if self.processes:
            raise RuntimeError("LocalAirflow already started")
        if port_in_use(self.port):
            raise AirflowStartError(
                f"port {self.port} is already in use; stop the other server or pick another"
            )
        t0 = time.monotonic()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = airflow_env(self.home, port=self.port, extra=self._extra_with_log_ports())
        self._split_execution_api()
        atexit.register(self.stop)
        try:
            self._migrate()
            self._started_at = datetime.now(UTC)
            self._plan = self.process_plan()
            for name in self._plan:
                self._spawn(name)
            self.wait_healthy(self.startup_timeout)
            self._wait_execution_api(self.startup_timeout - (time.monotonic() - t0))
            if self.workers:
                remaining = self.startup_timeout - (time.monotonic() - t0)
                self.worker_nodes = self.wait_workers_ready(max(10.0, remaining))
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def process_plan(self) -> dict[str, tuple[tuple[str, ...], dict[str, str]]]:
        """Process name -> (``airflow`` CLI arguments, environment added for that process), in start
        order: the components of :data:`deployment.CORE_COMPONENTS`, then one Celery worker per name."""
        plan: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {}
        for component in deployment.CORE_COMPONENTS:
            port = ("--port", str(self.port)) if component is deployment.API_SERVER else ()
            apps = ("--apps", "core") if component is deployment.API_SERVER and self.execution_port else ()
            plan[component.name] = ((*component.args, *port, *apps), {})
        if self.execution_port:
            args = (*deployment.API_SERVER.args, "--apps", "execution", "--port", str(self.execution_port))
            plan[EXECUTION_API_SERVER] = (args, {})
        for name in self.workers:
            args = (
                *deployment.WORKER.args,
                "--celery-hostname", f"{name}@%h",
                "--concurrency", str(self.worker_concurrency),
                deployment.QUEUES_FLAG, deployment.worker_queues(name),  # the default queue and its own
                # Workers share this machine's log folder (the api-server reads task logs from it),
                # and two log servers cannot share one port.
                "--skip-serve-logs",
            )  # fmt: skip
            env = {
                deployment.WORKER_NAME_VAR: name,
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": deployment.WORKER_HOSTNAME_CALLABLE,
            }
            plan[self.worker_process(name)] = (args, env)
        return plan

    def _split_execution_api(self) -> None:
        """On the embedded SQLite, serve the Execution API (what task processes call) from a second
        api-server process (``--apps execution``), the UI and REST API from the first (``--apps core``).

        In one process, Airflow's audit log of a REST call (``action_logging``: an async dependency
        writing through a blocking session on the event loop) waits for SQLite's write lock while a
        task's Execution API call in a worker thread holds it until its session's teardown, which
        needs that same event loop: both wait out the whole busy timeout, then fail with "database
        is locked" (HTTP 500 for the trigger, a failed task for the other). In two processes the
        lock holder never needs the blocked loop."""
        self.execution_port = None
        if not self.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite"):
            return
        if "AIRFLOW__CORE__EXECUTION_API_SERVER_URL" in self.extra_env:
            return  # the caller decides where the Execution API is
        self.execution_port = free_port()
        self.env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = (
            f"http://localhost:{self.execution_port}/execution/"
        )

    def _wait_execution_api(self, timeout: float) -> None:
        if not self.execution_port:
            return
        deadline = time.monotonic() + max(timeout, 10.0)
        while not port_in_use(self.execution_port):
            self.check_processes()
            if time.monotonic() >= deadline:
                log = self.log_path(EXECUTION_API_SERVER)
                raise AirflowStartError(
                    f"the Execution API server is not listening on {self.execution_port}; tail of {log}:\n{tail(log)}"
                )
            time.sleep(0.5)

    def _extra_with_log_ports(self) -> dict[str, str | None]:
        """Give the worker/triggerer log servers free ports unless configured (8793/8794 may be taken)."""
        extra = dict(self.extra_env)
        for key in ("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"):
            if key not in extra and key not in os.environ:
                extra[key] = str(free_port())
        return extra

    def _command(self, *args: str) -> list[str]:
        return [*self.airflow, *args] if self.airflow else airflow_command(*args)

    def _migrate(self) -> None:
        log = self.log_path("db-migrate")
        with log.open("wb") as fh:
            proc = subprocess.run(
                self._command(*deployment.MIGRATE_ARGS),
                env=self.env,
                cwd=self.home,
                stdout=fh,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if proc.returncode != 0:
            raise AirflowStartError(
                f"`airflow db migrate` failed with exit code {proc.returncode}; tail of {log}:\n{tail(log)}"
            )

    @staticmethod
    def worker_process(name: str) -> str:
        """Process (and log) name of the Celery worker ``name``."""
        return f"worker-{name}"

    def _spawn(self, name: str) -> None:
        args, extra = self._plan[name]
        if name in self._log_files:
            self._log_files.pop(name).close()
        # a restart appends to the log: the crash stays readable above the new start
        fh = self.log_path(name).open("ab" if name in self._spawned_at else "wb")
        self._log_files[name] = fh
        proc = subprocess.Popen(
            self._command(*args),
            env={**self.env, **extra},
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: we can find and stop all its descendants
            preexec_fn=die_with_parent,  # SIGTERM from the kernel if the launcher dies, even by SIGKILL
        )
        self.processes[name] = proc
        self._spawned_at[name] = time.monotonic()
        if self.watchdog is not None:
            self.watchdog.watch(proc.pid)

    def check_processes(self) -> None:
        """Raise :class:`AirflowStartError` with the log tail if any component process has exited."""
        for name, proc in self.processes.items():
            code = proc.poll()
            if code is not None:
                log = self.log_path(name)
                raise AirflowStartError(
                    f"airflow {name} exited with code {code}; tail of {log}:\n{tail(log)}"
                )

    def supervise(self, log: Any = print) -> list[str]:
        """Restart every component that exited; return their names. Call it every few seconds.

        A component that dies is not a reason to stop the others: whatever is left of it (executor
        workers, task runners, log servers, all in its session) is stopped, the crash is logged with
        the tail of its log, and it is started again. One that keeps crashing within a minute of its
        start waits 2, 4, 8 ... up to 60 s between restarts.
        """
        restarted = []
        now = time.monotonic()
        for name, proc in list(self.processes.items()):
            code = proc.poll()
            if code is None:
                continue
            due = self._restart_due.get(name)
            if due is None:
                quick = now - self._spawned_at.get(name, now) < 60
                streak = self._crash_streak[name] = self._crash_streak.get(name, 0) + 1 if quick else 0
                delay = min(60.0, 2.0**streak) if quick else 0.0
                self._restart_due[name] = due = now + delay
                log(
                    f"[supervisor] airflow {name} (pid {proc.pid}) exited with code {code}; "
                    f"restarting in {delay:.0f} s. Tail of {self.log_path(name)}:\n"
                    f"{tail(self.log_path(name), lines=15)}"
                )
                drain_session(proc.pid, grace=5.0)
                if self.watchdog is not None:
                    self.watchdog.unwatch(proc.pid)
            if now < due:
                continue
            del self._restart_due[name]
            self.restarts[name] = self.restarts.get(name, 0) + 1
            self._spawn(name)
            log(
                f"[supervisor] airflow {name} restarted (pid {self.processes[name].pid}, restart #{self.restarts[name]})"
            )
            restarted.append(name)
        return restarted

    def health(self) -> dict[str, Any]:
        """Return the JSON of ``GET /api/v2/monitor/health`` (no auth needed)."""
        resp = requests.get(f"{self.base_url}/api/v2/monitor/health", timeout=5)
        resp.raise_for_status()
        return resp.json()

    def _unhealthy(self, health: Mapping[str, Any]) -> list[str]:
        """Sections not healthy, or whose heartbeat predates this start (stale job of an earlier run)."""
        since = (self._started_at or datetime.now(UTC)) - timedelta(seconds=2)
        bad = []
        for section, (_, hb_field) in _HEALTH_SECTIONS.items():
            info = health.get(section) or {}
            if info.get("status") != "healthy":
                bad.append(section)
            elif hb_field:
                beat = info.get(hb_field)
                if not beat or datetime.fromisoformat(beat.replace("Z", "+00:00")) < since:
                    bad.append(section)
        return bad

    def wait_healthy(self, timeout: float = 180.0) -> dict[str, Any]:
        """Poll the health endpoint until metadatabase, scheduler, triggerer and dag_processor are healthy."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | str = "api-server not reachable yet"
        bad = list(_HEALTH_SECTIONS)
        while True:
            self.check_processes()
            try:
                health = self.health()
            except (requests.RequestException, ValueError) as err:
                last = f"{type(err).__name__}: {err}"
            else:
                last = health
                bad = self._unhealthy(health)
                if not bad:
                    return health
            if time.monotonic() >= deadline:
                names = sorted({_HEALTH_SECTIONS[s][0] for s in bad} | {"api-server"})
                tails = "\n".join(
                    f"--- tail of {self.log_path(n)} ---\n{tail(self.log_path(n))}" for n in names
                )
                raise AirflowStartError(
                    f"Airflow not healthy after {timeout:.0f}s (unhealthy: {', '.join(bad)}); "
                    f"last health: {last}\n{tails}"
                )
            time.sleep(1.0)

    def wait_workers_ready(self, timeout: float = 60.0) -> list[str]:
        """Ping the Celery workers over the broker until each of ``workers`` answers; return the
        node names that answered. Raises :class:`AirflowStartError` with their log tails on timeout."""
        from celery import Celery  # only needed with workers; the venv has it (apache-airflow[celery])

        prefix = "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__"
        app = Celery(broker=self.env["AIRFLOW__CELERY__BROKER_URL"], set_as_current=False)
        app.conf.broker_transport_options = {
            key[len(prefix) :].lower(): value for key, value in self.env.items() if key.startswith(prefix)
        }
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.check_processes()
                nodes = sorted(node for reply in app.control.ping(timeout=1.0) for node in reply)
                missing = [w for w in self.workers if not any(n.startswith(f"{w}@") for n in nodes)]
                if not missing:
                    return nodes
                if time.monotonic() >= deadline:
                    tails = "\n".join(
                        f"--- tail of {self.log_path(self.worker_process(w))} ---\n"
                        f"{tail(self.log_path(self.worker_process(w)))}"
                        for w in missing
                    )
                    raise AirflowStartError(
                        f"Celery workers {missing} did not answer a ping after {timeout:.0f}s "
                        f"(answered: {nodes})\n{tails}"
                    )
                time.sleep(0.5)
        finally:
            app.close()

    def stop(self) -> None:
        """SIGTERM each component, SIGKILL its whole process group after ``stop_timeout``. Idempotent.

        SIGTERM goes to the group *leader* only: each component shuts its own children down. A
        group-wide SIGTERM kills idle LocalExecutor workers (they only ignore SIGINT) while one holds
        the task-queue lock, and the scheduler then hangs forever joining the others. The api-server
        goes last so that components shutting down can still report task states to it.
        """
        procs, self.processes = self.processes, {}
        first = [p for name, p in procs.items() if not name.startswith("api-server")]
        last = [p for name, p in procs.items() if name.startswith("api-server")]
        for batch in (first, last):
            for proc in batch:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            for proc in batch:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        # Kill leftovers: leaders that ignored SIGTERM and children that outlived their leader
        # (LocalExecutor workers, log servers, task supervisors, task runners in groups of their own).
        for proc in procs.values():
            signal_group(proc, signal.SIGKILL)
            signal_session(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if self.watchdog is not None:
                self.watchdog.unwatch(proc.pid)
        for fh in self._log_files.values():
            fh.close()
        self._log_files = {}
        atexit.unregister(self.stop)

    def client(self, username: str = ADMIN_USER, password: str = ADMIN_PASSWORD) -> AirflowRestClient:
        """A REST client for this instance (admin/admin by default)."""
        return AirflowRestClient(self.base_url, username, password)


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``proc`` (it was started with a new session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class AirflowRestClient:
    """Minimal client for the Airflow 3 REST API v2 with a JWT from ``POST /auth/token``."""

    def __init__(self, base_url: str, username: str, password: str, *, request_timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.request_timeout = request_timeout
        self.session = requests.Session()
        self._token: str | None = None

    def token(self, refresh: bool = False) -> str:
        """Return a cached access token (POST /auth/token), fetching a new one if needed."""
        if self._token is None or refresh:
            resp = self.session.post(
                f"{self.base_url}/auth/token",
                json={"username": self.username, "password": self.password},
                timeout=self.request_timeout,
            )
            resp.raise_for_status()
            self._token = resp.json()["access_token"]
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Authenticated request to ``base_url + path``; re-login once on 401. Does not raise on status."""
        headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", self.request_timeout)
        url = f"{self.base_url}{path}"
        resp = self.session.request(
            method, url, headers={**headers, "Authorization": f"Bearer {self.token()}"}, **kwargs
        )
        if resp.status_code == 401:
            token = self.token(refresh=True)
            resp = self.session.request(
                method, url, headers={**headers, "Authorization": f"Bearer {token}"}, **kwargs
            )
        return resp

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self.request(method, path, **kwargs)
        if not resp.ok:
            raise requests.HTTPError(f"{method} {path} -> {resp.status_code}: {resp.text}", response=resp)
        return resp.json()

    def _paged(self, path: str, key: str, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        while True:
            page = self._json("GET", path, params={**(params or {}), "limit": 100, "offset": len(items)})
            items.extend(page[key])
            if not page[key] or len(items) >= page.get("total_entries", 0):
                return items

    # -- DAGs ----------------------------------------------------------------------------------
    def get_dag(self, dag_id: str) -> dict[str, Any] | None:
        """``GET /api/v2/dags/{dag_id}``, or None while the DAG is unknown (404)."""
        resp = self.request("GET", f"/api/v2/dags/{dag_id}")
        if resp.status_code == 404:
            return None
        if not resp.ok:
            raise requests.HTTPError(f"GET dag {dag_id} -> {resp.status_code}: {resp.text}", response=resp)
        return resp.json()

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0, poll: float = 1.0) -> dict[str, Any]:
        """Poll until the dag-processor has parsed and serialized ``dag_id``; return the DAG JSON."""
        deadline = time.monotonic() + timeout
        while True:
            dag = self.get_dag(dag_id)
            if dag is not None:
                return dag
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"DAG {dag_id!r} not parsed after {timeout:.0f}s; import errors: {self.import_errors()}"
                )
            time.sleep(poll)

    def unpause(self, dag_id: str) -> dict[str, Any]:
        """``PATCH /api/v2/dags/{dag_id}`` with ``is_paused=false``."""
        return self._json("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False})

    def import_errors(self) -> list[dict[str, Any]]:
        """All rows of ``GET /api/v2/importErrors`` (filename, stack_trace, ...)."""
        return self._paged("/api/v2/importErrors", "import_errors")

    # -- runs ----------------------------------------------------------------------------------
    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None, run_id: str | None = None) -> str:
        """Trigger a run with ``logical_date: null``; return its run id."""
        body: dict[str, Any] = {"logical_date": None, "conf": dict(conf or {})}
        if run_id is not None:
            body["dag_run_id"] = run_id
        return self._json("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def get_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        """``GET /api/v2/dags/{dag_id}/dagRuns/{run_id}``."""
        return self._json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 300.0, poll: float = 1.0) -> str:
        """Poll until the run is ``success`` or ``failed``; return that state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.get_run(dag_id, run_id)["state"]
            if state in TERMINAL_RUN_STATES:
                return state
            if time.monotonic() >= deadline:
                tis = {
                    (t["task_id"], t["map_index"]): t["state"] for t in self.task_instances(dag_id, run_id)
                }
                raise TimeoutError(
                    f"run {dag_id}/{run_id} still {state!r} after {timeout:.0f}s; tasks: {tis}"
                )
            time.sleep(poll)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """All task instances of a run (task_id, map_index, state, try_number, ...)."""
        return self._paged(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", "task_instances")

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict[str, Any]]:
        """One row per try of a task instance (history plus the current try)."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/tries"
        return self._json("GET", path, params={"map_index": map_index})["task_instances"]

    def log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        """Task log of one try as text: one line per structured log entry."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
        data = self._json("GET", path, params={"map_index": map_index, "full_content": "true"})
        content = data.get("content", [])
        if isinstance(content, str):
            return content
        return "\n".join(_format_log_entry(entry) for entry in content)

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        """Deserialized XCom value of a task instance."""
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self._json("GET", path, params={"map_index": map_index, "deserialize": "true"})["value"]


def _format_log_entry(entry: Any) -> str:
    """``timestamp [level] logger: event k=v ...`` for a structured log entry (strings pass through)."""
    if not isinstance(entry, Mapping):
        return str(entry)
    rest = {k: v for k, v in entry.items() if k not in _LOG_SKIP_KEYS}
    parts = [str(entry[k]) for k in ("timestamp",) if entry.get(k)]
    if entry.get("level"):
        parts.append(f"[{entry['level']}]")
    if entry.get("logger"):
        parts.append(f"{entry['logger']}:")
    parts.append(str(entry.get("event", "")))
    parts.extend(f"{k}={v}" for k, v in rest.items())
    return " ".join(parts)
