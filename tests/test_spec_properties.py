"""Property tests: random valid specs always build a DAG; random mutations of them, and random text,
always give either a DAG or a clear SpecError (every line naming the file), never a crash."""

from __future__ import annotations

import copy
import os
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from api_orchestration.errors import SpecError
from api_orchestration.specs import load_document, load_text
from api_orchestration.workflows.model import METHODS

SETTINGS = settings(
    max_examples=int(os.environ.get("SPEC_PROPERTY_EXAMPLES", "120")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NAME = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
SAFE_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)


@st.composite
def policies(draw) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if draw(st.booleans()):
        base = draw(st.floats(0, 2, allow_nan=False))
        out["retry"] = {
            "max_attempts": draw(st.integers(1, 6)),
            "base_delay": base,
            "max_delay": base + draw(st.floats(0, 30, allow_nan=False)),
        }
    if draw(st.booleans()):
        permits = draw(st.integers(1, 500))
        out["rate_limit"] = {
            "permits": permits,
            "per_seconds": draw(st.floats(0.01, 3600)),
            "burst": draw(st.integers(1, permits)),
        }
    if draw(st.booleans()):
        window = draw(st.integers(1, 200))
        out["breaker"] = {
            "failure_rate": draw(st.floats(0.01, 1)),
            "window_size": window,
            "min_calls": draw(st.integers(1, window)),
            "half_open_calls": draw(st.integers(1, 5)),
        }
    return out


@st.composite
def calls(draw, refs: list[str], item: bool) -> dict[str, Any]:
    path = "/echo/" + draw(SAFE_TEXT)
    if refs and draw(st.booleans()):
        path += "/{{ results." + draw(st.sampled_from(refs)) + " }}"
    if item:
        path += "/{{ item }}"
    call: dict[str, Any] = {"method": draw(st.sampled_from(METHODS)), "path": path}
    if draw(st.booleans()):
        call["json"] = {"run": "{{ run_id }}", "n": draw(st.integers()), "p": "{{ params.p }}"}
    if draw(st.booleans()):
        call["query"] = {draw(SAFE_TEXT): draw(SAFE_TEXT)}
    return call


@st.composite
def valid_specs(draw) -> dict[str, Any]:
    names = draw(st.lists(NAME, min_size=1, max_size=6, unique=True))
    steps = []
    for i, name in enumerate(names):
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True, max_size=3)) if i else []
        kind = draw(st.sampled_from(["call", "call", "fan_out", "bulk"] + (["merge"] if deps else [])))
        s: dict[str, Any] = {"name": name}
        if deps:
            s["depends_on"] = deps[0] if len(deps) == 1 and draw(st.booleans()) else deps
        if kind == "merge":
            s["merge"] = deps
        else:
            s["call"] = draw(calls(deps, item=kind in ("fan_out", "bulk")))
            s.update(draw(policies()))
        if kind == "fan_out":
            s["fan_out"] = {
                "over": draw(st.lists(st.integers(), max_size=4)),
                "max_active": draw(st.integers(1, 16)),
            }
        elif kind == "bulk":
            s["bulk"] = {"over": "params.items", "concurrency": draw(st.integers(1, 256))}
        elif kind == "call" and draw(st.booleans()):
            s["compensate"] = {
                "method": "POST",
                "path": f"/echo/undo/{name}",
                "json": {"r": "{{ results." + name + " }}"},
            }
        if kind != "merge" and draw(st.booleans()):
            s["when"] = draw(st.sampled_from(["conf.go", "!(params.skip)"] + [f"results.{d}" for d in deps]))
        if kind != "merge" and draw(st.booleans()):
            s["timeout"] = draw(st.floats(0.1, 120))
        steps.append(s)
    doc: dict[str, Any] = {
        "params": {"p": draw(st.integers()), "skip": False, "items": {"default": [1, 2], "type": "array"}},
        "defaults": {"conn_id": draw(SAFE_TEXT), **draw(policies())},
        "steps": steps,
    }
    if draw(st.booleans()):
        doc["schedule"] = draw(st.sampled_from(["@hourly", "@daily", "*/5 * * * *", "0 6 * * 1-5"]))
        doc["start_date"] = "2026-01-01"
    if draw(st.booleans()):
        doc["output"] = draw(st.sampled_from(names))
    return doc


@SETTINGS
@given(valid_specs())
def test_random_valid_specs_always_build_a_dag(doc):
    loaded = load_document(yaml.safe_load(yaml.safe_dump(doc)), "random.yaml", default_dag_id="random")
    assert {s["name"] for s in doc["steps"]} <= set(loaded.dag.task_ids)
    for s in doc["steps"]:
        deps = s.get("depends_on", [])
        first = loaded.dag.get_task(f"{s['name']}_each" if "fan_out" in s else s["name"])
        assert {*([deps] if isinstance(deps, str) else deps), *s.get("merge", [])} <= first.upstream_task_ids


JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.sampled_from(["{{ nope }}", "{{ results.zzz }}", "{{ broken", "results.[", "-1", "61 * * * *", "Bearer abcdefgh"]),
)  # fmt: skip


def _paths(node: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


@st.composite
def mutated_specs(draw) -> dict[str, Any]:
    doc = copy.deepcopy(draw(valid_specs()))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["delete", "junk", "unknown_key", "rename_ref"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "junk":
            parent[path[-1]] = draw(JUNK)
        elif action == "unknown_key" and isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=8))] = draw(JUNK)
        elif action == "rename_ref" and isinstance(parent[path[-1]], str):
            parent[path[-1]] = parent[path[-1]] + draw(SAFE_TEXT)
    return doc


def _loads_or_explains(call) -> None:
    try:
        call()
    except SpecError as exc:
        lines = str(exc).splitlines()
        assert lines and all(line.startswith("random.yaml: ") for line in lines), lines
        assert all(len(line) > len("random.yaml: ") + 5 for line in lines)


@SETTINGS
@given(mutated_specs())
def test_random_mutations_give_a_dag_or_a_clear_error(doc):
    _loads_or_explains(lambda: load_document(doc, "random.yaml", default_dag_id="random"))


@SETTINGS
@given(st.text(max_size=300))
def test_random_text_gives_a_dag_or_a_clear_error(text):
    _loads_or_explains(lambda: load_text(text, "random.yaml", default_dag_id="random"))
