"""``make bench`` (part 3): an incremental API sync into PostgreSQL against a hand-written loop.

1. 100,000 GitHub-like issues (1,000 pages of 100, ``Link: rel="next"``) synced by ``ApiSyncOperator``
   (every page one guarded call, rows and checkpoint committed per page, typed columns inferred,
   the record kept as JSONB) vs a hand-written ``requests`` loop over the same pages that inserts
   the same columns with ``executemany`` (psycopg 3, which pipelines it) and commits per page;
2. the peak RSS of the task process for 10,000 and for 100,000 records (pages stream: flat memory);
3. rows per second.

Each contender runs in a process of its own (its peak RSS is its own); the demo API runs in
another, as a real API would, with its clock frozen so every run sees the same records.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for sub in ("plugins", "include", "tests"):
    sys.path.insert(0, str(REPO / sub))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="apiorch_bench_"))
os.environ.setdefault(
    "AIRFLOW__API_ORCHESTRATION__STATE_URL", f"sqlite:///{os.environ['AIRFLOW_HOME']}/state.db"
)

import requests  # noqa: E402
from run_bench import table  # noqa: E402

REPOSITORY = "acme/widgets"
STEP = dt.timedelta(seconds=3.6)  # the demo's spacing of issue creations
PG = {"host": "127.0.0.1", "user": "postgres"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def github_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the two contenders (each in its own process) ------------------------------------------------
def child_sync(base: str, database: str, start: dt.datetime, end: dt.datetime) -> dict:
    """The example DAG's operator, as a worker runs it (no rate limit: measure the overhead)."""
    os.environ["AIRFLOW_CONN_DEMO_API"] = json.dumps(
        {"conn_type": "http", "host": "127.0.0.1", "port": int(base.rsplit(":", 1)[1])}
    )
    os.environ["AIRFLOW_CONN_BENCH_PG"] = json.dumps(
        {"conn_type": "postgres", "host": PG["host"], "login": PG["user"], "port": 5432, "schema": database}
    )
    from api_orchestration.calls.pagination import Pagination
    from api_orchestration.operators.sync import ApiSyncOperator
    from api_orchestration.syncs.stream import Stream

    op = ApiSyncOperator(
        task_id="sync_issues",
        http_conn_id="demo_api",
        endpoint=f"/github/repos/{REPOSITORY}/issues",
        query={"state": "all", "sort": "updated", "direction": "asc"},
        pagination=Pagination("link_header", page_size=100, size_param="per_page"),
        stream=Stream(
            "github_issues",
            primary_key=("number",),
            cursor_field="updated_at",
            since_param="since",
            param_format="iso_z",
            ordered=True,
        ),
        destination="postgres://bench_pg",
    )
    context = {
        "run_id": "bench",
        "data_interval_start": start,
        "data_interval_end": end,
        "outlet_events": None,
    }
    began = time.perf_counter()
    manifest = op.execute(context)  # type: ignore[arg-type]
    return {"seconds": time.perf_counter() - began, "rows": manifest["rows"], "pages": manifest["pages"]}


LOOP_COLUMNS = (
    ("number", "bigint"), ("id", "bigint"), ("title", "text"), ("user", "jsonb"), ("labels", "jsonb"),
    ("state", "text"), ("comments", "bigint"), ("created_at", "text"), ("updated_at", "text"),
    ("closed_at", "text"), ("body", "text"),
)  # fmt: skip


def child_loop(base: str, database: str, start: dt.datetime, end: dt.datetime) -> dict:
    """What a data engineer writes by hand: follow Link, executemany each page, commit."""
    import psycopg

    conn = psycopg.connect(**PG, dbname=database)
    names = [f'"{c}"' for c, _ in LOOP_COLUMNS] + ["_raw"]
    with conn.cursor() as cur:
        cur.execute(
            f"CREATE TABLE github_issues ({', '.join(f'{n} {t}' for n, (_, t) in zip(names, LOOP_COLUMNS, strict=False))}, _raw jsonb, PRIMARY KEY (number))"
        )
    conn.commit()
    updates = ", ".join(f"{n} = excluded.{n}" for n in names[1:])
    sql = f"INSERT INTO github_issues ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))}) ON CONFLICT (number) DO UPDATE SET {updates}"
    jsonb = {"user", "labels"}
    session = requests.Session()
    url = f"{base}/github/repos/{REPOSITORY}/issues"
    params: dict | None = {
        "state": "all",
        "sort": "updated",
        "direction": "asc",
        "per_page": 100,
        "since": github_time(start),
    }
    stop_at = github_time(end)
    began, rows, pages = time.perf_counter(), 0, 0
    while url:
        response = session.get(url, params=params, timeout=60)
        response.raise_for_status()
        issues = response.json()
        kept = [i for i in issues if i["updated_at"] < stop_at]
        with conn.cursor() as cur:
            cur.executemany(
                sql,
                [
                    [json.dumps(i[c]) if c in jsonb else i[c] for c, _ in LOOP_COLUMNS] + [json.dumps(i)]
                    for i in kept
                ],
            )
        conn.commit()
        rows, pages = rows + len(kept), pages + 1
        url, params = response.links.get("next", {}).get("url"), None
        if len(kept) < len(issues):
            break
    conn.close()
    return {"seconds": time.perf_counter() - began, "rows": rows, "pages": pages}


def child_main(args: list[str]) -> None:
    kind, base, database, start, end = args
    run = child_sync if kind == "sync" else child_loop
    result = run(base, database, dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# -- the parent: demo API, databases, runs, tables ------------------------------------------------
def run_child(kind: str, base: str, start: dt.datetime, end: dt.datetime) -> dict:
    import psycopg

    database = f"apiorch_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**PG, dbname="postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
        try:
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    kind,
                    base,
                    database,
                    start.isoformat(),
                    end.isoformat(),
                ],
                check=False,
                capture_output=True,
                text=True,
                env={
                    **os.environ,
                    "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("plugins", "include", "tests")),
                },
            )
            if out.returncode != 0:
                raise RuntimeError(f"the {kind} run failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            with psycopg.connect(**PG, dbname=database) as conn:
                result["table_rows"] = conn.execute("SELECT count(*) FROM github_issues").fetchone()[0]
            return result
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 records instead of 100,000")
    parser.add_argument("--repeat", type=int, default=1, help="runs per contender (the best is shown)")
    args = parser.parse_args()
    total = 20_000 if args.quick else 100_000
    port = free_port()
    demo = subprocess.Popen(
        [sys.executable, "-m", "demo_services", "--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(REPO / "include")},
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                requests.get(f"{base}/users/health", timeout=1).raise_for_status()
                break
            except requests.RequestException:
                time.sleep(0.1)
        first = requests.get(
            f"{base}/github/repos/{REPOSITORY}/issues",
            params={"state": "all", "sort": "created", "direction": "asc", "per_page": 1},
            timeout=10,
        ).json()[0]
        origin = dt.datetime.fromisoformat(first["created_at"].replace("Z", "+00:00"))
        frozen = (
            origin + STEP * 100_000 - dt.timedelta(seconds=1)
        )  # before any update: every record as created
        requests.post(
            f"{base}/admin/datasets",
            json={"now": frozen.isoformat(), "rate_limit_per_hour": 10_000_000},
            timeout=5,
        ).raise_for_status()
        window = (origin, origin + STEP * total)
        speed = []
        results: dict[str, list[dict]] = {"loop": [], "sync": []}
        for _ in range(args.repeat):
            for kind in ("loop", "sync"):
                results[kind].append(run_child(kind, base, *window))
        best = {kind: min(runs, key=lambda r: r["seconds"]) for kind, runs in results.items()}
        for kind, label in (
            ("loop", "hand-written requests loop + executemany"),
            ("sync", "ApiSyncOperator (interval mode)"),
        ):
            r = best[kind]
            ratio = r["seconds"] / best["loop"]["seconds"]
            speed.append(
                [
                    label,
                    f"{r['rows']:,}",
                    r["pages"],
                    f"{r['table_rows']:,}",
                    f"{r['seconds']:.2f} s",
                    f"{r['rows'] / r['seconds']:,.0f}",
                    f"{ratio:.2f}x",
                    f"{r['peak_rss_mb']:.0f} MB",
                ]
            )
        table(
            f"sync of {total:,} records into PostgreSQL (best of {args.repeat})",
            ["contender", "rows", "pages", "table rows", "time", "rows/s", "vs loop", "peak RSS"],
            speed,
        )
        small = run_child("sync", base, origin, origin + STEP * (total // 10))
        big = best["sync"]
        rss = [
            ["ApiSyncOperator", f"{small['rows']:,}", f"{small['peak_rss_mb']:.0f} MB"],
            ["ApiSyncOperator", f"{big['rows']:,}", f"{big['peak_rss_mb']:.0f} MB"],
        ]
        table(
            f"peak RSS of the task process: {big['peak_rss_mb'] - small['peak_rss_mb']:+.1f} MB for 10x the records (goal: within 20 MB)",
            ["task", "records", "peak RSS"],
            rss,
        )
    finally:
        demo.terminate()
        demo.wait(timeout=10)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
    else:
        main()
