"""Checks a typed spec needs beyond types: templates, JMESPath, secrets, schedule, params, dag id."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import jmespath
from croniter import croniter

from api_orchestration.errors import did_you_mean
from api_orchestration.redaction import CREDENTIAL_NAME
from api_orchestration.specs.model import CallSpec, ScheduleSpec, StepSpec, WorkflowSpec
from api_orchestration.specs.problems import Problem, field_path
from api_orchestration.workflows.templating import result_reference_problem, template_problems

PRESETS = ("@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")
PARAM_KEYS = frozenset(
    [
        "default",
        "type",
        "description",
        "title",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "enum",
        "items",
        "format",
        "minLength",
        "maxLength",
        "pattern",
        "examples",
        "const",
        "minItems",
        "maxItems",
        "uniqueItems",
        "multipleOf",
        "section",
        "values_display",
    ]
)
_SECRET_NAME = CREDENTIAL_NAME
_SECRET_VALUE = re.compile(r"^\s*(bearer|basic|token|digest)\s+\S{6,}", re.IGNORECASE)
_DAG_ID = re.compile(r"^[A-Za-z0-9_.-]{1,250}$")
_CONNECTION_FIX = (
    "credentials must not be written in specs: put them in the Airflow Connection named by conn_id "
    '(login/password, or a header as a top-level key of its extra: {"Authorization": "Bearer ..."}; '
    "providers-http sends every extra key as a header), or template them from an Airflow Variable "
    "({{ var.value.<name> }})"
)


def check(spec: WorkflowSpec, dag_id: str) -> list[Problem]:
    """Every problem found; empty when the spec may be built."""
    problems: list[Problem] = []
    if not _DAG_ID.match(dag_id):
        problems.append(("dag_id", f"must be 1-250 letters, digits, '_', '.' or '-', got {dag_id!r}"))
    problems += _schedule(spec)
    problems += _params(spec.params)
    names = {s.name for s in spec.steps}
    upstream = _transitive_upstream(spec)
    for i, step in enumerate(spec.steps):
        where = f"steps[{i}]"
        before = upstream.get(step.name, set())
        has_item = bool(step.fan_out or step.bulk or (step.sync and step.sync.partitions))
        for field, call in (
            ("call", step.call),
            ("fallback", step.fallback),
            ("compensate", step.compensate),
            ("bulk.items_from", step.bulk.items_from if step.bulk else None),
            (
                "sync.partitions.parent",
                step.sync.partitions.parent if step.sync and step.sync.partitions else None,
            ),
        ):
            if call is None:
                continue
            # a compensation may read the result of the step it undoes (a charge id, say)
            seen = before | {step.name} if field == "compensate" else before
            per_item = has_item and field not in (
                "bulk.items_from",
                "sync.partitions.parent",
            )  # lists: no item yet
            for path, text in _strings(call):
                for msg in template_problems(text, steps_before=seen, all_steps=names, has_item=per_item):
                    problems.append((f"{where}.{field}.{path}", msg))
            problems += [(f"{where}.{field}.{p}", m) for p, m in _secrets(call)]
        for field, expression in _expressions(step):
            problems += [(f"{where}.{field}", m) for m in _jmespath(expression, before, names, field)]
    return problems


def _schedule(spec: WorkflowSpec) -> list[Problem]:
    schedule, field = spec.schedule, "schedule"
    problems = []
    if isinstance(schedule, ScheduleSpec):
        if schedule.assets is not None:
            if schedule.cron is not None or schedule.data_interval:
                problems.append(("schedule", "set either cron (with data_interval) or assets, not both"))
            if not schedule.assets:
                problems.append(("schedule.assets", "must name at least one asset"))
            return problems
        if schedule.cron is None:
            return [("schedule.cron", "is required: five fields such as '0 * * * *', or assets: [names]")]
        schedule, field = schedule.cron, "schedule.cron"
        if schedule in ("@once", "@continuous"):
            return [(field, f"{schedule} has no data intervals; use a cron or a preset such as @hourly")]
    if schedule is not None and schedule not in PRESETS:
        if schedule.startswith("@"):
            hint = did_you_mean(schedule, PRESETS)
            problems.append((field, f"unknown preset {schedule!r}{hint}; presets are {', '.join(PRESETS)}"))
        elif not croniter.is_valid(schedule):
            problems.append(
                (
                    field,
                    f"is not a valid cron expression, got {schedule!r}; use five fields "
                    "(minute hour day month weekday) such as '0 * * * *', or a preset such as @hourly",
                )
            )
    interval_syncs = [
        i
        for i, s in enumerate(spec.steps)
        if s.sync is not None and (s.sync.mode or "interval") == "interval"
    ]
    if interval_syncs and isinstance(spec.schedule, str):
        problems.append(
            (
                "schedule",
                f"gives runs empty data intervals (Airflow 3's CronTriggerTimetable), and steps[{interval_syncs[0]}].sync "
                f"is in interval mode; use schedule: {{cron: {spec.schedule!r}, data_interval: true}}",
            )
        )
    if schedule not in (None, "@once", "@continuous") and spec.start_date is None:
        problems.append(("start_date", "is required when a schedule is set, e.g. start_date: 2026-01-01"))
    return problems


def _params(params: dict[str, Any]) -> list[Problem]:
    from airflow.sdk import Param  # Airflow's own validation of the default against the schema

    problems = []
    for name, value in params.items():
        path = field_path(("params", name))
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            problems.append((path, "param names must be identifiers (letters, digits, _)"))
            continue
        if not isinstance(value, dict):
            continue
        unknown = sorted(set(value) - PARAM_KEYS)
        if "default" not in value:
            problems.append(
                (path, "a mapping must hold 'default' (write {default: {...}} for a mapping value)")
            )
        for key in unknown:
            problems.append(
                (f"{path}.{key}", f"unknown field {key!r}{did_you_mean(key, PARAM_KEYS)}; a param is "
                 "default plus JSON-Schema keywords (type, description, minimum, enum, ...)")
            )  # fmt: skip
        if "default" in value and not unknown:
            try:
                Param(**value).resolve(suppress_exception=False)
            except Exception as exc:  # ParamValidationError, or a bad JSON Schema
                problems.append((path, f"default does not satisfy its schema: {str(exc).splitlines()[0]}"))
    return problems


def _strings(call: CallSpec) -> Iterator[tuple[str, str]]:
    """Every string of a call with its path inside the call."""

    def walk(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[str, str]]:
        if isinstance(value, str):
            yield field_path(path), value
        elif isinstance(value, dict):
            for k, v in value.items():
                yield from walk(v, (*path, k))
        elif isinstance(value, list):
            for i, v in enumerate(value):
                yield from walk(v, (*path, i))

    for field in ("path", "conn_id", "headers", "query", "json", "idempotency_key"):
        yield from walk(getattr(call, "body" if field == "json" else field, None), (field,))


def _secrets(call: CallSpec) -> list[Problem]:
    found: dict[str, str] = {}
    for path, msg in _secret_findings(call):
        found.setdefault(path, msg)
    return list(found.items())


def _secret_findings(call: CallSpec) -> Iterator[Problem]:
    literal = lambda v: isinstance(v, str) and v.strip() and "{{" not in v  # noqa: E731
    for name, value in (call.headers or {}).items():
        if _SECRET_NAME.search(name) and literal(value):
            yield field_path(("headers", name)), f"holds a literal credential; {_CONNECTION_FIX}"
    for field, value in (("query", call.query), ("json", getattr(call, "body", None))):
        for path, key, v in _keyed(value, (field,)):
            if _SECRET_NAME.search(key) and literal(v):
                yield field_path(path), f"holds a literal credential; {_CONNECTION_FIX}"
    for path, text in _strings(call):
        if _SECRET_VALUE.match(text) and "{{" not in text:
            yield path, f"holds a literal credential ({text.split()[0]} ...); {_CONNECTION_FIX}"
    if re.search(r"[?&][^=]*(key|token|secret|password)[^=]*=[^{&]", call.path, re.IGNORECASE):
        yield "path", f"holds a literal credential in its query string; {_CONNECTION_FIX}"


def _keyed(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*path, k), str(k), v
            yield from _keyed(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _keyed(v, (*path, i))


def _expressions(step: StepSpec) -> Iterator[tuple[str, str]]:
    if step.when is not None:
        yield "when", step.when
    if step.output is not None:
        yield "output", step.output
    for field, mode in (("fan_out", step.fan_out), ("bulk", step.bulk)):
        if mode is not None and isinstance(mode.over, str):
            yield f"{field}.over", mode.over
    partitions = step.sync.partitions if step.sync is not None else None
    if partitions is not None and isinstance(partitions.over, str):
        yield "sync.partitions.over", partitions.over
    if partitions is not None and partitions.key is not None:
        yield "sync.partitions.key", partitions.key
    if step.poll is not None:
        for field in ("success", "failure", "status", "result"):
            if (expression := getattr(step.poll, field)) is not None:
                yield f"poll.{field}", expression


def _jmespath(expression: str, before: set[str], names: set[str], field: str) -> list[str]:
    try:
        parsed = jmespath.compile(expression).parsed
    except jmespath.exceptions.JMESPathError as exc:
        return [f"is not a valid JMESPath expression ({str(exc).splitlines()[0]}), got {expression!r}"]
    if field in ("output", "sync.partitions.key") or field.startswith(
        "poll."
    ):  # not over conf/params/results
        return []
    problems = []
    for chain in _field_chains(parsed):
        if chain[0] == "null":  # a missing field: evaluates to null, as intended
            continue
        if chain[0] in ("true", "false"):
            problems.append(
                f"reads a field named {chain[0]!r}, which is null; write the literal as `{chain[0]}`"
            )
        elif chain[0] not in ("conf", "params", "results"):
            problems.append(
                f"reads {chain[0]!r}; expressions see conf, params and results "
                f"(e.g. results.<step>.items){did_you_mean(chain[0], ('conf', 'params', 'results'))}"
            )
        elif (
            chain[0] == "results"
            and len(chain) > 1
            and (problem := result_reference_problem(chain[1], before, names))
        ):
            problems.append(problem)
    return problems


def _field_chains(node: dict[str, Any]) -> Iterator[list[str]]:
    """Root field chains: ``results.a.b`` -> ``["results", "a", "b"]`` (only at the expression's root)."""
    kind, children = node.get("type"), node.get("children", [])
    if kind == "field":
        yield [node["value"]]
    elif kind == "subexpression":
        left = next(_field_chains(children[0]), None)
        if left is not None and children[1].get("type") == "field":
            yield [*left, children[1]["value"]]
        elif left is not None:
            yield left
    elif kind in ("not_expression", "and_expression", "or_expression", "comparator", "pipe"):
        for child in children[: 1 if kind == "pipe" else None]:
            yield from _field_chains(child)
    elif (
        kind in ("projection", "value_projection", "flatten", "filter_projection", "index_expression")
        and children
    ):
        yield from _field_chains(children[0])


def _transitive_upstream(spec: WorkflowSpec) -> dict[str, set[str]]:
    direct = {s.name: {*s.depends_on, *s.merge} for s in spec.steps}
    out: dict[str, set[str]] = {}

    def visit(name: str, trail: tuple[str, ...]) -> set[str]:
        if name in out:
            return out[name]
        found: set[str] = set()
        for up in direct.get(name, ()):
            if up in direct and up not in trail:
                found |= {up} | visit(up, (*trail, up))
        out[name] = found
        return found

    for name in direct:
        visit(name, (name,))
    return out
