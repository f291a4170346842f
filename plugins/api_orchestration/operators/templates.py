"""What operators add to their templates: ``results.<step>``, upstream results pulled lazily."""

from __future__ import annotations

from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

SANDBOX = SandboxedEnvironment()


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
            return result_refs(SANDBOX.parse(value))
        except jinja2.TemplateSyntaxError:
            return set()
    if isinstance(value, dict):
        return set().union(*(referenced_results(v) for v in value.values()))
    if isinstance(value, list | tuple):
        return set().union(*(referenced_results(v) for v in value))
    return set()


def result_refs(tree: nodes.Template) -> set[str]:
    refs = set()
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if isinstance(target, nodes.Name) and target.name == "results":
            if isinstance(node, nodes.Getattr):
                refs.add(node.attr)
            elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
                refs.add(node.arg.value)
    return refs
