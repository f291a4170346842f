"""``make run``: start the demo API and a full local Airflow from this repo; Ctrl-C stops everything.

Environment: ``AIRFLOW_PORT`` (default 8080), ``DEMO_API_PORT`` (default 8900), ``RUN_LOCAL_HOME``
(default ``.airflow`` in the repo; tests use a temporary one). ``AIRFLOW_CONN_DEMO_API`` and
``AIRFLOW__API_ORCHESTRATION__STATE_URL`` get defaults unless already set.

The launcher supervises what it starts: a component (scheduler, dag-processor, triggerer,
api-server, demo API) that exits is restarted and the restart logged (``[supervisor]`` lines), the
others keep running. Everything it started dies with it, however it is stopped: Ctrl-C or SIGTERM
stop the components gracefully; if the launcher is killed (SIGKILL), the kernel SIGTERMs the
components (``PR_SET_PDEATHSIG``) and a watchdog process kills whatever is left of them
(:mod:`devtools.processes`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

_INCLUDE = Path(__file__).resolve().parents[1]
if str(_INCLUDE) not in sys.path:  # run as a script: make `devtools` importable
    sys.path.insert(0, str(_INCLUDE))

from devtools.airflow_env import ADMIN_PASSWORD, ADMIN_USER, airflow_env, repo_root  # noqa: E402
from devtools.cluster import LocalAirflow, port_in_use, signal_group, tail  # noqa: E402
from devtools.processes import Watchdog, die_with_parent, drain_session  # noqa: E402


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def demo_api_available() -> bool:
    """True if ``python -m demo_services`` can run (the package may not be written yet)."""
    try:
        return importlib.util.find_spec("demo_services.__main__") is not None
    except ImportError:
        return False


def start_demo_api(
    port: int, env: dict[str, str], log: Path, watchdog: Watchdog | None = None
) -> subprocess.Popen[bytes] | None:
    """Start ``python -m demo_services --port <port>`` in its own session; None if unavailable."""
    if not demo_api_available():
        print("demo_services not found (include/demo_services/__main__.py missing): demo API not started")
        return None
    if port_in_use(port):
        raise RuntimeError(f"DEMO_API_PORT {port} is already in use")
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "demo_services", "--port", str(port)],
            env=env,
            cwd=repo_root(),
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    if watchdog is not None:
        watchdog.watch(proc.pid)
    deadline = time.monotonic() + 30
    while not port_in_use(port):
        if proc.poll() is not None:
            raise RuntimeError(f"demo API exited with code {proc.returncode}; tail of {log}:\n{tail(log)}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"demo API not listening on {port} after 30s; tail of {log}:\n{tail(log)}")
        time.sleep(0.2)
    return proc


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 10.0) -> None:
    """SIGTERM the process group of ``proc``, SIGKILL whatever is left after ``grace`` seconds."""
    if proc is None:
        return
    signal_group(proc, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    signal_group(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


class DemoApi:
    """The demo API as a supervised process: restarted (and the restart logged) when it exits."""

    def __init__(self, port: int, env: dict[str, str], log: Path, watchdog: Watchdog | None) -> None:
        self.port, self.env, self.log, self.watchdog = port, env, log, watchdog
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> bool:
        self.log.write_bytes(b"")
        self.proc = start_demo_api(self.port, self.env, self.log, self.watchdog)
        return self.proc is not None

    def supervise(self) -> None:
        if self.proc is None or self.proc.poll() is None:
            return
        print(
            f"[supervisor] demo API (pid {self.proc.pid}) exited with code {self.proc.returncode}; "
            f"restarting. Tail of {self.log}:\n{tail(self.log, lines=15)}",
            flush=True,
        )
        drain_session(self.proc.pid, grace=5.0)
        if self.watchdog is not None:
            self.watchdog.unwatch(self.proc.pid)
        deadline = time.monotonic() + 30  # the old socket may linger a moment
        while port_in_use(self.port) and time.monotonic() < deadline:
            time.sleep(0.5)
        try:
            self.proc = start_demo_api(self.port, self.env, self.log, self.watchdog)
        except RuntimeError as err:  # try again on the next round
            print(f"[supervisor] demo API restart failed: {err}", flush=True)
            return
        self.restarts += 1
        print(f"[supervisor] demo API restarted (pid {self.proc.pid}, restart #{self.restarts})", flush=True)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            drain_session(self.proc.pid, grace=0)


def main() -> int:
    """Run until Ctrl-C / SIGTERM; return the process exit code."""
    # Explicit SIGINT too: a shell that starts us in the background sets SIGINT to "ignore".
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    root = repo_root()
    home = Path(os.environ.get("RUN_LOCAL_HOME") or root / ".airflow").resolve()
    port = int(os.environ.get("AIRFLOW_PORT", "8080"))
    demo_port = int(os.environ.get("DEMO_API_PORT", "8900"))
    demo_url = f"http://127.0.0.1:{demo_port}"
    extra: dict[str, str | None] = {}
    if "AIRFLOW_CONN_DEMO_API" not in os.environ:
        extra["AIRFLOW_CONN_DEMO_API"] = json.dumps(
            {"conn_type": "http", "host": "127.0.0.1", "port": demo_port}
        )
    if "AIRFLOW__API_ORCHESTRATION__STATE_URL" not in os.environ:
        extra["AIRFLOW__API_ORCHESTRATION__STATE_URL"] = f"sqlite:///{home / 'api_orchestration_state.db'}"

    watchdog = Watchdog()
    airflow = LocalAirflow(home, port, extra_env=extra)
    airflow.watchdog = watchdog
    airflow.log_dir.mkdir(parents=True, exist_ok=True)
    demo_env = airflow_env(home, port=port, extra=extra)  # PYTHONPATH has include/
    demo = DemoApi(demo_port, demo_env, airflow.log_dir / "demo-api.log", watchdog)
    code = 0
    try:
        print(f"Starting Airflow in {home} (usually healthy within 20-40 s) ...", flush=True)
        started_demo = demo.start()
        airflow.start()
        bar = "=" * 72
        print(
            f"\n{bar}\n"
            f"  Airflow UI      {airflow.base_url}   (login {ADMIN_USER} / {ADMIN_PASSWORD})\n"
            f"  Demo API        {demo_url if started_demo else '(not started: demo_services missing)'}\n"
            f"  Process logs    {airflow.log_dir}/{{scheduler,dag-processor,triggerer,api-server,demo-api}}.log\n"
            f"  Task logs       {home / 'logs'}\n"
            f"  DAGs folder     {airflow.env['AIRFLOW__CORE__DAGS_FOLDER']} (new DAGs start paused)\n"
            f"  Started in {airflow.startup_seconds:.0f} s.  Ctrl-C stops everything.\n"
            f"{bar}",
            flush=True,
        )
        while True:  # a component that exits is restarted, not a reason to stop the others
            airflow.supervise(log=lambda line: print(line, flush=True))
            demo.supervise()
            time.sleep(2)
    except KeyboardInterrupt:
        print("\nStopping ...", flush=True)
    except RuntimeError as err:  # start-up failed (includes AirflowStartError)
        print(f"\nERROR: {err}", file=sys.stderr, flush=True)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # do not interrupt the shutdown itself
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        airflow.stop()
        demo.stop()
        watchdog.close()
        print("Stopped.", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
