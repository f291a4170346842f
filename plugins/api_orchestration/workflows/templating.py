"""What workflow templates may use, and a static check of a template against it.

Step templates render with Airflow's context plus ``results`` (upstream step results, pulled
lazily: ``{{ results.user.id }}``) and, in fan-out and bulk steps, ``item``. Specs are checked
before any DAG exists: syntax, unknown variables, ``item`` outside a fan-out, and ``results.<step>``
naming a step that does not run before this one.
"""

from __future__ import annotations

import jinja2
from airflow.sdk import Context
from jinja2 import meta

from api_orchestration.errors import did_you_mean
from api_orchestration.operators.templates import SANDBOX, result_refs

# Airflow's task context, plus what workflow steps add.
AIRFLOW_CONTEXT = frozenset(Context.__annotations__)
STEP_VARIABLES = frozenset({"results", "item", "index"})
_JINJA_GLOBALS = frozenset(jinja2.Environment().globals)
_HINTS = {
    "conf": "the run's conf is dag_run.conf (and conf values override params of the same name)",
    "result": "upstream results are results.<step>",
    "execution_date": "Airflow 3 has no execution_date; use logical_date or data_interval_start",
}


def template_problems(text: str, *, steps_before: set[str], all_steps: set[str], has_item: bool) -> list[str]:
    """Why ``text`` would not render in a step (empty when it is fine). ``steps_before``: the
    steps that finish before this one (its transitive upstream)."""
    if "{{" not in text and "{%" not in text:
        return []
    try:
        tree = SANDBOX.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        return [f"template syntax error: {exc.message} (in {text!r}); Jinja needs balanced {{{{ }}}}"]
    problems = []
    allowed = AIRFLOW_CONTEXT | STEP_VARIABLES | _JINJA_GLOBALS
    for name in sorted(meta.find_undeclared_variables(tree)):
        if name in ("item", "index") and not has_item:
            problems.append(f"template uses {name!r}, which exists only in fan_out and bulk steps")
        elif name not in allowed:
            hint = (
                _HINTS.get(name)
                or did_you_mean(name, allowed).strip(" ()")
                or "see the README's template list"
            )
            problems.append(f"template uses unknown variable {name!r}; {hint}")
    for step in sorted(result_refs(tree)):
        if problem := result_reference_problem(step, steps_before, all_steps):
            problems.append(f"template {problem}")
    return problems


def result_reference_problem(step: str, steps_before: set[str], all_steps: set[str]) -> str | None:
    """Why ``results.<step>`` cannot be read here (``None`` when it can)."""
    if step not in all_steps:
        return f"reads results.{step}, but there is no step {step!r}{did_you_mean(step, all_steps)}"
    if step not in steps_before:
        return f"reads results.{step}, but {step!r} does not run before this step; add it to depends_on"
    return None
