"""Build the relay-only wheel: ``python deploy/relay-dist/build.py [--outdir DIR]``.

Stages ``relay/`` and the two dependency-free modules of ``hybrid`` the relay imports
(``hybrid/__init__.py``, ``hybrid/wire.py``) with this directory's ``pyproject.toml`` in a
temporary directory and runs ``pip wheel`` there. Prints the wheel's path. Install it with
``pip install hybrid_relay-<version>-py3-none-any.whl`` (add ``[speedups]`` for the C unmasking
helper). The full ``hybrid`` distribution contains the relay too: install one or the other in an
environment, not both (they share ``relay/`` and ``hybrid/wire.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def _can_build_here() -> bool:
    """Whether this environment's setuptools can build a wheel without fetching anything."""
    if importlib.util.find_spec("setuptools") is None:
        return False
    if importlib.util.find_spec("wheel") is not None:
        return True
    from importlib.metadata import version

    major, minor = (int(part) for part in version("setuptools").split(".")[:2])
    return (major, minor) >= (77, 0)  # bdist_wheel built in, and SPDX license strings


def build(outdir: Path) -> Path:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    outdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hybrid-relay-dist-") as staging_name:
        staging = Path(staging_name)
        shutil.copytree(
            ROOT / "relay",
            staging / "relay",
            ignore=shutil.ignore_patterns("__pycache__", "_native"),
        )
        (staging / "hybrid").mkdir()
        for name in ("__init__.py", "wire.py"):
            shutil.copy2(ROOT / "hybrid" / name, staging / "hybrid" / name)
        template = (HERE / "pyproject.toml").read_text()
        (staging / "pyproject.toml").write_text(template.replace("@VERSION@", version))
        shutil.copy2(ROOT / "relay" / "README.md", staging / "README.md")
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(outdir)]
        if _can_build_here():
            command.append("--no-build-isolation")  # no download when the tools are here
        subprocess.run([*command, str(staging)], check=True)
    wheels = sorted(outdir.glob(f"hybrid_relay-{version}-*.whl"))
    if not wheels:
        raise SystemExit("build.py: pip wheel produced no hybrid_relay wheel")
    return wheels[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", default=str(ROOT / "dist"), help="where the wheel goes")
    args = parser.parse_args()
    print(build(Path(args.outdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
