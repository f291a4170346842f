"""Counters and timers for calls, retries, breakers, limiters and compensations.

They go wherever Airflow's own metrics go, as ``[metrics]`` configures them: StatsD
(``statsd_on``), Datadog (``statsd_datadog_enabled``) or OpenTelemetry (``otel_on``), through the
Task SDK's metrics loggers. Airflow's StatsD logger needs the ``statsd`` package
(``apache-airflow[statsd]``); without it, StatsD metrics are sent by a minimal built-in UDP client
honouring ``statsd_host``, ``statsd_port`` and ``statsd_prefix``. With metrics off (the default)
every hook returns at once.

Names: ``api_orchestration.<subject>.<event>.<key>`` (the key is the limiter/breaker key, the
compensated step or the DAG id, with characters other than letters, digits, ``_`` and ``-``
replaced by ``_``), also tagged ``key=<key>`` for backends with tags. Timers are in milliseconds.
The backend's own prefix comes first (StatsD default ``airflow.``).

| name | type | when |
|---|---|---|
| ``call.ok.<key>``, ``call.failed.<key>`` | counter | a call finished (after its retries) |
| ``call.attempt.<key>`` | timer | each HTTP attempt's latency |
| ``call.retry.<key>`` | counter | an attempt is retried (backoff or ``Retry-After``) |
| ``breaker.open.<key>``, ``breaker.closed.<key>`` | counter | a verdict moved the breaker into that state |
| ``breaker.trial.<key>`` | counter | a half-open trial call was let through |
| ``breaker.rejected.<key>`` | counter | a call was refused by an open (or busy half-open) breaker |
| ``limiter.wait.<key>`` | timer | time slept for a limiter slot or a ``Retry-After`` pause |
| ``limiter.deferred.<key>`` | counter | a limiter wait longer than ``max_sleep`` went to the triggerer |
| ``limiter.paused.<key>`` | counter | a 429 ``Retry-After`` paused the key for every worker |
| ``compensation.ok.<step>``, ``compensation.failed.<step>`` | counter | a saga compensation ran |
| ``compensation.duration.<step>`` | timer | how long it took |
| ``saga.rolled_back.<dag_id>``, ``saga.not_fully_undone.<dag_id>`` | counter | a saga's outcome |
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import socket
from typing import Any

logger = logging.getLogger(__name__)
PREFIX = "api_orchestration"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_UNSET: Any = object()
_emitter: Any = _UNSET  # per process: None (metrics off), an Airflow metrics logger or _UdpStatsd


def _reset_after_fork() -> None:
    global _emitter
    _emitter = _UNSET


os.register_at_fork(after_in_child=_reset_after_fork)


class _UdpStatsd:
    """The StatsD wire format over UDP, for when Airflow's StatsD logger cannot load (no ``statsd``)."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        family, _, _, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self.addr, self.prefix = addr, f"{prefix}." if prefix else ""
        self.sock = socket.socket(family, socket.SOCK_DGRAM)

    def _send(self, line: str) -> None:
        with contextlib.suppress(OSError):  # UDP: a missing listener must not matter
            self.sock.sendto(f"{self.prefix}{line}".encode(), self.addr)

    def incr(self, stat: str, count: int = 1, rate: float = 1, *, tags: Any = None) -> None:
        self._send(f"{stat}:{count}|c")

    def timing(self, stat: str, dt: float, *, tags: Any = None) -> None:
        self._send(f"{stat}:{float(dt):.3f}|ms")


def _build() -> Any:
    from airflow.sdk.configuration import conf

    statsd = conf.getboolean("metrics", "statsd_on", fallback=False)
    datadog = conf.getboolean("metrics", "statsd_datadog_enabled", fallback=False)
    if not (statsd or datadog or conf.getboolean("metrics", "otel_on", fallback=False)):
        return None
    if statsd and not datadog and importlib.util.find_spec("statsd") is None:
        return _UdpStatsd(
            conf.get("metrics", "statsd_host", fallback="localhost"),
            conf.getint("metrics", "statsd_port", fallback=8125),
            conf.get("metrics", "statsd_prefix", fallback="airflow"),
        )
    from airflow.sdk.observability.metrics.stats_utils import get_stats_factory

    return get_stats_factory()()


def emitter() -> Any:
    """This process's metrics logger, or None when metrics are off."""
    global _emitter
    if _emitter is _UNSET:
        try:
            _emitter = _build()
        except Exception as exc:  # metrics must never break a call
            logger.warning("api_orchestration metrics disabled: %s", exc)
            _emitter = None
    return _emitter


def _name(what: str, key: str) -> str:
    return f"{PREFIX}.{what}.{_UNSAFE.sub('_', key) or '_'}"


def incr(what: str, key: str, count: int = 1) -> None:
    """Count ``api_orchestration.<what>.<key>``."""
    if (e := emitter()) is None:
        return
    try:
        e.incr(_name(what, key), count, 1, tags={"key": key})
    except Exception as exc:
        logger.debug("metric %s not sent: %s", what, exc)


def timing(what: str, key: str, seconds: float) -> None:
    """Time ``api_orchestration.<what>.<key>`` (sent in milliseconds)."""
    if (e := emitter()) is None:
        return
    try:
        e.timing(_name(what, key), seconds * 1000.0, tags={"key": key})
    except Exception as exc:
        logger.debug("metric %s not sent: %s", what, exc)


# -- one-line hooks for the call path and the saga --------------------------------------------
def attempt(key: str, seconds: float) -> None:
    timing("call.attempt", key, seconds)


def call_done(key: str, ok: bool) -> None:
    incr("call.ok" if ok else "call.failed", key)


def retry(key: str) -> None:
    incr("call.retry", key)


def breaker_transition(key: str, before: str, after: str) -> None:
    if before != after and after in ("open", "closed"):
        incr(f"breaker.{after}", key)


def breaker_trial(key: str) -> None:
    incr("breaker.trial", key)


def breaker_rejected(key: str) -> None:
    incr("breaker.rejected", key)


def limiter_wait(key: str, seconds: float) -> None:
    if seconds > 0.0005:
        timing("limiter.wait", key, seconds)


def limiter_deferred(key: str) -> None:
    incr("limiter.deferred", key)


def limiter_paused(key: str) -> None:
    incr("limiter.paused", key)


def compensation(step: str, ok: bool, seconds: float) -> None:
    incr("compensation.ok" if ok else "compensation.failed", step)
    timing("compensation.duration", step, seconds)


def saga_outcome(dag_id: str, outcome: str) -> None:
    incr(f"saga.{outcome}", dag_id)
