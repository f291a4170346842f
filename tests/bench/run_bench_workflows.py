"""``make bench`` (part 2): orchestration modes against their plain alternatives.

1. fan-out of 50 endpoints x 100 ms: bulk mode (both engines, through the shared limiter and
   breaker) vs plain ``asyncio.gather`` (aiohttp) vs 50 mapped ResilientHttpOperator tasks on a real
   Airflow;
2. bulk sync of N POSTs under a 2,000/s limit vs its floor (N / 2000 s), per engine and state
   backend, with limit breaches measured at the server;
3. ``order_saga`` trigger-to-finish vs a stock ``HttpOperator`` DAG of the same shape, on a real Airflow;
4. DAG-file parse cost of the YAML specs (read, validate, build) vs their Python twins (run the DAG file).

The demo API runs in a process of its own, as a real API would: in this process it would share the
interpreter (one core, the GIL) with the engine being measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import runpy
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for sub in ("plugins", "include", "tests"):
    sys.path.insert(0, str(REPO / sub))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="apiorch_bench_"))

import aiohttp  # noqa: E402
import requests  # noqa: E402
from devtools.cluster import LocalAirflow, free_port  # noqa: E402
from fleet import window_stats  # noqa: E402
from run_bench import table  # noqa: E402

from api_orchestration import BreakerPolicy, Guard, RateLimit, RetryPolicy  # noqa: E402
from api_orchestration.calls.engines import call_concurrently, call_concurrently_async  # noqa: E402
from api_orchestration.state import backend_for_url  # noqa: E402

REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
QUIET = logging.getLogger("bench.quiet")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False

MAPPED_DAG = textwrap.dedent(
    """
    # an Airflow DAG file for the benchmark: 50 mapped calls of 100 ms
    from airflow.sdk import DAG
    from api_orchestration import ResilientHttpOperator
    with DAG("bench_fanout_mapped", schedule=None, max_active_tasks=8):
        ResilientHttpOperator.partial(task_id="call", http_conn_id="demo_api", max_active_tis_per_dagrun=8).expand(
            endpoint=[f"/delay/0.1?i={i}" for i in range(50)]
        )
    """
)
STOCK_ORDER_DAG = textwrap.dedent(
    """
    # an Airflow DAG file: order_saga's shape with stock HttpOperator (no limiter, breaker or saga logic)
    import json
    from airflow.sdk import DAG, TriggerRule
    from airflow.providers.http.operators.http import HttpOperator
    from airflow.providers.standard.operators.empty import EmptyOperator
    def op(task_id, path, body, **kw):
        return HttpOperator(task_id=task_id, http_conn_id="demo_api", method="POST", endpoint=path,
                            data=json.dumps(body), headers={"Content-Type": "application/json"}, **kw)
    with DAG("bench_order_stock", schedule=None):
        o = "{{ run_id }}"
        charge = op("charge_payment", "/payments/charges", {"order_id": o, "amount_cents": 1250})
        reserve = op("reserve_inventory", "/inventory/reservations", {"order_id": o, "skus": ["SKU-1"]})
        ship = op("create_shipment", "/shipping/shipments", {"order_id": o, "address": "x"})
        undo = [op(f"undo_{t}", p, {"order_id": o}, trigger_rule=TriggerRule.ONE_FAILED) for t, p in
                (("create_shipment", "/shipping/cancellations"), ("reserve_inventory", "/inventory/releases"),
                 ("charge_payment", "/payments/refunds"))]
        outcome = EmptyOperator(task_id="saga_outcome")
        charge >> reserve >> ship >> undo[0] >> undo[1] >> undo[2]
        [charge, reserve, ship] >> outcome
    """
)


class DemoProcess:
    """``python -m demo_services`` on a free port, in its own process; the call log over HTTP."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("plugins", "include"))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "demo_services", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{self.url}/health", timeout=1).raise_for_status()
                return
            except requests.RequestException:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("the demo API did not start") from None
                time.sleep(0.1)

    def calls(self, path: str, arrivals: bool = False) -> dict[str, Any]:
        query = {"path": path, "arrivals": "1" if arrivals else ""}
        return requests.get(f"{self.url}/admin/calls", params=query, timeout=30).json()

    def reset(self) -> None:
        requests.post(f"{self.url}/admin/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def engine_rows(engine: str, count: int, request: Any, guard: Guard, concurrency: int, stats: dict) -> list:
    common = {"guard": guard, "concurrency": concurrency, "log": QUIET}
    if engine == "async":
        return list(call_concurrently_async(count, request, stats=stats, **common))
    return list(call_concurrently(count, request, sessions=requests.Session, **common))


FANOUT_LIMIT = RateLimit(100, 1.0, burst=100)  # an API allowing 100 calls/s, in bursts


def bulk_fanout(
    demo: DemoProcess,
    url: str,
    engine: str,
    calls: int = 50,
    delay: float = 0.1,
    limit: RateLimit = FANOUT_LIMIT,
) -> float:
    """``calls`` calls of ``delay`` s, all in flight, through the default ``BreakerPolicy()`` and ``limit``."""
    guard = Guard(
        backend=backend_for_url(url), limit_key=f"fanout-{uuid.uuid4().hex[:6]}", rate_limit=limit,
        breaker_key="fanout", breaker=BreakerPolicy(), retry=RetryPolicy(), max_sleep=3600,
    )  # fmt: skip
    started = time.perf_counter()
    rows = engine_rows(
        engine, calls, lambda i: {"method": "GET", "url": f"{demo.url}/delay/{delay}?i={i}"}, guard, calls, {}
    )
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]][:3]
    return time.perf_counter() - started


def gather_fanout(demo: DemoProcess, calls: int = 50, delay: float = 0.1) -> float:
    async def main() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=calls)) as session:

            async def one(i: int) -> None:
                async with session.get(f"{demo.url}/delay/{delay}?i={i}") as resp:
                    await resp.read()

            await asyncio.gather(*(one(i) for i in range(calls)))

    started = time.perf_counter()
    asyncio.run(main())
    return time.perf_counter() - started


def bulk_sync(demo: DemoProcess, url: str, n: int, engine: str, concurrency: int) -> list:
    demo.reset()
    guard = Guard(
        backend=backend_for_url(url),
        limit_key=f"bulk-sync-{engine}",
        rate_limit=RateLimit(2000, 1.0, burst=100),
        retry=RetryPolicy(),
        max_sleep=3600,
    )

    def request(i: int) -> dict[str, Any]:
        return {
            "method": "POST",
            "url": f"{demo.url}/echo/bulk-sync",
            "json": {"i": i},
            "idempotency_key": f"bulk-{i}",
        }

    stats: dict[str, int] = {}
    started = time.time()
    rows = engine_rows(engine, n, request, guard, concurrency, stats)
    wall = time.time() - started
    arrivals = demo.calls(path="/echo/bulk-sync", arrivals=True)["arrivals"]["/echo/bulk-sync"]
    window = window_stats(arrivals, 2000, 1.0, started, wall)
    floor = n / 2000
    ops = stats.get("store_operations", n)  # the threads engine: one per call (plus retries)
    return [engine, url.split(":")[0], n, concurrency, f"{wall:.2f}", f"{floor:.2f}", f"{wall / floor:.2f}", "<= 1.15" if engine == "async" else "",
            f"{window.max_in_window} (limit 2000)", ops, stats.get("new_slots", "-"),
            sum(not r["ok"] for r in rows)]  # fmt: skip


def airflow_runs(demo: DemoProcess, runs: int) -> tuple[list[float], dict[str, list[float]]]:
    base = Path(tempfile.mkdtemp(prefix="apiorch_bench_af_"))
    dags = base / "dags"
    dags.mkdir()
    shutil.copy(REPO / "dags" / "order_saga.py", dags)
    (dags / "bench_fanout_mapped.py").write_text(MAPPED_DAG)
    (dags / "bench_order_stock.py").write_text(STOCK_ORDER_DAG)
    extra = {
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW_CONN_DEMO_API": json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": demo.port}),
        "AIRFLOW__API_ORCHESTRATION__STATE_URL": f"sqlite:///{base}/state.db",
        "AIRFLOW__CORE__PARALLELISM": "8",  # 2 cores: 32 task processes at once starve the api-server
    }
    durations: dict[str, list[float]] = {"order_saga": [], "bench_order_stock": []}
    mapped: list[float] = []
    with LocalAirflow(base / "home", free_port(), extra_env=extra) as af:
        client = af.client()
        for dag_id in ("bench_fanout_mapped", "order_saga", "bench_order_stock"):
            client.wait_for_dag(dag_id, timeout=180)
            client.unpause(dag_id)

        def timed(dag_id: str, conf: dict | None = None) -> float:
            t0 = time.monotonic()
            run_id = client.trigger(dag_id, conf=conf)
            state = client.wait_for_run(dag_id, run_id, timeout=600, poll=0.2)
            assert state == "success", (dag_id, state)
            return time.monotonic() - t0

        for i in range(runs):
            mapped.append(timed("bench_fanout_mapped"))
            durations["order_saga"].append(
                timed(
                    "order_saga",
                    {
                        "order_id": f"bench-{uuid.uuid4().hex[:8]}",
                        "amount_cents": 1250,
                        "skus": ["SKU-1"],
                        "address": "x",
                    },
                )
            )
            durations["bench_order_stock"].append(timed("bench_order_stock"))
            print(f"  airflow round {i + 1}/{runs} done", flush=True)
    shutil.rmtree(base, ignore_errors=True)
    return mapped, durations


def spec_parse_rows(repeats: int) -> list[list[str]]:
    """Median milliseconds to turn each shipped spec into a DAG vs to run its Python twin's file
    (what the DAG processor does for each; imports already warm)."""
    from api_orchestration.specs.loader import load_file

    rows = []
    for name in ("order_saga", "user_enrichment"):
        spec, twin = REPO / "include" / "workflows" / f"{name}_spec.yaml", REPO / "dags" / f"{name}.py"
        times: dict[str, list[float]] = {"spec": [], "twin": []}
        for _ in range(repeats):
            for kind, load, arg in (("spec", load_file, spec), ("twin", runpy.run_path, str(twin))):
                started = time.perf_counter()
                load(arg)
                times[kind].append((time.perf_counter() - started) * 1000)
        yaml_ms, py_ms = statistics.median(times["spec"]), statistics.median(times["twin"])
        rows.append([name, f"{py_ms:.1f}", f"{yaml_ms:.1f}", f"{yaml_ms / py_ms:.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, 2,000 bulk POSTs")
    parser.add_argument("--no-airflow", action="store_true", help="skip the parts that start a real Airflow")
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    urls = {
        "sqlite": f"sqlite:///{tempfile.mkdtemp()}/wf.db",
        "redis": f"{REDIS}?prefix=apiorch-benchwf-{uuid.uuid4().hex[:8]}:",
    }
    table(
        "Workflow specs: DAG-file parse, median ms (read + validate + build vs running the Python twin)",
        ["workflow", "Python twin ms", "YAML spec ms", "ratio"],
        spec_parse_rows(20 if args.quick else 100),
    )
    demo = DemoProcess()
    try:
        gather = min(gather_fanout(demo) for _ in range(repeats))
        rows = [["asyncio.gather (aiohttp)", f"{gather:.3f}", "1.00", ""]]
        for engine, what in (("async", "50 in flight"), ("threads", "50 threads")):
            for name, url in urls.items():
                s = min(bulk_fanout(demo, url, engine) for _ in range(repeats))
                goal = "<= 1.20" if engine == "async" else ""
                rows.append(
                    [f"bulk mode, {engine} engine ({name}, {what})", f"{s:.3f}", f"{s / gather:.2f}", goal]
                )
        table(
            f"Fan-out: 50 endpoints x 100 ms, BreakerPolicy() and RateLimit(100/s, burst 100) on the key, "
            f"wall seconds (best of {repeats})",
            ["path", "seconds", "ratio to gather", "goal"],
            rows,
        )
        gather_1s = min(gather_fanout(demo, 200, 1.0) for _ in range(2))
        rows = [["asyncio.gather (aiohttp)", f"{gather_1s:.3f}", "1.00"]]
        for name, url in urls.items():
            s = min(
                bulk_fanout(demo, url, "async", 200, 1.0, RateLimit(1000, 1.0, burst=200)) for _ in range(2)
            )
            rows.append(
                [f"bulk mode, async engine ({name}, 200 in flight)", f"{s:.3f}", f"{s / gather_1s:.2f}"]
            )
        table(
            "200 calls in flight against a 1 s endpoint, BreakerPolicy() and RateLimit(1000/s, burst 200), best of 2",
            ["path", "seconds", "ratio to gather"],
            rows,
        )

        n = 2000 if args.quick else 10000
        table(
            f"Bulk sync: {n} POSTs under RateLimit(2000/s, burst 100), measured at the server",
            [
                "engine",
                "backend",
                "calls",
                "concurrency",
                "wall s",
                "floor s",
                "ratio",
                "goal",
                "max in any 1 s window",
                "store ops",
                "new slots",
                "failed",
            ],
            [
                bulk_sync(demo, url, n, engine, concurrency)
                for engine, concurrency in (("async", 32), ("threads", 64))
                for url in urls.values()
            ],
        )
        if not args.no_airflow:
            mapped, sagas = airflow_runs(demo, 1 if args.quick else 2)
            m = statistics.median(mapped)
            table(
                "Fan-out on a real Airflow (LocalExecutor, parallelism 8), trigger to finish",
                ["path", "seconds", "ratio to gather"],
                [[f"50 mapped tasks (median of {len(mapped)})", f"{m:.2f}", f"{m / gather:.1f}"]],
            )
            ours, stock = (
                statistics.median(sagas["order_saga"]),
                statistics.median(sagas["bench_order_stock"]),
            )
            table(
                f"order_saga trigger-to-finish on LocalExecutor (median of {len(sagas['order_saga'])}, happy path)",
                ["DAG", "seconds", "ratio", "goal"],
                [
                    ["stock HttpOperator DAG of the same shape", f"{stock:.2f}", "1.00", ""],
                    ["order_saga", f"{ours:.2f}", f"{ours / stock:.2f}", "<= 1.10"],
                ],
            )
    finally:
        demo.stop()
        for url in urls.values():
            backend_for_url(url).clear()


if __name__ == "__main__":
    main()
