"""Workflow specs: every malformed spec gets a clear error naming the file, the field and the fix;
the shipped specs build the same DAGs as their Python twins; bad files never hide good ones."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from api_orchestration.errors import SpecError
from api_orchestration.specs import load_directory, load_file, load_text
from api_orchestration.specs.schema import json_schema_text

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "include" / "workflows"

BASE = {
    "dag_id": "orders",
    "defaults": {"conn_id": "demo_api"},
    "steps": [
        {"name": "fetch_user", "call": {"path": "/users/{{ params.user_id }}"}},
        {
            "name": "charge",
            "depends_on": ["fetch_user"],
            "call": {
                "method": "POST",
                "path": "/payments/charges",
                "json": {"user": "{{ results.fetch_user.id }}"},
            },
            "compensate": {
                "method": "POST",
                "path": "/payments/refunds",
                "json": {"order_id": "{{ run_id }}"},
            },
        },
    ],
}


def spec(**changes):
    """BASE with ``changes``: ``{"steps.1.retry": {...}}`` sets a nested field; None deletes it."""
    doc = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key = int(last) if isinstance(node, list) else last
        if value is None:
            del node[key]
        elif isinstance(node, list) and key == len(node):
            node.append(value)
        else:
            node[key] = value
    return yaml.safe_dump(doc, sort_keys=False)


def step(**fields):
    return {"name": "extra", "call": {"path": "/echo/x"}, **fields}


HUGE = "steps:\n" + "".join(f"  - {{name: s{i}, call: {{path: /echo/{'x' * 40}}}}}\n" for i in range(9000))
BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcde", "bcdef", strict=True)
    )
    + "steps: [*f]\n"
)

# (id, spec text, field path, part of the message). The full line must read "bad.yaml: <path>: <message>".
MALFORMED = [
    ("yaml-syntax", "steps: [\n", "line 2, column 1", "YAML error: did not find expected node content"),
    ("yaml-tab-indent", "steps:\n\t- name: a\n", "line 2, column 1", "YAML error"),
    ("empty-file", "", "", "is empty; a spec is a mapping with at least 'steps'"),
    ("only-comments", "# nothing here\n", "", "is empty"),
    (
        "top-level-list",
        "- name: a\n- name: b\n",
        "",
        "must be a mapping (dag_id, schedule, steps, ...), got a list",
    ),
    ("top-level-scalar", "hello\n", "", "must be a mapping (dag_id, schedule, steps, ...), got a str"),
    ("missing-steps", "dag_id: x\n", "steps", "is required"),
    ("empty-steps", "steps: []\n", "steps", "must hold at least 1 item(s)"),
    ("steps-not-list", "steps: {a: 1}\n", "steps", "must be a list, got {'a': 1}"),
    ("step-missing-name", spec(**{"steps.0.name": None}), "steps[0].name", "is required"),
    (
        "unknown-top-level",
        spec(schedule_interval="@daily"),
        "schedule_interval",
        "unknown field 'schedule_interval' (did you mean 'schedule'?)",
    ),
    (
        "default-at-top-level",
        spec(conn_id="demo_api"),
        "conn_id",
        "unknown field 'conn_id'; allowed here: catchup, dag_id, defaults, description, max_active_runs, "
        "max_active_tasks, output, params, schedule, start_date, steps, tags "
        "(workflow-wide settings go under 'defaults': defaults.conn_id)",
    ),
    (
        "unknown-step-field",
        spec(**{"steps.1.retires": {"max_attempts": 2}}),
        "steps[1].retires",
        "unknown field 'retires' (did you mean 'retry'?)",
    ),
    (
        "params-inside-call",
        spec(**{"steps.0.call.params": {"a": 1}}),
        "steps[0].call.params",
        "query-string parameters go in 'query'",
    ),
    (
        "string-not-int",
        spec(**{"steps.1.retry": {"max_attempts": "3"}}),
        "steps[1].retry.max_attempts",
        "must be a whole number, got '3'",
    ),
    (
        "attempts-zero",
        spec(**{"steps.1.retry": {"max_attempts": 0}}),
        "steps[1].retry.max_attempts",
        "must be an integer >= 1, got 0",
    ),
    ("catchup-not-bool", spec(catchup="yes"), "catchup", "must be true or false, got 'yes'"),
    (
        "burst-over-permits",
        spec(**{"steps.0.rate_limit": {"permits": 5, "burst": 6}}),
        "steps[0].rate_limit.burst",
        "must be an integer from 1 to permits (5), got 6",
    ),
    (
        "rate-limit-no-permits",
        spec(**{"steps.0.rate_limit": {"burst": 2}}),
        "steps[0].rate_limit.permits",
        "is required",
    ),
    (
        "window-burst-over-permits",
        spec(**{"steps.0.rate_limit": [{"permits": 10}, {"permits": 50, "per_seconds": 60, "burst": 60}]}),
        "steps[0].rate_limit[1].burst",
        "must be an integer from 1 to permits (50), got 60",
    ),
    (
        "window-unknown-field",
        spec(**{"steps.0.rate_limit": [{"permits": 10}, {"permits": 50, "per_second": 60}]}),
        "steps[0].rate_limit[1].per_second",
        "unknown field 'per_second' (did you mean 'per_seconds'?)",
    ),
    (
        "windows-same-period",
        spec(**{"defaults.rate_limit": [{"permits": 10}, {"permits": 5, "per_seconds": 1}]}),
        "defaults.rate_limit",
        "has two windows with the same per_seconds: keep the smaller permits only",
    ),
    (
        "windows-empty",
        spec(**{"defaults.rate_limit": []}),
        "defaults.rate_limit",
        "must be a RateLimit(permits, per_seconds, burst) or a non-empty list of them",
    ),
    (
        "rate-limit-scalar",
        spec(**{"steps.0.rate_limit": 5}),
        "steps[0].rate_limit",
        "must be a mapping (key: value), got 5",
    ),
    (
        "failure-rate-2",
        spec(**{"defaults.breaker": {"failure_rate": 2}}),
        "defaults.breaker.failure_rate",
        "must be a fraction in (0, 1], got 2",
    ),
    (
        "retry-4xx-status",
        spec(**{"defaults.retry": {"retry_statuses": [404]}}),
        "defaults.retry.retry_statuses",
        "4xx are never retried",
    ),
    (
        "bad-method",
        spec(**{"steps.0.call.method": "FETCH"}),
        "steps[0].call.method",
        "must be one of GET, POST",
    ),
    ("empty-path", spec(**{"steps.0.call.path": ""}), "steps[0].call.path", "must be a non-empty string"),
    (
        "header-not-string",
        spec(**{"steps.0.call.headers": {"X-Count": 5}}),
        "steps[0].call.headers.X-Count",
        "must be a string (quote it), got 5",
    ),
    (
        "cycle",
        spec(**{"steps.0.depends_on": ["charge"]}),
        "steps[0].depends_on",
        "forms a cycle; remove one of these dependencies, got 'fetch_user -> charge -> fetch_user'",
    ),
    (
        "unknown-dependency",
        spec(**{"steps.1.depends_on": ["fetch_usr"]}),
        "steps[1].depends_on",
        "names an unknown step (did you mean 'fetch_user'?)",
    ),
    (
        "self-dependency",
        spec(**{"steps.0.depends_on": ["fetch_user"]}),
        "steps[0].depends_on",
        "must not name the step itself",
    ),
    (
        "duplicate-step",
        spec(**{"steps.1.name": "fetch_user", "steps.1.depends_on": None, "steps.1.call.json": None}),
        "steps[1].name",
        "is defined twice",
    ),
    (
        "bad-step-name",
        spec(**{"steps.0.name": "fetch-user", "steps.1.depends_on": None, "steps.1.call.json": None}),
        "steps[0].name",
        "must be letters, digits and _ only",
    ),
    (
        "merge-unknown",
        spec(**{"steps.2": {"name": "all", "merge": ["fetch_user", "nope"]}}),
        "steps[2].merge",
        "names an unknown step",
    ),
    ("output-unknown", spec(output="nope"), "output", "must name a step"),
    (
        "call-and-merge",
        spec(**{"steps.2": step(merge=["fetch_user"])}),
        "steps[2].call",
        "needs exactly one of a call or a merge",
    ),
    (
        "fan-out-and-bulk",
        spec(**{"steps.2": step(fan_out={"over": [1]}, bulk={"over": [1]})}),
        "steps[2].fan_out",
        "must not both be set",
    ),
    (
        "compensate-fan-out",
        spec(**{"steps.2": step(fan_out={"over": [1]}, compensate={"path": "/x"})}),
        "steps[2].compensate",
        "single-call steps only",
    ),
    (
        "fan-out-max-active-0",
        spec(**{"steps.2": step(fan_out={"over": [1], "max_active": 0})}),
        "steps[2].fan_out.max_active",
        "must be an integer >= 1, got 0",
    ),
    (
        "bulk-concurrency",
        spec(**{"steps.2": step(bulk={"over": [1], "concurrency": 1000})}),
        "steps[2].bulk.concurrency",
        "must be an integer from 1 to 256, got 1000",
    ),
    (
        "tolerate-negative",
        spec(**{"steps.2": step(fan_out={"over": [1], "tolerate_failures": -1})}),
        "steps[2].fan_out.tolerate_failures",
        "must be a count >= 0",
    ),
    (
        "over-number",
        spec(**{"steps.2": step(fan_out={"over": 3})}),
        "steps[2].fan_out.over",
        "must be a list of items or a JMESPath string",
    ),
    ("timeout-zero", spec(**{"steps.0.timeout": 0}), "steps[0].timeout", "must be seconds > 0, got 0"),
    (
        "bad-cron",
        spec(schedule="61 * * * *", start_date="2026-01-01"),
        "schedule",
        "is not a valid cron expression, got '61 * * * *'",
    ),
    (
        "bad-preset",
        spec(schedule="@hourley", start_date="2026-01-01"),
        "schedule",
        "unknown preset '@hourley' (did you mean '@hourly'?)",
    ),
    ("schedule-without-start", spec(schedule="@daily"), "start_date", "is required when a schedule is set"),
    ("bad-start-date", spec(schedule="@daily", start_date="next tuesday"), "start_date", "next tuesday"),
    ("bad-dag-id", spec(dag_id="my orders!"), "dag_id", "must be 1-250 letters, digits, '_', '.' or '-'"),
    (
        "template-syntax",
        spec(**{"steps.0.call.path": "/users/{{ params.user_id "}),
        "steps[0].call.path",
        "template syntax error",
    ),
    (
        "template-unknown-variable",
        spec(**{"steps.0.call.path": "/users/{{ conf.user_id }}"}),
        "steps[0].call.path",
        "unknown variable 'conf'; the run's conf is dag_run.conf",
    ),
    (
        "template-execution-date",
        spec(**{"steps.0.call.path": "/x/{{ execution_date }}"}),
        "steps[0].call.path",
        "Airflow 3 has no execution_date",
    ),
    (
        "template-result-not-upstream",
        spec(**{"steps.1.depends_on": None}),
        "steps[1].call.json.user",
        "'fetch_user' does not run before this step; add it to depends_on",
    ),
    (
        "template-result-unknown",
        spec(**{"steps.1.call.json": {"u": "{{ results.fetch_usr.id }}"}}),
        "steps[1].call.json.u",
        "there is no step 'fetch_usr' (did you mean 'fetch_user'?)",
    ),
    (
        "item-outside-fan-out",
        spec(**{"steps.0.call.path": "/users/{{ item }}"}),
        "steps[0].call.path",
        "'item', which exists only in fan_out, bulk and partitioned sync steps",
    ),
    (
        "bad-jmespath",
        spec(**{"steps.1.when": "results.fetch_user.active =="}),
        "steps[1].when",
        "is not a valid JMESPath expression",
    ),
    (
        "jmespath-unknown-root",
        spec(**{"steps.1.when": "config.enabled"}),
        "steps[1].when",
        "expressions see conf, params and results",
    ),
    (
        "jmespath-result-not-upstream",
        spec(**{"steps.0.when": "results.charge.ok"}),
        "steps[0].when",
        "'charge' does not run before this step",
    ),
    (
        "literal-authorization",
        spec(**{"steps.0.call.headers": {"Authorization": "Bearer abc123def456"}}),
        "steps[0].call.headers.Authorization",
        "holds a literal credential; credentials must not be written in specs: put them in the Airflow Connection",
    ),
    (
        "literal-api-key-header",
        spec(**{"steps.0.call.headers": {"X-Api-Key": "k-123456"}}),
        "steps[0].call.headers.X-Api-Key",
        "holds a literal credential",
    ),
    (
        "password-in-body",
        spec(**{"steps.1.call.json": {"user": "a", "password": "hunter2"}}),
        "steps[1].call.json.password",
        "holds a literal credential",
    ),
    (
        "token-in-query",
        spec(**{"steps.0.call.query": {"access_token": "abcdef"}}),
        "steps[0].call.query.access_token",
        "holds a literal credential",
    ),
    (
        "key-in-path",
        spec(**{"steps.0.call.path": "/users?api_key=abc123"}),
        "steps[0].call.path",
        "literal credential in its query string",
    ),
    (
        "param-bad-default",
        spec(params={"user_id": {"default": "seven", "type": "integer"}}),
        "params.user_id",
        "default does not satisfy its schema: 'seven' is not of type 'integer'",
    ),
    (
        "param-typo",
        spec(params={"user_id": {"default": 7, "minimun": 1}}),
        "params.user_id.minimun",
        "unknown field 'minimun' (did you mean 'minimum'?)",
    ),
    ("param-mapping-no-default", spec(params={"filters": {"a": 1}}), "params.filters", "must hold 'default'"),
    (
        "duplicate-key",
        "steps: []\nsteps: []\n",
        "line 2, column 1",
        "duplicate key 'steps'; each key may appear once",
    ),
    ("huge-file", HUGE, "", "specs are limited to 512 KiB: split it"),
    ("alias-bomb", BOMB, "", "expands to more than 20000 YAML nodes"),
]


@pytest.mark.parametrize(
    ("text", "path", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_spec_gets_a_clear_error(text, path, message):
    with pytest.raises(SpecError) as caught:
        load_text(text, "bad.yaml", default_dag_id="bad")
    lines = str(caught.value).splitlines()
    prefix = f"bad.yaml: {path}: " if path else "bad.yaml: "
    assert any(line.startswith(prefix) and message in line for line in lines), lines
    assert all(line.startswith("bad.yaml: ") for line in lines)
    assert "Traceback" not in str(caught.value)


def test_the_table_is_big_enough():
    assert len(MALFORMED) >= 30 and len({m[0] for m in MALFORMED}) == len(MALFORMED)


def test_every_problem_of_a_file_is_reported_at_once():
    text = spec(**{"steps.0.retry": {"max_attempts": 0}, "steps.1.timeout": -1, "catchup": "no"})
    with pytest.raises(SpecError) as caught:
        load_text(text, "bad.yaml")
    assert {p for p, _ in caught.value.problems} >= {"catchup"}
    # type errors come first; once the types are right, the value errors are all listed together
    with pytest.raises(SpecError) as caught:
        load_text(spec(**{"steps.0.retry": {"max_attempts": 0}, "steps.1.timeout": -1}), "bad.yaml")
    assert {p for p, _ in caught.value.problems} == {"steps[0].retry.max_attempts"}


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("steps: [{name: caf\xe9}]".encode("latin-1"))
    with pytest.raises(SpecError, match=r"latin1.yaml: is not UTF-8 text"):
        load_file(bad)


def test_templates_and_expressions_accept_what_airflow_renders():
    text = spec(
        **{
            "steps.1.when": "!(conf.dry_run) && results.fetch_user.active",
            "steps.1.call.headers": {"X-Request": "{{ run_id }}-{{ ti.try_number }}", "Authorization": "Bearer {{ var.value.token }}"},
            "steps.2": step(fan_out={"over": "results.fetch_user.tags"}, depends_on=["fetch_user"], call={"path": "/echo/{{ item }}"}),
        }
    )  # fmt: skip
    loaded = load_text(text, "ok.yaml")
    assert {"charge", "extra_items", "extra_each", "extra"} <= set(loaded.dag.task_ids)


# -- the shipped specs and their Python twins ----------------------------------------------------


def _shape(dag) -> dict[str, tuple]:
    """What makes two DAGs the same: per task, class, wiring, trigger rule and the call it makes."""
    keys = ("method", "endpoint", "json", "query", "headers", "http_conn_id", "rate_limit", "breaker", "retry",
            "rate_limit_key", "breaker_key", "timeout", "when", "select", "undoes", "compensations", "saga_steps")  # fmt: skip
    out = {}
    for task in dag.tasks:
        attrs = {k: getattr(task, k) for k in keys if hasattr(task, k)}
        if task.task_id == "profile":
            attrs["merge"] = task.op_kwargs
        out[task.task_id] = (
            type(task).__name__, sorted(task.upstream_task_ids), task.trigger_rule,
            attrs,
        )  # fmt: skip
    return out


@pytest.mark.parametrize("name", ["order_saga", "user_enrichment"])
def test_shipped_spec_builds_the_same_dag_as_its_python_twin(name):
    python_dag = _python_dag(name)
    spec_dag = load_file(WORKFLOWS / f"{name}_spec.yaml").dag
    assert spec_dag.dag_id == f"{name}_spec"
    assert _shape(spec_dag) == _shape(python_dag)
    assert {k: p.value for k, p in spec_dag.params.items()} == {
        k: p.value for k, p in python_dag.params.items()
    }
    assert {k: p.schema for k, p in spec_dag.params.items()} == {
        k: p.schema for k, p in python_dag.params.items()
    }
    assert (spec_dag.schedule, spec_dag.start_date, spec_dag.catchup) == (
        python_dag.schedule, python_dag.start_date, python_dag.catchup,
    )  # fmt: skip
    assert set(python_dag.tags) | {"workflow-spec"} == set(spec_dag.tags)


def _python_dag(name: str):
    import importlib.util

    module_spec = importlib.util.spec_from_file_location(f"twin_{name}", ROOT / "dags" / f"{name}.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.dag


def test_shipped_specs_are_valid_and_the_schema_is_current():
    good, bad = load_directory(WORKFLOWS)
    assert bad == [] and {g.dag.dag_id for g in good} == {
        "order_saga_spec", "user_enrichment_spec", "github_issues_sync_spec",
    }  # fmt: skip
    assert (WORKFLOWS / "schema.json").read_text() == json_schema_text(), "run `make schema`"


def test_schema_validates_the_shipped_specs_and_rejects_unknown_fields():
    import jsonschema

    schema = json.loads((WORKFLOWS / "schema.json").read_text())
    for path in WORKFLOWS.glob("*.yaml"):
        document = yaml.safe_load(path.read_text())
        document["start_date"] = str(document.get("start_date"))  # YAML dates are strings in JSON
        jsonschema.validate(document, schema)
    with pytest.raises(jsonschema.ValidationError, match="retires"):
        jsonschema.validate({"steps": [{"name": "a", "retires": 1}]}, schema)


# -- loading a folder: bad files never hide good ones --------------------------------------------


@pytest.fixture
def workflows_dir(tmp_path):
    folder = tmp_path / "workflows"
    folder.mkdir()
    for path in WORKFLOWS.glob("*.yaml"):
        (folder / path.name).write_text(path.read_text())
    (folder / "orders.yaml").write_text(spec(**{"steps.0.retry": {"max_attempts": 0}}))
    (folder / "broken.yaml").write_text("steps: [\n")
    (folder / "twin.yml").write_text(spec(dag_id="order_saga_spec"))
    (folder / "notes.txt").write_text("not a spec")
    return folder


def test_dagbag_loads_good_specs_and_reports_every_bad_file(workflows_dir, tmp_path, monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    dags = tmp_path / "dags"
    dags.mkdir()
    for name in ("workflows.py", "workflow_spec_errors.py"):
        (dags / name).write_text((ROOT / "dags" / name).read_text())
    monkeypatch.setenv("AIRFLOW__API_ORCHESTRATION__WORKFLOWS_DIR", str(workflows_dir))
    bag = DagBag(dag_folder=str(dags))
    assert set(bag.dag_ids) == {"order_saga_spec", "user_enrichment_spec", "github_issues_sync_spec"}
    # the good specs' file has no import error (Airflow would not trigger its DAGs): the errors' file has
    ((path, error),) = bag.import_errors.items()
    assert path.endswith("workflow_spec_errors.py")
    assert "3 invalid workflow spec file(s)" in error
    assert "orders.yaml: steps[0].retry.max_attempts: must be an integer >= 1, got 0" in error
    assert "broken.yaml: line 2, column 1: YAML error" in error
    assert "twin.yml: dag_id: 'order_saga_spec' is already used by order_saga_spec.yaml; rename one" in error


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "plugins")}
    return subprocess.run(
        [sys.executable, "-m", "api_orchestration", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_validator_cli_names_each_bad_file_and_exits_nonzero(workflows_dir):
    done = _cli("validate", str(workflows_dir))
    assert done.returncode == 1, done
    assert f"FAIL  {workflows_dir}/orders.yaml" in done.stderr
    assert (
        f"{workflows_dir}/orders.yaml: steps[0].retry.max_attempts: must be an integer >= 1, got 0"
        in done.stderr
    )
    assert f"FAIL  {workflows_dir}/broken.yaml" in done.stderr and "3 valid, 3 invalid" in done.stderr
    assert f"ok    {workflows_dir}/user_enrichment_spec.yaml" in done.stdout

    ok = _cli("validate", str(WORKFLOWS))
    assert ok.returncode == 0 and "3 valid, 0 invalid" in ok.stdout, ok
    assert _cli("validate", str(workflows_dir / "missing")).returncode == 2


def test_the_readme_spec_example_is_valid():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Workflow specs (YAML)")[1].split("```yaml\n")[1].split("```")[0]
    loaded = load_text(block, "README.md")
    assert loaded.dag.dag_id == "enrich_and_notify"
    assert {"user", "posts", "profile", "score", "vip_gift", "charge", "notify_each", "undo_charge"} <= set(
        loaded.dag.task_ids
    )
