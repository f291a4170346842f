"""Process supervision helpers for ``make run``: sessions, a death signal, and a watchdog.

Every long-running process the launcher starts leads its own *session* (``start_new_session=True``).
Airflow's own descendants stay in that session even when they move to a process group of their own
(task runners call ``setpgid``), so "every process of the scheduler" is "every process whose session
id is the scheduler's pid", found in ``/proc``.

Two mechanisms make the children die with the launcher however it is stopped:

- :func:`die_with_parent` (a ``preexec_fn``): ``prctl(PR_SET_PDEATHSIG, SIGTERM)``, so the kernel
  sends the component leader SIGTERM when the launcher dies, even by SIGKILL;
- :class:`Watchdog`: a small process in a session of its own that holds the read end of a pipe from
  the launcher. When the launcher dies the pipe reaches EOF, and the watchdog SIGTERMs the leaders
  of the sessions it was told about, waits, then SIGKILLs every process left in them (LocalExecutor
  workers, task supervisors and runners, log servers, api-server workers).

Linux only (``/proc`` and ``prctl``); elsewhere the helpers do nothing and ``stop()`` still works.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_PROC = Path("/proc")


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """``preexec_fn``: ask the kernel to send ``sig`` to this child when its parent dies."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)


def _session_of(pid: int) -> int | None:
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie is gone already; only its parent can reap it
        return None
    return int(fields[3])


def session_members(sid: int) -> list[int]:
    """Live processes (not zombies) whose session id is ``sid``."""
    if not _PROC.is_dir():
        return []
    found = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and _session_of(int(entry.name)) == sid:
            found.append(int(entry.name))
    return found


def signal_session(sid: int, sig: int) -> int:
    """Send ``sig`` to every process of session ``sid``; return how many were signalled."""
    members = session_members(sid)
    for pid in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    return len(members)


def stop_sessions(sids: Iterable[int], grace: float) -> None:
    """SIGTERM each session's leader, wait up to ``grace`` s for the sessions to empty, SIGKILL the rest.

    SIGTERM goes to the leader only: a component shuts its own children down (a group-wide SIGTERM
    kills idle LocalExecutor workers while one holds the queue lock, and the scheduler then hangs).
    """
    sids = list(sids)
    for sid in sids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(sid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(session_members(s) for s in sids):
        time.sleep(0.2)
    for sid in sids:
        signal_session(sid, signal.SIGKILL)


def drain_session(sid: int, grace: float) -> None:
    """What is left of a session whose leader exited: SIGTERM it all, SIGKILL it after ``grace`` s."""
    if not signal_session(sid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and session_members(sid):
        time.sleep(0.2)
    signal_session(sid, signal.SIGKILL)


class Watchdog:
    """The launcher's side of the watchdog: tell it which sessions to clean up if the launcher dies."""

    def __init__(self, grace: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.processes", "--watchdog", str(os.getpid()), str(grace)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,  # not hit by a Ctrl-C or a kill of the launcher's group
            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_include_dir(), _pythonpath()]))},
        )
        assert self.proc.stdin is not None
        self._pipe: IO[bytes] = self.proc.stdin

    def watch(self, sid: int) -> None:
        self._send(f"watch {sid}")

    def unwatch(self, sid: int) -> None:
        self._send(f"unwatch {sid}")

    def _send(self, line: str) -> None:
        with contextlib.suppress(BrokenPipeError, ValueError):
            self._pipe.write(f"{line}\n".encode())
            self._pipe.flush()

    def close(self) -> None:
        """Clean stop: the watchdog cleans up what is left (normally nothing) and exits."""
        with contextlib.suppress(BrokenPipeError, ValueError):
            self._pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)


def _include_dir() -> str:
    return str(Path(__file__).resolve().parents[1])


def _pythonpath() -> str:
    return os.environ.get("PYTHONPATH", "")


def _watchdog_main(launcher: int, grace: float) -> int:
    """Read ``watch``/``unwatch`` lines until EOF (the launcher exited or died), then clean up."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe's EOF ends the watch
    sids: set[int] = set()
    for raw in sys.stdin.buffer:
        verb, _, arg = raw.decode().strip().partition(" ")
        if verb == "watch" and arg.isdigit():
            sids.add(int(arg))
        elif verb == "unwatch" and arg.isdigit():
            sids.discard(int(arg))
    left = [s for s in sids if session_members(s)]
    if left:
        print(f"watchdog: launcher {launcher} gone; stopping sessions {sorted(left)}", file=sys.stderr)
        stop_sessions(left, grace)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--watchdog":
        sys.exit(_watchdog_main(int(sys.argv[2]), float(sys.argv[3])))
    sys.exit("usage: python -m devtools.processes --watchdog <launcher pid> <grace seconds>")
