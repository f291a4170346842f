"""One key, one policy, checked once per task execution on every path.

Every operator (single call, step, poll, saga, bulk, sync) and ``@task.resilient_http`` claims the
keys of the guard it built (:func:`claim_once`): the first claim of a task execution costs one store
round trip for all its keys; later guards of the same execution (another phase, another poll) claim
only keys not yet claimed. The owner is the task (``dag 'd' task 't'``, plus the spec file for a
task built from a YAML spec), so editing a DAG's policy and deploying it takes the key over; another
task with another policy on the key is a :class:`~api_orchestration.errors.PolicyConflictError`
(see ``resilience.policy_claims`` for how long a claim lasts).
"""

from __future__ import annotations

import re
from typing import Any

from api_orchestration.calls.guard import Guard

_SPEC = re.compile(r"Defined by the workflow spec `([^`]+)`")
_DONE = "_api_orchestration_claims"  # the claims this task execution made (on the task instance)


def task_owner(task: Any) -> str:
    """``dag 'd' task 't'`` (and ``(spec path)`` for a task built from a workflow spec)."""
    owner = f"dag {task.dag_id!r} task {task.task_id!r}"
    try:
        doc = getattr(task.dag, "doc_md", None) or ""
    except Exception:  # no DAG attached (a bare operator in a test)
        doc = ""
    found = _SPEC.search(doc)
    return f"{owner} (spec {found.group(1)})" if found else owner


def claim_once(task: Any, guard: Guard) -> None:
    """Claim ``guard``'s keys for ``task`` unless this execution already did (one round trip)."""
    done = task.__dict__.setdefault(_DONE, set())
    guard.claim_policies(task_owner(task), done)
