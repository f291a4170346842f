"""Command line: ``python -m api_orchestration validate PATH...`` and ``... schema [--output FILE]``.

``validate`` checks every workflow spec in the given folders or files with the same messages
Airflow shows as import errors, and exits 1 if any is bad (for CI). ``schema`` writes the JSON
Schema of the spec format, for editors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from api_orchestration.errors import SpecError


def validate(paths: list[str]) -> int:
    from api_orchestration.specs.loader import load_directory, load_file

    good, bad = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            loaded, errors = load_directory(path, full_names=True)
            if not loaded and not errors:
                print(f"{path}: no *.yaml or *.yml spec files here", file=sys.stderr)
                return 2
            good += loaded
            bad += errors
        elif path.is_file():
            try:
                good.append(load_file(path, name=str(path)))
            except SpecError as exc:
                bad.append(exc)
        else:
            print(f"{path}: no such file or folder", file=sys.stderr)
            return 2
    for spec in good:
        print(f"ok    {spec.source}: DAG {spec.dag.dag_id!r} with {len(spec.dag.task_ids)} tasks")
    for error in bad:
        print(f"FAIL  {error.source}", file=sys.stderr)
        for line in str(error).splitlines():
            print(f"      {line}", file=sys.stderr)
    print(f"{len(good)} valid, {len(bad)} invalid", file=sys.stderr if bad else sys.stdout)
    return 1 if bad else 0


def schema(output: str | None) -> int:
    from api_orchestration.specs.schema import json_schema_text

    text = json_schema_text()
    if output:
        Path(output).write_text(text)
        print(f"wrote {output}")
    else:
        sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api_orchestration", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("validate", help="validate workflow spec files or folders")
    check.add_argument("paths", nargs="+", metavar="PATH")
    out = commands.add_parser("schema", help="print or write the JSON Schema of workflow specs")
    out.add_argument("--output", "-o", help="write to this file instead of stdout")
    args = parser.parse_args(argv)
    return validate(args.paths) if args.command == "validate" else schema(args.output)


if __name__ == "__main__":
    sys.exit(main())
