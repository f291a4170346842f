"""Run many loadgen worker processes at once and measure what reached the server."""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.context
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _fork_server() -> multiprocessing.context.BaseContext:
    """Workers are forked from a fork server that imported what they use once (Airflow's import
    alone is ~2.5 s of CPU; 8 fresh interpreters cost ~10 s of a 2-core machine per test). Each
    worker is still its own OS process that opens the state store itself, as a forked Airflow task
    process does."""
    global _CONTEXT
    if _CONTEXT is None:
        for path in ("plugins", "include", "tests"):
            if str(REPO / path) not in sys.path:
                sys.path.insert(0, str(REPO / path))
        import loadgen

        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(list(loadgen.PRELOAD))
    return _CONTEXT


_CONTEXT: multiprocessing.context.BaseContext | None = None


def run_workers(arg_list: list[dict], timeout: float = 120, lead: float = 0.5) -> tuple[float, list[dict]]:
    """Start one OS process per args dict; once all are imported and connected, start them together
    ``lead`` seconds later. Returns the start instant and their JSON results."""
    import loadgen

    ctx = _fork_server()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("plugins", "include", "tests")),
    }
    workers = []
    for args in arg_list:
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(
            target=loadgen.forked, args=(json.loads(json.dumps(args)), env, theirs), daemon=True
        )
        proc.start()
        theirs.close()
        workers.append((proc, ours))
    try:
        for proc, conn in workers:
            if not conn.poll(timeout):
                raise RuntimeError(f"worker {proc.pid} did not get ready within {timeout} s")
            message = conn.recv()
            if message != "ready":
                raise RuntimeError(f"worker did not start: {message!r}")
        start = time.time() + lead
        for _, conn in workers:
            conn.send(start)
        results = []
        deadline = time.monotonic() + timeout
        for proc, conn in workers:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeError(f"worker {proc.pid} did not finish within {timeout} s")
            status, value = conn.recv()
            if status != "ok":
                raise RuntimeError(f"worker failed: {value[-2000:]}")
            results.append(value)
        return start, results
    finally:
        for proc, conn in workers:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()


@dataclass
class WindowStats:
    admitted: int
    max_in_window: int
    utilisation: float


def window_stats(
    arrivals: list[float], permits: int, per_seconds: float, start: float, duration: float
) -> WindowStats:
    """The largest number of arrivals in any half-open window ``[t, t + per_seconds)``; utilisation
    is what arrived within ``[start, start + duration)`` over what the limit allows there."""
    ts = sorted(arrivals)
    best, j = 0, 0
    for i, t in enumerate(ts):
        while j < len(ts) and ts[j] < t + per_seconds:
            j += 1
        best = max(best, j - i)
    ideal = permits * duration / per_seconds
    inside = sum(1 for t in ts if start <= t < start + duration)
    return WindowStats(len(ts), best, inside / ideal if ideal else 0.0)
