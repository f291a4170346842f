"""What workflow templates may use, and a static check of a template against it.

Step templates render with Airflow's context plus ``results`` (upstream step results, pulled
lazily: ``{{ results.user.id }}``) and, in fan-out, bulk and partitioned sync steps, ``item``. Specs are checked
before any DAG exists: syntax, unknown variables, ``item`` outside a fan-out, and ``results.<step>``
naming a step that does not run before this one; and templates that reach Python internals
(attributes starting with ``_`` such as ``__globals__`` or ``__class__``, ``mro``, frame and code
attributes, the ``attr`` filter with such a name or a computed one) or other template files. At run
time the sandbox (:mod:`api_orchestration.rendering`) refuses them anyway; the check says so early,
naming the file and the field.
"""

from __future__ import annotations

import re
import string
from typing import Any

import jinja2
from airflow.sdk import Context
from jinja2 import meta, nodes
from jinja2.sandbox import (
    UNSAFE_ASYNC_GENERATOR_ATTRIBUTES,
    UNSAFE_COROUTINE_ATTRIBUTES,
    UNSAFE_GENERATOR_ATTRIBUTES,
)

from api_orchestration.errors import did_you_mean
from api_orchestration.operators.templates import SANDBOX, result_refs

# Airflow's task context, plus what workflow steps add.
AIRFLOW_CONTEXT = frozenset(Context.__annotations__)
STEP_VARIABLES = frozenset({"results", "item", "index"})
_JINJA_GLOBALS = frozenset(jinja2.Environment().globals)
# attributes that lead from a value to Python's machinery (besides every ``_``-prefixed one)
INTERNAL_ATTRIBUTES = frozenset(
    {"mro", "func_globals", "f_globals", "f_locals", "f_back", "f_builtins", "f_code", "tb_frame", "tb_next"}
    | UNSAFE_GENERATOR_ATTRIBUTES
    | UNSAFE_COROUTINE_ATTRIBUTES
    | UNSAFE_ASYNC_GENERATOR_ATTRIBUTES
)
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
    problems = internals_problems(tree, text)
    if problems:  # an escape attempt: nothing else about it matters
        return problems
    allowed = AIRFLOW_CONTEXT | STEP_VARIABLES | _JINJA_GLOBALS
    for name in sorted(meta.find_undeclared_variables(tree)):
        if name in ("item", "index") and not has_item:
            problems.append(
                f"template uses {name!r}, which exists only in fan_out, bulk and partitioned sync steps"
            )
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


def _is_internal(name: str) -> bool:
    return name.startswith("_") or name in INTERNAL_ATTRIBUTES


def _format_string_internals(node: nodes.Node) -> list[str]:
    """Internals a ``"{0.__class__}".format(x)`` format string reaches (str.format reads attributes)."""
    if not (isinstance(node, nodes.Const) and isinstance(node.value, str)):
        return []
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(node.value) if f]
    except ValueError:
        return []
    parts = [p for f in fields for p in re.split(r"[.\[\]]", f)]
    return [p for p in parts if _is_internal(p)]


def internals_problems(tree: nodes.Template, text: str = "") -> list[str]:
    """Why a parsed template reaches Python internals or other templates (empty when it does not)."""
    found: list[str] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter, nodes.Name)):
        name: Any = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Name):
            name = node.name
        elif isinstance(node, nodes.Filter) and node.name == "attr":
            arg = node.args[0] if node.args else None
            if not (isinstance(arg, nodes.Const) and isinstance(arg.value, str)):
                found.append("attr(<computed name>)")
            name = getattr(arg, "value", None)
        if isinstance(name, str) and _is_internal(name):
            found.append(name)
        if isinstance(node, nodes.Getattr) and node.attr in ("format", "format_map"):
            found += _format_string_internals(node.node)
    problems = []
    if found:
        names = sorted(dict.fromkeys(found), key=lambda n: (text.find(n) % (len(text) + 1), n))
        problems.append(
            f"template reaches Python internals ({', '.join(names)}); a template may read values "
            "(params, dag_run.conf, results, item, ...) but no attribute starting with '_', no mro or "
            "frame attributes, and no attr filter with such or a computed name"
        )
    if any(tree.find_all((nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends))):
        problems.append(
            "template includes, imports or extends another template; a template must be self-contained"
        )
    return problems


def result_reference_problem(step: str, steps_before: set[str], all_steps: set[str]) -> str | None:
    """Why ``results.<step>`` cannot be read here (``None`` when it can)."""
    if step not in all_steps:
        return f"reads results.{step}, but there is no step {step!r}{did_you_mean(step, all_steps)}"
    if step not in steps_before:
        return f"reads results.{step}, but {step!r} does not run before this step; add it to depends_on"
    return None
