"""What workflow templates may use, and a static check of a template against it.

Step templates render with Airflow's context plus ``results`` (upstream step results, pulled
lazily: ``{{ results.user.id }}``) and, in fan-out and bulk steps, ``item``. Specs are checked
before any DAG exists: syntax, unknown variables, ``item`` outside a fan-out, and ``results.<step>``
naming a step that does not run before this one.
"""

from __future__ import annotations

from typing import Any

import jinja2
from airflow.sdk import Context
from jinja2 import meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from api_orchestration.errors import did_you_mean

# Airflow's task context, plus what workflow steps add.
AIRFLOW_CONTEXT = frozenset(Context.__annotations__)
STEP_VARIABLES = frozenset({"results", "item", "index"})
_JINJA_GLOBALS = frozenset(jinja2.Environment().globals)
_ENV = SandboxedEnvironment()
_HINTS = {
    "conf": "the run's conf is dag_run.conf (and conf values override params of the same name)",
    "result": "upstream results are results.<step>",
    "execution_date": "Airflow 3 has no execution_date; use logical_date or data_interval_start",
}


class UpstreamResults:
    """``results`` in step templates: ``results.<step>`` (or ``results["<step>"]``) is that step's
    XCom, pulled on first use. No other attributes, so a step may be called ``items`` or ``get``."""

    __slots__ = ("_cache", "_ti")

    def __init__(self, ti: Any) -> None:
        self._ti, self._cache = ti, {}

    def __getitem__(self, step: str) -> Any:
        if step not in self._cache:
            self._cache[step] = self._ti.xcom_pull(task_ids=step)
        return self._cache[step]

    def __getattr__(self, step: str) -> Any:
        if step.startswith("_"):
            raise AttributeError(step)
        return self[step]

    def __repr__(self) -> str:
        return f"UpstreamResults(pulled={sorted(self._cache)})"


def referenced_results(value: Any) -> set[str]:
    """The steps whose results the templates in ``value`` (a string, or dicts and lists of them)
    read as ``results.<step>`` or ``results["<step>"]``."""
    if isinstance(value, str):
        if "results" not in value:
            return set()
        try:
            return _result_refs(_ENV.parse(value))
        except jinja2.TemplateSyntaxError:
            return set()
    if isinstance(value, dict):
        return set().union(*(referenced_results(v) for v in value.values()))
    if isinstance(value, list | tuple):
        return set().union(*(referenced_results(v) for v in value))
    return set()


def template_problems(text: str, *, steps_before: set[str], all_steps: set[str], has_item: bool) -> list[str]:
    """Why ``text`` would not render in a step (empty when it is fine). ``steps_before``: the
    steps that finish before this one (its transitive upstream)."""
    if "{{" not in text and "{%" not in text:
        return []
    try:
        tree = _ENV.parse(text)
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
    for step in sorted(_result_refs(tree)):
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


def _result_refs(tree: nodes.Template) -> set[str]:
    refs = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if isinstance(target, nodes.Name) and target.name == "results":
            if isinstance(node, nodes.Getattr):
                refs.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                refs.add(node.arg.value)
    return refs
