"""``make run`` under abuse: bad conf, a killed scheduler, a burst of triggers, SIGTERM then SIGKILL.

One real ``include/devtools/run_local.py`` (what ``make run`` starts) on free ports with a temporary
home, embedded SQLite metadata DB and state store, the repo's DAGs, and the demo API. The tests run in
file order and share it; the last one kills it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import REPO
from devtools.cluster import AirflowRestClient, free_port
from make_run_probe import alive, cmdline, descendants, processes_mentioning, settle, trigger_burst

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BURST_RUNS = int(os.environ.get("MAKE_RUN_BURST_RUNS", "200"))
BURST_SETTLE_SECONDS = float(os.environ.get("MAKE_RUN_BURST_SETTLE_SECONDS", "45"))


class MakeRun:
    """``run_local.py`` as a subprocess; its output in ``output``."""

    def __init__(self, base: Path) -> None:
        self.home = base / "home"
        self.output = base / "launcher.log"
        self.port, self.demo_port = free_port(), free_port()
        drop = ("AIRFLOW_HOME", "AIRFLOW_CONFIG", "AIRFLOW_CONN_DEMO_API")
        env = {
            k: v for k, v in os.environ.items() if k not in drop and not k.startswith("AIRFLOW__")
        }  # the test session's own Airflow settings must not leak in
        env.update(
            RUN_LOCAL_HOME=str(self.home), AIRFLOW_PORT=str(self.port), DEMO_API_PORT=str(self.demo_port)
        )
        with self.output.open("wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, str(REPO / "include" / "devtools" / "run_local.py")],
                env=env,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # like a terminal's job: our signals go to the launcher only
            )
        self.base_url = f"http://localhost:{self.port}"
        self.demo_url = f"http://127.0.0.1:{self.demo_port}"

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_started(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while "Ctrl-C stops everything" not in self.text():
            assert self.proc.poll() is None, f"make run exited:\n{self.text()[-4000:]}"
            assert time.monotonic() < deadline, (
                f"make run not up after {timeout:.0f} s:\n{self.text()[-4000:]}"
            )
            time.sleep(1)

    def component_pid(self, name: str) -> int:
        """The pid of the running ``airflow <name>`` started by the launcher."""
        for pid in sorted(descendants(self.proc.pid)):
            argv = cmdline(pid).split()  # [python] .../bin/airflow scheduler ...
            if any(a.endswith("airflow") and b == name for a, b in itertools.pairwise(argv)):
                return pid
        raise AssertionError(f"no airflow {name} process under the launcher")

    def crashes(self) -> list[str]:
        return [line for line in self.text().splitlines() if "[supervisor]" in line and "exited" in line]

    def kill_all(self) -> None:
        """Last resort for a failed test: kill everything that mentions our home."""
        for pid in {self.proc.pid, *descendants(self.proc.pid), *processes_mentioning(str(self.home))}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def make_run(tmp_path_factory) -> Iterator[MakeRun]:
    run = MakeRun(tmp_path_factory.mktemp("make_run"))
    try:
        run.wait_started()
        yield run
    finally:
        run.kill_all()


@pytest.fixture(scope="module")
def client(make_run) -> AirflowRestClient:
    c = AirflowRestClient(make_run.base_url, "admin", "admin")
    for dag_id in ("order_saga", "order_saga_spec"):
        c.wait_for_dag(dag_id, timeout=180)
        c.unpause(dag_id)
    return c


def _post_run(client: AirflowRestClient, dag_id: str, conf: dict, run_id: str) -> requests.Response:
    body = {"logical_date": None, "dag_run_id": run_id, "conf": conf}
    return client.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", json=body)


def _ledger(make_run: MakeRun, order_id: str) -> dict:
    return requests.get(f"{make_run.demo_url}/admin/ledger", params={"order_id": order_id}, timeout=10).json()


@pytest.mark.parametrize("dag_id", ["order_saga", "order_saga_spec"])
def test_out_of_range_conf_is_refused_at_trigger(make_run, client, dag_id):
    """A huge integer (once: OverflowError in the dag-processor, which took make run down) and other
    out-of-range values are refused by the REST API with the param's message; nothing crashes."""
    cases = {
        "amount_cents": (100000000000000000000, "greater than the maximum of 100000000"),
        "order_id": ("o 1; drop table", "does not match"),
    }
    for field, (value, message) in cases.items():
        resp = _post_run(client, dag_id, {"order_id": "o-bad", field: value}, f"bad_{field}")
        assert resp.status_code == 400, resp.text
        assert f"Invalid input for param {field}" in resp.text and message in resp.text
    assert _post_run(client, dag_id, {"amount_cents": 0}, "bad_zero").status_code == 400
    assert make_run.crashes() == []


def test_a_huge_integer_in_conf_does_not_crash_the_dag_processor(make_run, client):
    """An undeclared conf key cannot be bounded by a param: Airflow cannot serialize the run for the
    task (the task fails), and a saga step's failure no longer goes through the dag-processor."""
    resp = _post_run(client, "order_saga", {"order_id": "o-huge", "note": 10**20}, "huge_note")
    assert resp.status_code == 200, resp.text  # an undeclared key: no param to check it against
    deadline = time.monotonic() + 300
    while True:  # Airflow cannot hand the run to a task process: the first step fails
        states = {t["task_id"]: t["state"] for t in client.task_instances("order_saga", "huge_note")}
        if states.get("charge_payment") == "failed" or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert states.get("charge_payment") == "failed", states
    time.sleep(15)  # time for a failure callback in the dag-processor to crash it, as it once did
    assert make_run.crashes() == []
    assert _ledger(make_run, "o-huge")["entries"] == []
    # stop the run (its compensations would retry for minutes, failing the same way)
    client.request("PATCH", "/api/v2/dags/order_saga/dagRuns/huge_note", json={"state": "failed"})


def test_the_same_order_triggered_twice_is_charged_once(make_run, client):
    conf = {"order_id": "o-twice", "amount_cents": 4200, "skus": ["SKU-1"], "address": "1 Main St"}
    first = client.trigger("order_saga", conf=conf, run_id="twice_1")
    second = client.trigger("order_saga", conf=conf, run_id="twice_2")
    assert client.wait_for_run("order_saga", first) == "success"
    assert client.wait_for_run("order_saga", second) == "success"
    book = _ledger(make_run, "o-twice")
    assert [e["type"] for e in book["entries"]] == ["charge", "reservation", "shipment"]
    assert book["orders"]["o-twice"]["charged"] == 4200


def test_a_killed_scheduler_is_restarted_and_dags_still_run(make_run, client):
    old = make_run.component_pid("scheduler")
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while "[supervisor] airflow scheduler restarted" not in make_run.text():
        assert make_run.proc.poll() is None, make_run.text()[-3000:]
        assert time.monotonic() < deadline, make_run.text()[-3000:]
        time.sleep(1)
    assert make_run.component_pid("scheduler") != old
    assert any("airflow scheduler" in line and "exited with code -9" in line for line in make_run.crashes())
    run_id = client.trigger("order_saga", conf={"order_id": "o-after-restart"}, run_id="after_restart")
    assert client.wait_for_run("order_saga", run_id, timeout=300) == "success"
    for name in ("dag-processor", "triggerer", "api-server"):  # the others never stopped
        assert f"airflow {name} (pid" not in "\n".join(make_run.crashes())


def test_a_burst_of_200_order_sagas_on_the_embedded_sqlite(make_run, client):
    """200 triggers back to back: every one accepted (no HTTP 500), no component crashes or logs
    "database is locked" while the runs are worked off; the counts are printed. The runs are not all
    awaited (about 1,000 task runs; MAKE_RUN_BURST_SETTLE_SECONDS, default 45 s): the next test
    stops make run with them in flight."""
    crashes_before = len(make_run.crashes())
    prefix = "burst_"
    burst = trigger_burst(
        client,
        "order_saga",
        BURST_RUNS,
        lambda i: {"order_id": f"burst-{i}", "skus": ["OUT-OF-STOCK"] if i % 4 == 0 else ["SKU-1"]},
        prefix,
    )
    print(f"\nburst: {burst.summary()}", flush=True)
    settle(client, "order_saga", burst, prefix, BURST_SETTLE_SECONDS)
    crashes = make_run.crashes()[crashes_before:]
    locked = [
        log.name
        for log in (make_run.home / "proc-logs").glob("*.log")
        if "database is locked" in log.read_text(errors="replace")
    ]
    print(f"burst: {burst.summary()}; crashes {len(crashes)}; 'database is locked' in {locked or 'no log'}")
    assert burst.http_500s == 0 and not burst.errors, burst.errors[:5]
    assert burst.triggered == BURST_RUNS
    assert crashes == [] and locked == []
    assert burst.states["success"] + burst.states["failed"] > 0, dict(burst.states)  # runs are worked off
    book = requests.get(f"{make_run.demo_url}/admin/ledger", timeout=30).json()
    charges = [e["order_id"] for e in book["entries"] if e["type"] == "charge"]
    assert len(charges) == len(set(charges))  # no order charged twice


def test_sigterm_then_sigkill_leaves_no_process_behind(make_run):
    """The launcher is told to stop, then killed 10 s later mid-shutdown (what the issue did): every
    process it started (components, their executor workers and task runners, the demo API) is gone."""
    tree = descendants(make_run.proc.pid)
    names = {cmdline(pid) for pid in tree}
    assert any("airflow scheduler" in n for n in names) and any("demo_services" in n for n in names)
    scheduler = make_run.component_pid("scheduler")
    assert len(descendants(scheduler)) >= 2, "the scheduler's own children (LocalExecutor workers)"
    mentioning = processes_mentioning(str(make_run.home))
    os.kill(make_run.proc.pid, signal.SIGTERM)
    time.sleep(10)
    if make_run.proc.poll() is None:
        os.kill(make_run.proc.pid, signal.SIGKILL)
    make_run.proc.wait(timeout=10)
    deadline = time.monotonic() + 45
    while True:
        left = {pid for pid in tree | mentioning | processes_mentioning(str(make_run.home)) if alive(pid)}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not left, {pid: cmdline(pid) for pid in left}
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{make_run.base_url}/api/v2/monitor/health", timeout=5)


def test_sigkill_alone_leaves_no_process_behind(tmp_path):
    """SIGKILL with no warning: the components get SIGTERM from the kernel (PDEATHSIG) and the
    watchdog kills whatever is left."""
    run = MakeRun(tmp_path)
    try:
        run.wait_started()
        tree = descendants(run.proc.pid)
        mentioning = processes_mentioning(str(run.home))
        assert any("airflow scheduler" in cmdline(p) for p in tree)
        os.kill(run.proc.pid, signal.SIGKILL)
        run.proc.wait(timeout=10)
        deadline = time.monotonic() + 45
        while True:
            left = {pid for pid in tree | mentioning | processes_mentioning(str(run.home)) if alive(pid)}
            if not left or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert not left, {pid: cmdline(pid) for pid in left}
    finally:
        run.kill_all()
