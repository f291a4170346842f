"""Run many loadgen worker processes at once and measure what reached the server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_workers(arg_list: list[dict], timeout: float = 120, lead: float = 0.5) -> tuple[float, list[dict]]:
    """Start one OS process per args dict; once all are imported and connected, start them together
    ``lead`` seconds later. Returns the start instant and their JSON results."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("plugins", "include", "tests")),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "loadgen", json.dumps(a)],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for a in arg_list
    ]  # fmt: skip
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(
                f"worker did not start: {line!r} {p.stderr.read()[-2000:] if p.poll() is not None else ''}"
            )
    start = time.time() + lead
    for p in procs:
        p.stdin.write(f"{start}\n")
        p.stdin.flush()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"worker failed ({p.returncode}): {err[-2000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return start, results


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
