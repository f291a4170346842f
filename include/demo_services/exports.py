"""An async export job API: submit, poll a status URL, download the result separately.

``POST /exports {"rows"?: 10, "duration"?: 2.0, "pending"?: 0.2, "fail"?: false, "retry_after"?: 1,
"expires_in"?: 300}`` -> **202** with ``Location: /exports/<id>`` and ``{"id", "status": "pending",
"status_url"}`` (honours ``Idempotency-Key`` like the other writes). The job is ``pending`` for
``pending`` seconds, then ``running`` until ``duration`` seconds after submission, then
``succeeded`` (or ``failed``, with an ``error``, when ``fail`` is true).

``GET /exports/<id>`` -> 200 ``{"id", "status", "progress", ...}``; while pending or running it
carries ``Retry-After: <retry_after>`` (none when ``retry_after`` is null); once succeeded it names ``result_url``. A status URL
expires ``expires_in`` seconds after the job finished: then 410 ``job_expired``; an unknown id is
404 ``job_not_found``. ``GET /exports/<id>/result`` -> 200 ``{"id", "rows": [...]}`` once
succeeded, 409 ``job_not_finished`` (with ``Retry-After``) before, 409 ``job_failed`` after a
failure, 410 once expired. ``GET /admin/exports`` lists the jobs with their poll counts.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from demo_services.common import GET, POST, ServiceError, json_object
from demo_services.idempotency import idempotent
from demo_services.routing import Request, Response, Route
from demo_services.state import DemoState

MAX_ROWS = 10_000


@dataclass
class Job:
    id: str
    rows: int
    submitted: float
    pending: float
    duration: float
    fail: bool
    retry_after: int | None
    expires_in: float
    polls: int = 0
    downloads: int = 0

    def status(self, now: float) -> str:
        elapsed = now - self.submitted
        if elapsed < self.pending:
            return "pending"
        if elapsed < self.duration:
            return "running"
        return "failed" if self.fail else "succeeded"

    def expired(self, now: float) -> bool:
        return now >= self.submitted + self.duration + self.expires_in

    def view(self, now: float) -> dict[str, Any]:
        status = self.status(now)
        progress = (
            1.0
            if status in ("succeeded", "failed")
            else round(max(now - self.submitted, 0) / self.duration, 3)
        )
        body: dict[str, Any] = {
            "id": self.id,
            "status": status,
            "progress": min(progress, 1.0),
            "rows": self.rows,
        }
        if status == "succeeded":
            body["result_url"] = f"/exports/{self.id}/result"
        if status == "failed":
            body["error"] = {"code": "export_failed", "message": "the export job failed while writing rows"}
        body["expires_at"] = self.submitted + self.duration + self.expires_in
        return body


class Jobs:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}

    def reset(self) -> None:
        with self._lock:
            self._jobs.clear()

    def add(self, **fields: Any) -> Job:
        with self._lock:
            job = Job(id=f"exp_{len(self._jobs) + 1:06d}", submitted=time.time(), **fields)
            self._jobs[job.id] = job
            return job

    def get(self, job_id: str, now: float, counter: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                raise ServiceError(404, "job_not_found", f"no export job {job_id!r}")
            setattr(job, counter, getattr(job, counter) + 1)
        if job.expired(now):
            raise ServiceError(410, "job_expired", f"export job {job_id!r} and its status URL expired")
        return job

    def listing(self, now: float) -> list[dict[str, Any]]:
        with self._lock:
            jobs = list(self._jobs.values())
        return [
            {**job.view(now), "polls": job.polls, "downloads": job.downloads, "expired": job.expired(now)}
            for job in jobs
        ]


def _number(
    body: dict[str, Any], name: str, default: float, low: float, high: float, integer: bool = False
) -> Any:
    value = body.get(name, default)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ServiceError(400, "invalid_field", f"{name!r} must be {kind} in {low}..{high}", field=name)
    return value


def submit(request: Request, state: DemoState) -> Response:
    body = json_object(request)
    allowed = {"rows", "duration", "pending", "fail", "retry_after", "expires_in"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ServiceError(
            400,
            "invalid_field",
            f"unknown field {unknown[0]!r}; allowed: {sorted(allowed)}",
            field=unknown[0],
        )
    fail = body.get("fail", False)
    if not isinstance(fail, bool):
        raise ServiceError(400, "invalid_field", "'fail' must be true or false", field="fail")
    duration = float(_number(body, "duration", 2.0, 0.001, 3600))
    job = state.extension(Jobs).add(
        rows=int(_number(body, "rows", 10, 0, MAX_ROWS, integer=True)),
        pending=min(float(_number(body, "pending", min(0.2, duration / 2), 0, 3600)), duration),
        duration=duration,
        fail=fail,
        retry_after=None
        if body.get("retry_after", 1) is None
        else int(_number(body, "retry_after", 1, 0, 3600, integer=True)),
        expires_in=float(_number(body, "expires_in", 300, 0.001, 86400)),
    )
    url = f"/exports/{job.id}"
    return Response(202, {"id": job.id, "status": "pending", "status_url": url}, {"Location": url})


def status(request: Request, state: DemoState) -> Response:
    now = time.time()
    job = state.extension(Jobs).get(request.params["job_id"], now, "polls")
    view = job.view(now)
    running = view["status"] in ("pending", "running")
    headers = {"Retry-After": str(job.retry_after)} if running and job.retry_after is not None else {}
    return Response(200, view, headers)


def result(request: Request, state: DemoState) -> Response:
    now = time.time()
    job = state.extension(Jobs).get(request.params["job_id"], now, "downloads")
    current = job.status(now)
    if current == "failed":
        raise ServiceError(409, "job_failed", f"export job {job.id!r} failed: it has no result")
    if current != "succeeded":
        wait = max(1, math.ceil(job.submitted + job.duration - now))
        detail = f"export job {job.id!r} is {current}; poll its status URL"
        return Response(
            409,
            {"error": "job_not_finished", "detail": detail, "status": current},
            {"Retry-After": str(wait)},
        )
    rows = [{"row": i + 1, "value": f"{job.id}-{i + 1}"} for i in range(job.rows)]
    return Response(200, {"id": job.id, "rows": rows})


def admin_exports(request: Request, state: DemoState) -> Response:
    return Response(200, {"jobs": state.extension(Jobs).listing(time.time())})


ROUTES: tuple[Route, ...] = (
    Route("/exports", idempotent(submit), POST),
    Route("/exports/<job_id>", status, GET),
    Route("/exports/<job_id>/result", result, GET),
)
ADMIN_ROUTES: tuple[Route, ...] = (Route("/admin/exports", admin_exports, GET, record=False),)
