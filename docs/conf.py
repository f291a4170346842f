"""Sphinx configuration: the README's concepts (MyST) and the API reference from the docstrings
(autodoc, reST field lists as Airflow's providers write them). ``make docs`` builds it with warnings
as errors; :func:`check_params` makes a malformed or missing ``:param:`` a warning too."""

from __future__ import annotations

import inspect
import os
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include")]
os.environ.setdefault("AIRFLOW_HOME", str(ROOT / "docs" / "_build" / "airflow-home"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

project = "api-orchestration for Apache Airflow"
release = version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autoclass_content = "class"
autodoc_default_options = {"show-inheritance": False}
# Airflow's and requests' own classes in signatures are not documented here.
nitpicky = False
suppress_warnings = ["myst.xref_missing"]  # README anchors that GitHub resolves and MyST does not

_FIELD = re.compile(r"^\s*:param\s+([^:]+):", re.MULTILINE)


def _documented_callable(what: str, obj: object) -> object | None:
    if what == "class":
        init = obj.__dict__.get("__init__") if isinstance(obj, type) else None
        return init
    if what in ("function", "method", "decorator"):
        return obj
    return None


def check_params(app, what, name, obj, options, lines) -> None:
    """Warn (an error under ``-W``) when a docstring's ``:param x:`` fields do not match the signature:
    a field naming several parameters (``:param a, b:``) or none that exists, or a parameter of a
    docstring that documents parameters left out (a second one folded into another's text)."""
    from sphinx.util import logging

    text = "\n".join(lines)
    fields = [f.split()[-1] for f in _FIELD.findall(text)]
    if not fields:
        return
    target = _documented_callable(what, obj)
    if target is None:
        return
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return
    accepted = {
        p.name
        for p in signature.parameters.values()
        if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    log = logging.getLogger(__name__)
    for raw in _FIELD.findall(text):
        words = raw.split()
        if "," in raw or len(words) > 2 or words[-1] not in accepted | {"kwargs", "args"}:
            log.warning(
                "%s: malformed or unknown ':param %s:' (parameters: %s)",
                name,
                raw,
                ", ".join(sorted(accepted)),
            )
    missing = sorted(accepted - set(fields))
    if missing:
        log.warning("%s: parameters without a ':param:' field: %s", name, ", ".join(missing))


def setup(app):
    app.connect("autodoc-process-docstring", check_params)
