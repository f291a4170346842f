"""Probes of a running ``make run`` (``include/devtools/run_local.py``): its process tree, and a burst
of quick triggers counted by outcome. Used by ``test_make_run_reliability.py``; also runnable by hand
against a running ``make run``::

    PYTHONPATH=include:tests .venv/bin/python tests/e2e/make_run_probe.py burst --runs 200 \\
        --base-url http://localhost:8080
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests
from devtools.cluster import AirflowRestClient

PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session) of a live process, None if gone or a zombie."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[3])


def cmdline(pid: int) -> str:
    try:
        return (
            (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        )
    except OSError:
        return ""


def alive(pid: int) -> bool:
    return _stat(pid) is not None


def descendants(root: int) -> set[int]:
    """``root``'s live descendants, plus every process in their sessions (task runners in groups of
    their own, processes reparented to init after their parent died)."""
    table = {int(p.name): st for p in PROC.iterdir() if p.name.isdigit() and (st := _stat(int(p.name)))}
    found, frontier = set(), {root}
    while frontier:
        children = {pid for pid, (ppid, _) in table.items() if ppid in frontier and pid not in found}
        found |= children
        frontier = children
    sessions = {table[pid][1] for pid in found if pid in table} - {table.get(root, (0, -1))[1]}
    found |= {pid for pid, (_, sid) in table.items() if sid in sessions}
    return found


def processes_mentioning(text: str) -> set[int]:
    """Live processes whose environment or command line holds ``text`` (e.g. the run's home)."""
    needle = text.encode()
    hits = set()
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid() or not alive(int(entry.name)):
            continue
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes() or needle in (entry / "cmdline").read_bytes():
                hits.add(int(entry.name))
    return hits


@dataclass
class Burst:
    """What a burst of triggers did."""

    triggered: int = 0
    http_statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    trigger_seconds: float = 0.0
    settle_seconds: float = 0.0
    run_ids: list[str] = field(default_factory=list)

    @property
    def http_500s(self) -> int:
        return sum(n for status, n in self.http_statuses.items() if status >= 500)

    def summary(self) -> str:
        return (
            f"triggered {self.triggered} in {self.trigger_seconds:.1f} s (HTTP {dict(self.http_statuses)}, "
            f"{self.http_500s} HTTP 5xx, {len(self.errors)} connection errors); after "
            f"{self.settle_seconds:.0f} s: completed {self.states['success']}, rolled back "
            f"{self.states['failed']}, unfinished {sum(n for s, n in self.states.items() if s not in ('success', 'failed'))}"
        )


def trigger_burst(
    client: AirflowRestClient, dag_id: str, runs: int, conf_of, prefix: str, workers: int = 1
) -> Burst:
    """Trigger ``runs`` runs back to back (``workers`` at a time); count HTTP answers.

    One at a time by default, like a script or a webhook relay. On the embedded SQLite, concurrent
    mutating REST calls can still wait on each other for the whole busy timeout: Airflow's audit log
    (``action_logging``, an async dependency) writes with a blocking session on the api-server's
    event loop, while another request's thread holds the write lock until its session's teardown,
    which needs that loop. Use PostgreSQL for concurrent API clients."""
    burst = Burst()
    token = client.token()

    def one(i: int) -> tuple[int | None, str]:
        run_id = f"{prefix}{i:04d}"
        body = {"logical_date": None, "dag_run_id": run_id, "conf": conf_of(i)}
        try:
            resp = requests.post(
                f"{client.base_url}/api/v2/dags/{dag_id}/dagRuns",
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=120,
            )
        except requests.RequestException as exc:
            return None, f"{run_id}: {type(exc).__name__}: {exc}"
        return resp.status_code, run_id if resp.ok else f"{run_id}: {resp.status_code} {resp.text[:200]}"

    started = time.monotonic()
    with ThreadPoolExecutor(workers) as pool:
        for status, detail in pool.map(one, range(runs)):
            if status is None:
                burst.errors.append(detail)
                continue
            burst.http_statuses[status] += 1
            if status < 300:
                burst.triggered += 1
                burst.run_ids.append(detail)
            else:
                burst.errors.append(detail)
    burst.trigger_seconds = time.monotonic() - started
    return burst


def settle(client: AirflowRestClient, dag_id: str, burst: Burst, prefix: str, timeout: float) -> None:
    """Wait until every run of the burst is finished (or ``timeout``); count their states."""
    started = time.monotonic()
    while True:
        states: Counter[str] = Counter()
        offset = 0
        while True:
            page = client._json(
                "GET",
                f"/api/v2/dags/{dag_id}/dagRuns",
                params={"limit": 100, "offset": offset, "run_id_pattern": prefix},
            )
            states.update(r["state"] for r in page["dag_runs"] if r["dag_run_id"].startswith(prefix))
            offset += len(page["dag_runs"])
            if not page["dag_runs"] or offset >= page["total_entries"]:
                break
        burst.states = states
        burst.settle_seconds = time.monotonic() - started
        done = states["success"] + states["failed"]
        if done >= burst.triggered or burst.settle_seconds > timeout:
            return
        time.sleep(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["burst"])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--base-url", default="http://localhost:8080")
    parser.add_argument("--dag", default="order_saga")
    parser.add_argument("--settle", type=float, default=1800)
    parser.add_argument("--workers", type=int, default=1, help="concurrent trigger requests")
    args = parser.parse_args()
    client = AirflowRestClient(args.base_url, "admin", "admin")
    client.wait_for_dag(args.dag, timeout=300)
    client.unpause(args.dag)
    prefix = f"burst_{int(time.time())}_"
    burst = trigger_burst(
        client,
        args.dag,
        args.runs,
        lambda i: {"order_id": f"{prefix}{i}", "skus": ["OUT-OF-STOCK"] if i % 4 == 0 else ["SKU-1"]},
        prefix,
        workers=args.workers,
    )
    print(burst.summary(), flush=True)
    settle(client, args.dag, burst, prefix, args.settle)
    print(burst.summary())
    for line in burst.errors[:10]:
        print("  ", line)


if __name__ == "__main__":
    main()
