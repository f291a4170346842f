"""Build the wheel and sdist (``python -m build``) from a clean copy of the sources.

Building in the checkout would leave ``plugins/<dist>.egg-info`` beside the package, where every
process with ``plugins/`` on its path would find a second copy of the provider and of the status
page plugin. So the files that make the distribution (``pyproject.toml``, ``MANIFEST.in``, the
README, the changelog and the packages) are copied to a temporary folder and built there.

    python include/devtools/build_dist.py [--outdir dist] [--wheel-only]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = ("pyproject.toml", "MANIFEST.in", "README.md", "CHANGELOG.md")
PACKAGES = ("api_orchestration", "api_orchestration_provider")


def build(outdir: Path, *, wheel_only: bool = False, python: str = sys.executable) -> list[Path]:
    """Build into ``outdir`` (created); return the files built."""
    outdir = Path(outdir).resolve()
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="apiorch-build-") as tmp:
        src = Path(tmp)
        for name in FILES:
            shutil.copy2(ROOT / name, src / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for package in PACKAGES:
            shutil.copytree(ROOT / "plugins" / package, src / "plugins" / package, ignore=ignore)
        before = set(outdir.iterdir())
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(
            [python, "-m", "build", *(["--wheel"] if wheel_only else []), "--outdir", str(outdir), str(src)],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"python -m build failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return sorted(set(outdir.iterdir()) - before)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", type=Path, default=ROOT / "dist")
    parser.add_argument("--wheel-only", action="store_true")
    args = parser.parse_args()
    for path in build(args.outdir, wheel_only=args.wheel_only):
        print(
            f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}  {path.stat().st_size:,} bytes"
        )
