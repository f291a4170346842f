"""Make the checkout's package discoverable as the installed provider would be, without installing it.

Airflow finds providers (the ``resilient_http`` connection type, ``@task.resilient_http``)
through entry points, that is through distribution metadata on ``sys.path``. This writes
``plugins/<name>-<version>.dist-info`` (``METADATA`` and ``entry_points.txt``, from pyproject.toml;
git-ignored) next to the package, so every process that imports ``api_orchestration`` from
``plugins/`` (``make run``, the tests) sees the same provider as a ``pip install`` of the
wheel gives. Nothing is installed into the virtualenv. Run by ``make install`` and by the tests'
conftest; idempotent (rewrites only on change).

    python include/devtools/dev_metadata.py [--remove]
"""

from __future__ import annotations

import shutil
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
# Only the provider: plugins/api_orchestration_plugin.py registers the status page in a checkout.
# An entry point would load it once per sys.path entry holding this metadata, and a checkout's
# processes often have plugins/ on sys.path twice (PYTHONPATH and Airflow's plugins folder).
GROUPS = ("apache_airflow_provider",)


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def dist_info_dir() -> Path:
    p = _project()
    return PLUGINS / f"{p['name'].replace('-', '_')}-{p['version']}.dist-info"


def _files() -> dict[str, str]:
    p = _project()
    metadata = (
        f"Metadata-Version: 2.1\nName: {p['name']}\nVersion: {p['version']}\nSummary: {p['description']}\n"
    )
    lines = []
    for group, eps in p.get("entry-points", {}).items():
        if group not in GROUPS:
            continue
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in eps.items()]
        lines.append("")
    return {"METADATA": metadata, "entry_points.txt": "\n".join(lines), "INSTALLER": "dev_metadata\n"}


def remove() -> None:
    for stale in PLUGINS.glob("*.dist-info"):
        shutil.rmtree(stale)


def write() -> Path:
    """Write the metadata (removing any other version's); return its directory."""
    target = dist_info_dir()
    files = _files()
    if target.is_dir() and all(
        (target / n).is_file() and (target / n).read_text() == t for n, t in files.items()
    ):
        return target
    remove()
    target.mkdir()
    for name, text in files.items():
        (target / name).write_text(text)
    return target


if __name__ == "__main__":
    if sys.argv[1:] == ["--remove"]:
        remove()
    else:
        print(write().relative_to(ROOT))
