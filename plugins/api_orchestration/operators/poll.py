"""``PollingHttpOperator``: submit an async job, poll its status until done, fetch its result.

Three phases, each a call through the attempt flow (limiter, breaker, retries, deferral):

- ``submit``: the operator's own request (a POST sends the task's idempotency key, so a retried
  task finds the same job); the status URL comes from ``Location`` or ``Poll.status`` (JMESPath
  over the response);
- ``poll``: GETs of the status URL until ``Poll.success`` or ``Poll.failure`` holds, ``Retry-After``
  (or ``Poll.interval``) apart; a wait longer than ``max_sleep`` defers to the triggerer, carrying the
  job (status URL, deadline, polls) in the :class:`Resume`; past the deadline the task fails with
  the job's last status;
- ``fetch``: a GET of the URL ``Poll.result`` finds in the final status (without ``result``, the
  final status is the result).
"""

from __future__ import annotations

import json
import time
from typing import Any

import jmespath
from airflow.sdk import Context

from api_orchestration.connections import ResilientHttpHook
from api_orchestration.errors import ConfigurationError, JobError, JobFailedError, JobTimeoutError
from api_orchestration.operators.http import CALL_FAILURES, CallSpec, default_response_filter
from api_orchestration.operators.resume import Resume
from api_orchestration.operators.step import StepOperator
from api_orchestration.policy import Poll
from api_orchestration.redaction import mask_secrets, redact_url
from api_orchestration.resilience.outcome import parse_retry_after

__all__ = ["Poll", "PollingHttpOperator"]
SUBMIT, POLL, FETCH = "submit", "poll", "fetch"
MIN_INTERVAL = 0.1  # a Retry-After of 0 still leaves this long between polls
STATUS_TEXT = 1000  # characters of the last status shown in an error


def shown_status(status: Any) -> str:
    """The job's status for an error or a log line: JSON, secrets masked, at most ``STATUS_TEXT``."""
    text = status if isinstance(status, str) else json.dumps(mask_secrets(status), default=str)
    return text if len(text) <= STATUS_TEXT else text[: STATUS_TEXT - 3] + "..."


class PollingHttpOperator(StepOperator):
    """Submit an async job with this operator's request, poll it until done, fetch its result.

    :param poll: a :class:`~api_orchestration.policy.Poll` (success/failure conditions, where the
        status and result URLs are, interval and deadline).

    Every other argument is :class:`StepOperator`'s (so :class:`ResilientHttpOperator`'s): the
    request, the limiter, breaker and retry policies (they guard every submit, poll and fetch),
    ``max_sleep`` (longer waits between polls defer to the triggerer), ``select`` and
    ``response_filter`` (applied to the result). A fallback runs when a call fails for good, not when
    the job reports failure.
    """

    first_phase = SUBMIT
    ui_color = "#e8fff0"

    def __init__(self, *, poll: Poll, **kwargs: Any) -> None:
        if kwargs.get("cache") is not None:
            raise ConfigurationError(
                f"task {kwargs.get('task_id')!r}", "cache", kwargs["cache"],
                "is not supported on a poll step (a cached status would never change); remove it",
            )  # fmt: skip
        super().__init__(**kwargs)
        if not isinstance(poll, Poll):
            raise ConfigurationError(
                f"task {self.task_id!r}", "poll", poll, "must be a Poll(success=..., failure=..., ...)"
            )
        self.poll = poll
        self._urls: dict[str, str | None] = {}

    # -- the requests of each phase ---------------------------------------------------------------
    def call_spec(self, context: Context, phase: str) -> CallSpec:
        if phase == SUBMIT:
            return super().call_spec(context, "call")
        if phase in (POLL, FETCH):
            endpoint = self._urls.get(phase)
            if not endpoint:
                raise ValueError(f"task {self.task_id!r}: no {phase} URL yet")
            # GETs: no idempotency key; the same limiter and breaker keys as the submit
            return CallSpec(
                endpoint, "GET", self.http_conn_id, rate_limit_key=self.rate_limit_key,
                breaker_key=self.breaker_key,
            )  # fmt: skip
        return super().call_spec(context, phase)  # a step's fallback

    # -- the phases ----------------------------------------------------------------------------------
    def run_phase(self, context: Context, resume: Resume) -> Any:
        if resume.phase not in (SUBMIT, POLL, FETCH):
            return super().run_phase(context, resume)
        self._urls = {POLL: resume.status_url, FETCH: resume.result_url}
        if resume.phase == SUBMIT:
            spec = self.call_spec(context, SUBMIT)
            try:
                response = self._call(spec, resume)
            except CALL_FAILURES as exc:
                return self.on_call_failed(context, SUBMIT, exc)
            status_url = self._endpoint(self._status_url_of(response))
            deadline = time.time() + self.poll.timeout
            self.log.info(
                "submitted: job status at %s; polling until it is done, for at most %g s",
                redact_url(status_url), self.poll.timeout,
            )  # fmt: skip
            resume = Resume(POLL, 1, status_url=status_url, deadline=deadline)
            self._urls[POLL] = status_url
        if resume.phase == POLL:
            return self._poll(context, resume)
        return self._fetch(context, resume)

    def _poll(self, context: Context, resume: Resume) -> Any:
        assert resume.status_url is not None and resume.deadline is not None
        url, deadline, polls, attempt = resume.status_url, resume.deadline, resume.polls, resume.attempt
        success = jmespath.compile(self.poll.success)
        failure = jmespath.compile(self.poll.failure) if self.poll.failure else None
        while True:
            spec = self.call_spec(context, POLL)
            try:
                response = self._call(spec, Resume(POLL, attempt, url, deadline, polls))
            except CALL_FAILURES as exc:
                return self.on_call_failed(context, POLL, exc)
            polls, attempt = polls + 1, 1
            status = default_response_filter(response)
            shown = redact_url(url)
            if success.search(status):
                self.log.info("poll %d of %s: the job succeeded", polls, shown)
                return self._succeeded(context, spec, response, status, url, polls)
            if failure is not None and failure.search(status):
                raise JobFailedError(
                    f"job at {shown} failed (poll {polls}; failure condition {self.poll.failure!r} holds): "
                    f"{shown_status(status)}",
                    status_url=shown, polls=polls, status=mask_secrets(status),
                )  # fmt: skip
            now = time.time()
            if now >= deadline:
                raise JobTimeoutError(
                    f"job at {shown} not done {self.poll.timeout:g} s after its submit ({polls} polls in "
                    f"this try); last status: {shown_status(status)}",
                    status_url=shown, polls=polls, status=mask_secrets(status),
                )  # fmt: skip
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            wait, why = (
                (retry_after, "Retry-After") if retry_after is not None else (self.poll.interval, "interval")
            )
            wait = min(max(wait, MIN_INTERVAL), deadline - now)
            self.log.info("poll %d of %s: not done yet; next poll in %.2f s (%s)", polls, shown, wait, why)
            if wait > self.max_sleep:
                self.log.info("deferring %.2f s to the triggerer: polling %s (%s)", wait, shown, why)
                self.defer_resume(wait, Resume(POLL, 1, url, deadline, polls))
            time.sleep(wait)

    def _succeeded(
        self, context: Context, spec: CallSpec, response: Any, status: Any, url: str, polls: int
    ) -> Any:
        if self.poll.result is None:  # the final status is the result
            return self.on_call_succeeded(context, POLL, spec, response)
        found = jmespath.search(self.poll.result, status)
        if not isinstance(found, str) or not found:
            raise JobError(
                f"job at {redact_url(url)} succeeded, but Poll.result {self.poll.result!r} found no URL "
                f"in its status: {shown_status(status)}",
                status_url=redact_url(url), polls=polls, status=mask_secrets(status),
            )  # fmt: skip
        result_url = self._endpoint(found)
        self._urls[FETCH] = result_url
        return self._fetch(context, Resume(FETCH, 1, url, None, polls, result_url))

    def _fetch(self, context: Context, resume: Resume) -> Any:
        spec = self.call_spec(context, FETCH)
        try:
            response = self._call(spec, resume)
        except CALL_FAILURES as exc:
            return self.on_call_failed(context, FETCH, exc)
        return self.on_call_succeeded(context, FETCH, spec, response)

    # -- URLs --------------------------------------------------------------------------------------------
    def _status_url_of(self, response: Any) -> str:
        if self.poll.status is None:
            location = response.headers.get("Location")
            if not location:
                raise JobError(
                    f"the submit answered {response.status_code} without a Location header; set "
                    "Poll(status=...) to a JMESPath finding the status URL in its body",
                    status_url="",
                    polls=0,
                    status=mask_secrets(default_response_filter(response)),
                )
            return str(location)
        found = jmespath.search(self.poll.status, default_response_filter(response))
        if not isinstance(found, str) or not found:
            body = default_response_filter(response)
            raise JobError(
                f"Poll.status {self.poll.status!r} found no status URL in the submit response: "
                f"{shown_status(body)}",
                status_url="",
                polls=0,
                status=mask_secrets(body),
            )
        return found

    def _endpoint(self, url: str) -> str:
        """A URL from the server as an endpoint of the connection. An absolute URL must lie under
        the connection's base URL: the connection's credentials are never sent to another origin."""
        if "://" not in url:
            return url if url.startswith("/") else f"/{url}"
        hook = ResilientHttpHook(method="GET", http_conn_id=self.http_conn_id)
        hook.get_conn()  # sets base_url
        base = (hook.base_url or "").rstrip("/")
        if base and url.startswith(base) and (url == base or url[len(base)] in "/?"):
            return url[len(base) :] or "/"
        raise JobError(
            f"the job's URL {redact_url(url)} is not under connection {self.http_conn_id!r}'s base URL "
            f"{redact_url(base)}; its credentials are not sent to another origin",
            status_url=redact_url(url), polls=0,
        )  # fmt: skip
