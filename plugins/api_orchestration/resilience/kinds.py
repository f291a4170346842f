"""The closed sets of names the decisions use. StrEnums: the same strings are stored in SQL and Lua."""

from __future__ import annotations

from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerDecisionKind(StrEnum):
    """What the breaker said to one call: ``closed`` and ``trial`` let it out; ``open``, ``busy``
    (half-open, its trials taken) and ``hold`` (calls in flight could trip it) refuse it."""

    CLOSED = "closed"
    TRIAL = "trial"
    OPEN = "open"
    BUSY = "busy"
    HOLD = "hold"


class Refusal(StrEnum):
    """Why an admission was refused. ``defer``: the next limiter slot is further away than the
    caller sleeps; ``full``: the key's ``max_in_flight`` calls are in flight; the others are the
    breaker's (:class:`BreakerDecisionKind`)."""

    DEFER = "defer"
    FULL = "full"
    OPEN = "open"
    BUSY = "busy"
    HOLD = "hold"


GRANTED = "ok"  # Admission.reason of a granted admission


class OutcomeKind(StrEnum):
    """What one attempt came to: a 2xx/3xx, an error status, a timeout, or no response at all."""

    OK = "ok"
    STATUS = "status"
    TIMEOUT = "timeout"
    TRANSPORT = "transport"
