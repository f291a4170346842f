"""The package's error hierarchy. Every error carries the data that explains it.

::

    ApiOrchestrationError
    ├── ConfigurationError (also ValueError)        bad argument or policy, raised at DAG parse time
    │   └── PolicyConflictError                     one limiter/breaker key used with two policies
    ├── SpecError (also ValueError)                 a YAML workflow spec is invalid: every problem, by field path
    ├── StateBackendError                           shared state store unreachable or broken (fail closed)
    ├── CircuitOpenError                            the breaker for a key is open: the call was not made
    ├── JobError                                    an async job (a poll step) did not succeed: its last status
    │   ├── JobFailedError                          its failure condition held (Airflow does not retry it)
    │   └── JobTimeoutError                         the poll deadline passed while it was still running
    └── HttpCallError                               a call was made (or attempted) and did not succeed
        ├── TransportError                          no HTTP response: connection refused, reset, ...
        │   └── CallTimeoutError                    connect or read timeout (the effect is unknown)
        ├── HttpStatusError                         an HTTP response with an error status
        │   └── PermanentHttpStatusError            4xx (not 408/429): never retried, not even by Airflow
        └── ResponseCheckError                      ``response_check`` returned False
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

if TYPE_CHECKING:
    import requests


class ApiOrchestrationError(Exception):
    """Base class of every error raised by api_orchestration."""


class ConfigurationError(ApiOrchestrationError, ValueError):
    """A parameter has an invalid value. Names the thing, the parameter and the fix."""

    def __init__(self, owner: str, param: str, value: Any, expected: str, *, step: str | None = None) -> None:
        self.owner, self.param, self.value, self.expected, self.step = owner, param, value, expected, step
        super().__init__(f"{owner}: {param} {expected}, got {value!r}")


class PolicyConflictError(ConfigurationError):
    """A limiter or breaker key is used with two different policies (each would decide with its own
    numbers on the shared state). Names the key, both policies and both places."""

    def __init__(
        self, kind: str, key: str, policy: str, owner: str, other_policy: str, other_owner: str
    ) -> None:
        self.kind, self.key, self.other_policy, self.other_owner = kind, key, other_policy, other_owner
        ApiOrchestrationError.__init__(
            self,
            f"{kind} key {key!r} is used with two policies: {other_owner} uses {other_policy}, {owner} asks "
            f"{policy}. One key has one policy: give both the same policy, or this call another key",
        )
        self.owner, self.param, self.value, self.expected, self.step = owner, f"{kind} key", key, "", None


class SpecError(ApiOrchestrationError, ValueError):
    """A workflow spec is invalid. ``problems`` holds ``(field path, message)`` pairs; each message says
    what is wrong and how to fix it. ``str()`` is one line per problem: ``file: path: message``."""

    def __init__(self, source: str, problems: Iterable[tuple[str, str]]) -> None:
        self.source, self.problems = source, list(problems)
        super().__init__(
            "\n".join(
                f"{source}: {path}: {msg}" if path else f"{source}: {msg}" for path, msg in self.problems
            )
        )


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``options``, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class StateBackendError(ApiOrchestrationError):
    """The shared state store failed, so the call was refused rather than let through unguarded.

    ``calls_made`` says what happened before: 0, no request of this call was sent (it had no
    effect); N, N earlier attempts were sent (their effect is unknown) and no further one was."""

    def __init__(self, url: str, operation: str, cause: BaseException | str, calls_made: int = 0) -> None:
        from api_orchestration.redaction import redact_url  # the URL is shown: no password in it

        url = redact_url(url)
        self.url, self.operation, self.cause, self.calls_made = url, operation, cause, calls_made
        what = (
            "No call was made (fail closed)"
            if not calls_made
            else f"{calls_made} earlier attempt(s) of this call were sent (their effect is unknown); "
            "no further attempt was made (fail closed)"
        )
        super().__init__(
            f"state backend {url} failed during {operation}: {cause}. {what}; check that the store is "
            "reachable or change [api_orchestration] state_url."
        )

    @property
    def cause_text(self) -> str:
        """What failed, without the claim about calls (for a failure after a call was made)."""
        return f"state backend {self.url} failed during {self.operation}: {self.cause}"

    def after_calls(self, calls_made: int) -> StateBackendError:
        """The same failure, said of a call that had already sent ``calls_made`` attempts."""
        return StateBackendError(self.url, self.operation, self.cause, calls_made) if calls_made else self


class CircuitOpenError(ApiOrchestrationError):
    """The circuit breaker for ``key`` refused the call. ``reason``: ``open`` (until ``reopen_at``),
    ``busy`` (half-open, its trial calls are taken), ``hold`` (failing, and the calls in flight could
    open it) or ``full`` (the bulkhead's ``max_in_flight`` calls are in flight)."""

    _WHY = {
        "busy": "is half-open and its trial calls are taken",
        "hold": "is holding calls: it is failing and the calls in flight could open it",
        "full": "is full: max_in_flight calls are in flight",
    }

    def __init__(self, key: str, reopen_at: float | None, reason: str = "open") -> None:
        self.key, self.reopen_at, self.reason = key, reopen_at, reason
        why = self._WHY.get(reason, f"is open until unix time {reopen_at or 0:.3f}, then half-open")
        super().__init__(f"circuit {key!r} {why}; the call was not made")


class HttpCallError(ApiOrchestrationError):
    """A call that did not succeed. ``attempts`` counts the attempts made inside the task."""

    def __init__(self, message: str, *, method: str, url: str, attempts: int = 1) -> None:
        self.method, self.url, self.attempts = method, url, attempts
        super().__init__(message)


class TransportError(HttpCallError):
    """No HTTP response was received (connection refused, reset, DNS, TLS...)."""


class CallTimeoutError(TransportError):
    """The call timed out: the server may or may not have acted on it."""


class HttpStatusError(HttpCallError):
    """The server answered with an error status. ``request_id``: the server's id for the request
    (``X-Request-Id``, ...); ``body``: a truncated (about 2 KB), redacted snippet of its body."""

    def __init__(
        self,
        *,
        method: str,
        url: str,
        status: int,
        response: requests.Response | None,
        retry_after: float | None = None,
        attempts: int = 1,
        request_id: str | None = None,
        body: str | None = None,
    ) -> None:
        self.status, self.response, self.retry_after = status, response, retry_after
        self.request_id, self.body = request_id, body
        reason = getattr(response, "reason", "") or ""
        message = f"{method} {url} answered {status} {reason}".rstrip() + f" after {attempts} attempt(s)"
        message += f" (request id {request_id})" if request_id else ""
        super().__init__(
            message + (f": {body}" if body else ""),
            method=method,
            url=url,
            attempts=attempts,
        )


class PermanentHttpStatusError(HttpStatusError, AirflowFailException):
    """A client error (4xx other than 408/429): retrying cannot help, so Airflow does not retry either."""


class ResponseCheckError(HttpCallError):
    """``response_check`` rejected a successful response (Airflow task retries apply, as in HttpOperator)."""


class JobError(ApiOrchestrationError):
    """An async job did not succeed. ``status_url`` (redacted), ``polls`` made in this task try and
    ``status``: the job's last status (the status response's JSON or text, secrets masked)."""

    def __init__(self, message: str, *, status_url: str, polls: int, status: Any = None) -> None:
        self.status_url, self.polls, self.status = status_url, polls, status
        super().__init__(message)


class JobFailedError(JobError, AirflowFailException):
    """The job reported failure (the poll's ``failure`` condition held). An Airflow retry would
    re-submit with the same idempotency key and find the same failed job, so it is not retried."""


class JobTimeoutError(JobError):
    """The poll's deadline passed while the job was still running (Airflow task retries apply: a
    retry re-submits with the same idempotency key, so it polls the same job again)."""
