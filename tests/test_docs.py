"""The docs site's ``:param:`` check (``docs/conf.py``): ``make docs`` builds with warnings as errors,
so a docstring whose ``:param:`` fields do not match the signature fails the build (and ``make test``).
Built with the repository's own configuration (``sphinx-build -c docs``) over one small page."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

MODULE = '''
def call(endpoint, json=None, data=None):
    """One call.

    :param endpoint: the path.
{fields}
    """
'''
WELL_FORMED = "    :param json: a JSON body.\n    :param data: a form body."


def build(tmp_path: Path, fields: str) -> subprocess.CompletedProcess[str]:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (tmp_path / "docprobe.py").write_text(MODULE.format(fields=fields))
    (src / "index.rst").write_text("Probe\n=====\n\n.. autofunction:: docprobe.call\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    sphinx = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-c", str(REPO / "docs")]
    return subprocess.run(
        [*sphinx, "-b", "html", str(src), str(out)], env=env, capture_output=True, text=True, timeout=120
    )


def test_well_formed_params_build(tmp_path):
    proc = build(tmp_path, WELL_FORMED)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("fields", "warning"),
    [
        ("    :param json, data: the body.", "malformed or unknown ':param json, data:'"),
        (
            "    :param json: a JSON body.\n    :param body: a form body.",
            "malformed or unknown ':param body:'",
        ),
        ("    :param json: a JSON body, or data: a form body.", "parameters without a ':param:' field: data"),
    ],
    ids=["two-names-in-one-field", "unknown-name", "one-folded-into-another"],
)
def test_a_malformed_param_fails_the_build(tmp_path, fields, warning):
    proc = build(tmp_path, fields)
    assert proc.returncode != 0
    assert f"docprobe.call: {warning}" in proc.stderr, proc.stderr
