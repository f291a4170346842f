"""Read workflow spec files: YAML -> checked spec -> DAG, with every problem reported by field path.

``load_directory`` never lets one bad file hide another: good files become DAGs, bad ones become
:class:`SpecError` s, which ``dags/workflows.py`` reports as the DAG file's import error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from api_orchestration.errors import ConfigurationError, SpecError
from api_orchestration.specs.checks import check
from api_orchestration.specs.convert import dag_kwargs, to_workflow
from api_orchestration.specs.model import WorkflowSpec
from api_orchestration.specs.problems import from_validation_error, shown
from api_orchestration.workflows.model import Workflow

MAX_BYTES = 512 * 1024
MAX_NODES = 20_000
SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class LoadedSpec:
    """A valid spec: its source, the workflow model, the ``DAG`` arguments and the DAG built from them."""

    source: str
    workflow: Workflow
    dag_kwargs: dict[str, Any]
    dag: Any


_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser: 2-3x faster


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[misc]
    """``yaml.safe_load`` that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, list | dict):
                raise yaml.constructor.ConstructorError(
                    None, None, "keys must be plain values, not lists or mappings", key_node.start_mark
                )
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}; each key may appear once", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """The YAML document in ``text``, or :class:`SpecError` (syntax, size, aliases, duplicates)."""
    if len(text.encode()) > MAX_BYTES:
        size = len(text.encode()) / 1024
        raise SpecError(
            source, [("", f"is {size:.0f} KiB; specs are limited to {MAX_BYTES // 1024} KiB: split it")]
        )
    try:
        loader = _UniqueKeyLoader(text)  # the reader already refuses control characters
        try:
            node = loader.get_single_node()
            if node is not None:
                _count_nodes(node, source)
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(
            source, [(where, f"YAML error: {problem}; check indentation, colons and quoting")]
        ) from None
    except yaml.YAMLError as exc:
        raise SpecError(source, [("", f"YAML error: {' '.join(str(exc).split())}")]) from None


def _count_nodes(root: yaml.Node, source: str) -> None:
    """Refuse alias bombs: count nodes as the document would expand, aliases included."""
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise SpecError(
                source,
                [
                    (
                        "",
                        f"expands to more than {MAX_NODES} YAML nodes (anchors and aliases included); split it",
                    )
                ],
            )
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack.extend((k, v))


def load_document(document: Any, source: str, *, default_dag_id: str | None = None) -> LoadedSpec:
    """Validate a parsed document (a dict) into a :class:`LoadedSpec`, or raise :class:`SpecError`."""
    if document is None:
        raise SpecError(
            source, [("", "is empty; a spec is a mapping with at least 'steps' (see the README)")]
        )
    if not isinstance(document, dict):
        raise SpecError(
            source,
            [("", f"must be a mapping (dag_id, schedule, steps, ...), got a {type(document).__name__}")],
        )
    try:
        spec = WorkflowSpec.model_validate(document)
    except ValidationError as exc:
        raise SpecError(source, from_validation_error(exc, WorkflowSpec)) from None
    dag_id = spec.dag_id or default_dag_id or ""
    problems = check(spec, dag_id)
    workflow, more = to_workflow(spec, dag_id)
    reported = {path for path, _ in problems}  # one message per field (checks and the model agree)
    problems += [p for p in more if p[0] not in reported]
    if problems or workflow is None:
        raise SpecError(source, problems)
    try:
        kwargs = dag_kwargs(spec, source)
    except (ValueError, TypeError) as exc:  # start_date, params
        raise SpecError(source, [("start_date", f"{exc}, got {shown(spec.start_date)}")]) from None
    from api_orchestration.workflows.build import build

    try:  # what Airflow itself rejects, reported here rather than as a traceback
        return LoadedSpec(source, workflow, kwargs, build(workflow, **kwargs))
    except ConfigurationError as exc:
        raise SpecError(source, [("", str(exc))]) from None
    except Exception as exc:
        raise SpecError(source, [("", f"Airflow rejected the DAG: {type(exc).__name__}: {exc}")]) from None


def load_text(text: str, source: str, *, default_dag_id: str | None = None) -> LoadedSpec:
    return load_document(parse_yaml(text, source), source, default_dag_id=default_dag_id)


def load_file(path: str | Path, *, name: str | None = None) -> LoadedSpec:
    """Load one spec file; ``name`` is how errors name it (default: the file name)."""
    path = Path(path)
    source = name or path.name
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(source, [("", f"is not UTF-8 text ({exc.reason} at byte {exc.start})")]) from None
    except OSError as exc:
        raise SpecError(source, [("", f"cannot be read: {exc.strerror}")]) from None
    return load_text(text, source, default_dag_id=path.stem)


def spec_files(directory: str | Path) -> list[Path]:
    root = Path(directory)
    return sorted(p for p in root.iterdir() if p.suffix in SUFFIXES and p.is_file()) if root.is_dir() else []


def load_directory(
    directory: str | Path, *, full_names: bool = False
) -> tuple[list[LoadedSpec], list[SpecError]]:
    """Every spec in ``directory``: the good ones, and one :class:`SpecError` per bad file, named by
    file name (or by path, with ``full_names``). A dag_id used by an earlier file makes the later one bad."""
    good: list[LoadedSpec] = []
    bad: list[SpecError] = []
    owners: dict[str, str] = {}
    for path in spec_files(directory):
        try:
            loaded = load_file(path, name=str(path) if full_names else None)
        except SpecError as exc:
            bad.append(exc)
            continue
        dag_id = loaded.workflow.name
        if dag_id in owners:
            bad.append(
                SpecError(
                    path.name, [("dag_id", f"{dag_id!r} is already used by {owners[dag_id]}; rename one")]
                )
            )
            continue
        owners[dag_id] = loaded.source
        good.append(loaded)
    return good, bad
