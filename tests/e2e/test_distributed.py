"""The Docker Compose deployment, natively: CeleryExecutor with two workers, PostgreSQL, Redis.

A fresh PostgreSQL database is the metadata DB and (``db+``) Celery's result backend; Redis is the
broker and the limiter/breaker store, under a key prefix of this run. Two Celery workers run as
separate processes with their own hostnames, beside a real scheduler, dag-processor, triggerer and
api-server, all configured by :mod:`devtools.deployment` (the description docker-compose.yaml is
checked against). Three runs are triggered at once over REST API v2 and checked against the demo
API's own records:

a. a fan-out whose mapped tasks run on both workers keeps the shared rate limit at the server;
b. after a downed service opened the breaker, each half-open round let only ``half_open_calls``
   trial calls reach it, although tasks on both workers were waiting;
c. ``order_saga`` with an out-of-stock SKU compensates: the charge is refunded, the ledger nets to 0;
d. a sync on worker w1 writes to the object-storage sink (the shared ``results_url``), and a task on
   worker w2 (Celery queues named after the workers) reads it back through the XCom manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pendulum
import pytest
import requests
from airflow.sdk import ObjectStoragePath
from conftest import REPO, fresh_postgres_database
from devtools import deployment
from devtools.cluster import LocalAirflow, free_port
from fleet import window_stats

pytestmark = pytest.mark.e2e

TAG = uuid.uuid4().hex[:10]
PREFIX = f"apiorch-dist-{TAG}:"  # every Redis key of this test: broker and limiter/breaker state
FANOUT_PATH = f"/echo/dist-{TAG}"
DOWN_PATH = f"/echo/down-{TAG}"
# 2 calls per 2 s, spaced 1 s apart: slower than the tasks start, so the shared limiter has to hold them.
FANOUT_ITEMS, PERMITS, PER_SECONDS = 10, 2, 2.0
PROBES = 8  # mapped tasks calling the downed service, one call each
BREAKER = {"failure_rate": 0.5, "window_size": 4, "min_calls": 4, "open_seconds": 4.0, "half_open_calls": 2}
ORDER = {"order_id": f"dist-{TAG}", "amount_cents": 1250, "skus": ["OUT-OF-STOCK"], "address": "1 Main St"}
WORKERS, CONCURRENCY = ("w1", "w2"), 3

TEST_DAGS = textwrap.dedent(
    f"""
    # Airflow DAG file of tests/e2e/test_distributed.py
    import pendulum
    from airflow.sdk import DAG

    from api_orchestration import BreakerPolicy, Call, FanOut, RateLimit, ResilientHttpOperator, RetryPolicy, Step, Workflow, build

    START = pendulum.datetime(2026, 1, 1, tz="UTC")
    fanout = build(
        Workflow(
            "dist_fanout",
            conn_id="demo_api",
            retry=RetryPolicy(max_attempts=1),
            steps=(
                Step(
                    "hit",
                    Call("GET", "{FANOUT_PATH}?item={{{{ item }}}}"),
                    fan_out=FanOut(over=list(range({FANOUT_ITEMS})), max_active={FANOUT_ITEMS}),
                    rate_limit=RateLimit(permits={PERMITS}, per_seconds={PER_SECONDS}),
                    key="dist-{TAG}",
                ),
            ),
        ),
        schedule=None,
        start_date=START,
    )

    with DAG("dist_breaker", schedule=None, start_date=START, max_active_tasks={PROBES}):
        ResilientHttpOperator.partial(
            task_id="probe",
            http_conn_id="demo_api",
            breaker=BreakerPolicy(**{BREAKER!r}),
            breaker_key="down-{TAG}",
            on_circuit_open="defer",  # wait in the triggerer until half-open, then try
            retry=RetryPolicy(max_attempts=1),  # one call per task: every call is a task's only one
        ).expand(endpoint=["{DOWN_PATH}?probe=%d" % i for i in range({PROBES})])
    """
)


# d. A sync on w1 writes to the object-storage sink (destination "files": under the shared
#    results_url); a task on w2 reads the parts back through the XCom manifest and verifies them.
HANDOFF_DAG = textwrap.dedent(
    """
    from datetime import timedelta

    from airflow.sdk import DAG, ObjectStoragePath, task

    from api_orchestration.calls.pagination import Pagination
    from api_orchestration.operators.sync import ApiSyncOperator
    from api_orchestration.syncs.sinks.files import read_parts
    from api_orchestration.syncs.stream import Stream

    with DAG("dist_sync_handoff", schedule=None, start_date=START):
        written = ApiSyncOperator(
            task_id="write",
            queue="w1",  # only worker w1 serves this queue
            http_conn_id="demo_api",
            endpoint="/stripe/v1/charges",  # charges never change: the window's records are fixed
            pagination=Pagination("cursor", records="data", cursor_path="data[-1].id", cursor_param="starting_after",
                                  has_more_path="has_more", page_size=100, size_param="limit"),
            stream=Stream("dist_charges", primary_key="id", cursor_field="created", mode="interval",
                          since_param="created[gte]", until_param="created[lt]", param_format="epoch"),
            destination="files",
            manual_window=timedelta(minutes=5),  # a run without a data interval: the last 5 minutes
        )

        @task(queue="w2")
        def read_back(manifest: dict) -> dict:
            import hashlib
            import json

            records = read_parts(manifest["parts"])
            ids = sorted(r["id"] for r in records)
            if len(ids) != manifest["rows"] or len(set(ids)) != len(ids):
                raise ValueError(f"{len(ids)} records ({len(set(ids))} distinct), the manifest says {manifest['rows']}")
            folder = ObjectStoragePath(manifest["parts"][0]).parent
            on_storage = json.loads((folder / "_manifest.json").read_text())
            if (on_storage["checksum"], on_storage["rows"]) != (manifest["checksum"], manifest["rows"]):
                raise ValueError(f"the stored manifest {on_storage} does not match XCom's {manifest}")
            digest = hashlib.sha256(b"".join(ObjectStoragePath(u).read_bytes() for u in manifest["parts"]))
            return {"ids": ids, "created": [r["created"] for r in records], "parts_sha256": digest.hexdigest()}

        read_back(written.output)
    """
)


@dataclass
class Distributed:
    airflow: LocalAirflow
    demo_url: str
    runs: dict[str, str] = field(default_factory=dict)  # dag_id -> run_id
    states: dict[str, str] = field(default_factory=dict)  # dag_id -> final state

    def wait(self, dag_id: str, timeout: float = 240) -> str:
        if dag_id not in self.states:
            client = self.airflow.client()
            self.states[dag_id] = client.wait_for_run(dag_id, self.runs[dag_id], timeout=timeout)
        return self.states[dag_id]

    def task_instances(self, dag_id: str) -> list[dict]:
        return self.airflow.client().task_instances(dag_id, self.runs[dag_id])

    def arrivals(self, path: str) -> list[float]:
        calls = requests.get(
            f"{self.demo_url}/admin/calls", params={"path": path, "arrivals": 1}, timeout=10
        ).json()
        return sorted(calls["arrivals"].get(path, []))


@pytest.fixture(scope="module")
def postgres_db() -> Iterator[str]:
    """A fresh PostgreSQL database for the metadata DB; dropped afterwards."""
    with fresh_postgres_database(f"apiorch_dist_{TAG}_") as name:
        yield name


@pytest.fixture(scope="module")
def redis_keys(redis_available) -> Iterator[str]:
    """The Redis URL; every key under this test's prefix is deleted afterwards."""
    import redis

    yield redis_available
    client = redis.Redis.from_url(redis_available)
    keys = list(client.scan_iter(match=f"{PREFIX}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def distributed(tmp_path_factory, demo_server, postgres_db, redis_keys) -> Iterator[Distributed]:
    """The cluster, with the three runs triggered at once; torn down (processes, keys, DB) after."""
    base = tmp_path_factory.mktemp("distributed")
    dags = base / "dags"
    dags.mkdir()
    shutil.copy(REPO / "dags" / "order_saga.py", dags / "order_saga.py")
    (dags / "distributed_test_dags.py").write_text(TEST_DAGS + HANDOFF_DAG)
    redis_url = urlsplit(redis_keys)
    redis_db = int(redis_url.path.strip("/") or 0)
    site = deployment.Site(
        postgres_host="127.0.0.1",
        postgres_user="postgres",
        postgres_password="",  # the machine's PostgreSQL trusts local connections
        postgres_db=postgres_db,
        redis_host=redis_url.hostname or "127.0.0.1",
        redis_port=redis_url.port or 6379,
        broker_db=redis_db,
        state_db=redis_db,
        state_prefix=f"{PREFIX}state:",
        api_server_url="",  # filled in by LocalAirflow.distributed
        passwords_file="",
        demo_api_host="127.0.0.1",
        demo_api_port=demo_server.port,
        results_url=(base / "shared").as_uri(),  # one machine: a local folder both workers reach
    )
    airflow = LocalAirflow.distributed(
        base / "home",
        free_port(),
        site,
        workers=WORKERS,
        worker_concurrency=CONCURRENCY,
        broker_prefix=f"{PREFIX}celery:",
        extra_env={"AIRFLOW__CORE__DAGS_FOLDER": str(dags)},
        stop_timeout=5,  # throwaway home: no need to wait for graceful exits
    )
    faults = f"{demo_server.url}/admin/faults"
    requests.post(faults, json={"path": DOWN_PATH, "down": True}, timeout=5).raise_for_status()
    try:
        airflow.start()
        print(f"\ndistributed Airflow healthy after {airflow.startup_seconds:.1f} s: {airflow.worker_nodes}")
        cluster = Distributed(airflow, demo_server.url)
        client = airflow.client()
        for dag_id in ("dist_fanout", "dist_breaker", "order_saga", "dist_sync_handoff"):
            client.wait_for_dag(dag_id, timeout=120)
            client.unpause(dag_id)
        cluster.runs["dist_fanout"] = client.trigger("dist_fanout")
        cluster.runs["dist_sync_handoff"] = client.trigger("dist_sync_handoff")
        cluster.runs["dist_breaker"] = client.trigger("dist_breaker")
        cluster.runs["order_saga"] = client.trigger("order_saga", conf=ORDER)
        yield cluster
    finally:
        airflow.stop()
        requests.delete(faults, params={"path": DOWN_PATH}, timeout=5)


def test_cluster_runs_the_shared_deployment_description(distributed):
    """Sanity of the set-up itself: what the compose file is checked against is what runs here."""
    env = distributed.airflow.env
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+" + env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["AIRFLOW__API_ORCHESTRATION__STATE_URL"].endswith(f"?prefix={PREFIX}state:")
    assert sorted(n.split("@")[0] for n in distributed.airflow.worker_nodes) == sorted(WORKERS)
    health = distributed.airflow.health()
    assert health["metadatabase"]["status"] == "healthy"


def test_fanout_runs_on_both_workers_under_one_rate_limit(distributed):
    assert distributed.wait("dist_fanout") == "success"
    tis = [ti for ti in distributed.task_instances("dist_fanout") if ti["task_id"] == "hit_each"]
    assert sorted(ti["map_index"] for ti in tis) == list(range(FANOUT_ITEMS))
    per_worker: dict[str, int] = {}
    for ti in tis:
        per_worker[ti["hostname"]] = per_worker.get(ti["hostname"], 0) + 1
    print(f"\nfan-out tasks per worker: {per_worker}")
    assert set(per_worker) == set(distributed.airflow.worker_nodes), per_worker  # both, and only them

    # Tasks on both workers had to wait for the limiter: the calls of the other worker's tasks counted.
    client = distributed.airflow.client()
    waited_on = [
        ti["hostname"]
        for ti in tis
        if re.search(
            r"waited [0-9.]+ s for rate limit",
            client.log("dist_fanout", distributed.runs["dist_fanout"], "hit_each", 1, ti["map_index"]),
        )
    ]
    print(f"calls that waited for the shared limiter: {len(waited_on)} of {FANOUT_ITEMS}")
    assert set(waited_on) == set(per_worker) and len(waited_on) >= FANOUT_ITEMS // 2, waited_on

    arrivals = distributed.arrivals(FANOUT_PATH)
    assert len(arrivals) == FANOUT_ITEMS
    stats = window_stats(arrivals, PERMITS, PER_SECONDS, arrivals[0], arrivals[-1] - arrivals[0])
    span = arrivals[-1] - arrivals[0]
    print(f"fan-out: {len(arrivals)} calls in {span:.2f} s, max {stats.max_in_window} in any {PER_SECONDS} s")
    assert stats.max_in_window <= PERMITS, arrivals
    # The limit did the spacing: FANOUT_ITEMS calls at PERMITS per window need this long.
    assert span >= (FANOUT_ITEMS / PERMITS - 1) * PER_SECONDS * 0.95, arrivals


def test_breaker_lets_only_half_open_trials_reach_a_downed_service(distributed):
    assert distributed.wait("dist_breaker") == "failed"  # every probe got its 503
    tis = distributed.task_instances("dist_breaker")
    assert sorted((ti["map_index"], ti["state"]) for ti in tis) == [(i, "failed") for i in range(PROBES)]
    hosts = {ti["hostname"] for ti in tis}
    arrivals = distributed.arrivals(DOWN_PATH)
    min_calls, half_open, open_s = BREAKER["min_calls"], BREAKER["half_open_calls"], BREAKER["open_seconds"]
    trips, trials = arrivals[:min_calls], arrivals[min_calls:]
    rounds = _clusters(trials, gap=open_s * 0.9)
    print(
        f"\nbreaker: {len(trips)} calls tripped it, then half-open rounds of {[len(r) for r in rounds]} "
        f"trial calls (half_open_calls={half_open}) from workers {sorted(hosts)}"
    )
    assert len(arrivals) == PROBES  # one call per task: none sent twice, none lost
    assert trials and trials[0] - trips[-1] >= open_s * 0.95, arrivals  # open: nothing got through
    # A half-open round starts open_seconds after the previous one failed, so any window shorter
    # than that holds one round at most: never more than half_open_calls trials in it.
    busiest = window_stats(trials, half_open, open_s * 0.95, trials[0], 0).max_in_window
    assert busiest <= half_open, arrivals


def test_order_saga_compensates_on_celery_workers(distributed):
    assert distributed.wait("order_saga") == "failed"
    states = {ti["task_id"]: ti["state"] for ti in distributed.task_instances("order_saga")}
    assert states["charge_payment"] == "success" and states["reserve_inventory"] == "failed", states
    assert states["create_shipment"] == "upstream_failed" and states["undo_charge_payment"] == "success"
    assert states["saga_outcome"] == "failed", states
    ledger = requests.get(
        f"{distributed.demo_url}/admin/ledger", params={"order_id": ORDER["order_id"]}, timeout=10
    ).json()
    assert [e["type"] for e in ledger["entries"]] == ["charge", "refund"], json.dumps(ledger)
    assert ledger["orders"][ORDER["order_id"]]["net_cents"] == 0


def _clusters(times: list[float], gap: float) -> list[list[float]]:
    """Split sorted ``times`` wherever two neighbours are at least ``gap`` apart."""
    groups: list[list[float]] = []
    for t in times:
        if groups and t - groups[-1][-1] < gap:
            groups[-1].append(t)
        else:
            groups.append([t])
    return groups


def test_a_sync_written_on_one_worker_is_read_back_on_the_other(distributed):
    assert distributed.wait("dist_sync_handoff") == "success"
    tis = {ti["task_id"]: ti for ti in distributed.task_instances("dist_sync_handoff")}
    hosts = {task: tis[task]["hostname"] for task in ("write", "read_back")}
    print(f"\nsync handoff: written on {hosts['write']}, read back on {hosts['read_back']}")
    assert hosts["write"].startswith("w1@") and hosts["read_back"].startswith("w2@"), hosts
    assert hosts["write"] != hosts["read_back"]
    client = distributed.airflow.client()
    run_id = distributed.runs["dist_sync_handoff"]
    manifest = client.xcom("dist_sync_handoff", run_id, "write")
    read = client.xcom("dist_sync_handoff", run_id, "read_back")
    shared = distributed.airflow.env["AIRFLOW__API_ORCHESTRATION__RESULTS_URL"]
    assert manifest["uri"].startswith(shared.rstrip("/") + "/syncs/dist_charges"), manifest["uri"]
    assert manifest["parts"] and all(p.startswith(manifest["uri"]) for p in manifest["parts"])
    # The demo API's own records of the window (charges never change) are exactly what was read back.
    start, end = (int(pendulum.parse(manifest["window"][k]).timestamp()) for k in ("start", "end"))
    expected = _charges_between(distributed.demo_url, start, end)
    assert manifest["rows"] == len(expected) > 0
    assert read["ids"] == sorted(expected) and all(start <= c < end for c in read["created"])
    parts = b"".join(ObjectStoragePath(u).read_bytes() for u in manifest["parts"])
    assert read["parts_sha256"] == hashlib.sha256(parts).hexdigest()  # the bytes w1 wrote


def _charges_between(demo_url: str, start: int, end: int) -> list[str]:
    """Ground truth, read by hand: the ids of the charges created in ``[start, end)``."""
    ids: list[str] = []
    params: dict = {"limit": 100, "created[gte]": start, "created[lt]": end}
    while True:
        page = requests.get(f"{demo_url}/stripe/v1/charges", params=params, timeout=10).json()
        ids += [c["id"] for c in page["data"]]
        if not page["has_more"]:
            return ids
        params["starting_after"] = page["data"][-1]["id"]
