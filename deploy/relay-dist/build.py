"""Build the relay-only wheel: ``python deploy/relay-dist/build.py [--outdir DIR] [--native ...]``.

Stages ``relay/`` and the two dependency-free modules of ``hybrid`` the relay imports
(``hybrid/__init__.py``, ``hybrid/wire.py``) with this directory's ``pyproject.toml`` in a
temporary directory and runs ``pip wheel`` there. Prints the wheel's path. Install it with
``pip install '<that path>[speedups]'`` (``[speedups]``: the C unmasking helper). The full
``hybrid`` distribution contains the relay too: install one or the other in an environment, not
both (they share ``relay/`` and ``hybrid/wire.py``).

With mypyc (``pip install mypy``) and a C compiler at hand, the wheel also carries the relay's
compiled per-connection modules (``python -m relay.native``, relay/README.md "Compiled modules"):
about 1.8 times less CPU per tunnel. Such a wheel is tagged for the interpreter that built it
(``cp311-cp311-linux_x86_64``, say); installed under another one, the relay runs as plain Python.
``--native no`` builds the plain ``py3-none-any`` wheel; ``--native yes`` fails instead of
falling back to it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
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


#: Tags the wheel for this interpreter and platform: it holds extension modules built for them.
_BINARY_SETUP = """\
from setuptools import setup
from setuptools.dist import Distribution


class _Binary(Distribution):
    def has_ext_modules(self) -> bool:
        return True


setup(distclass=_Binary)
"""


#: What the build environment needs: mypyc, and what it type-checks the relay against.
BUILD_NEEDS = {
    "mypyc": "mypy",
    "setuptools": "setuptools",
    "trio": "trio<0.36",
    "h11": "h11",
    "prometheus_client": "prometheus-client",
    "websockets": "websockets",
}


def _why_not_native() -> str | None:
    """Why the compiled modules cannot be built here; None if they can."""
    missing = [
        pip for module, pip in BUILD_NEEDS.items() if importlib.util.find_spec(module) is None
    ]
    if missing:
        wanted = " ".join(f"'{pip}'" if "<" in pip else pip for pip in BUILD_NEEDS.values())
        return (
            f"this Python lacks {', '.join(missing)} (mypyc type-checks the relay against its "
            f"dependencies; pip install {wanted})"
        )
    if not any(shutil.which(name) for name in ("cc", "gcc", "clang")):
        return "no C compiler (cc, gcc or clang) on PATH"
    return None


class NativeBuildFailed(Exception):
    """``python -m relay.native`` failed; it printed why."""


def _compiled_build() -> Path:
    """Bring the checkout's build of the compiled modules up to date; its directory."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "relay.native", "--quiet"]
    if subprocess.run(command, cwd=ROOT, env=env).returncode != 0:
        raise NativeBuildFailed("python -m relay.native failed (its output is above)")
    # The freshness check of the checkout's own relay/compiled.py, on the checkout's directories
    # (whatever relay package this interpreter would import).
    spec = importlib.util.spec_from_file_location("_relay_compiled", ROOT / "relay" / "compiled.py")
    assert spec is not None and spec.loader is not None
    checker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checker)
    native = ROOT / "relay" / "_native"
    why = checker.stale_reason(native, ROOT / "relay")
    if why is not None:
        raise SystemExit(f"build.py: the compiled modules in {native} are not usable: {why}")
    return native


def build(outdir: Path, native: str = "auto") -> Path:
    """Build the wheel into ``outdir``; ``native`` is ``auto``, ``yes`` or ``no``."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    outdir.mkdir(parents=True, exist_ok=True)
    compiled = native != "no"
    if compiled:
        why = _why_not_native()
        if why is not None:
            if native == "yes":
                raise SystemExit(f"build.py: cannot build the compiled modules: {why}")
            print(
                f"build.py: {why}: building the plain-Python wheel (about 1.8 times the CPU per "
                "tunnel); --native no says this is wanted",
                file=sys.stderr,
            )
            compiled = False
    with tempfile.TemporaryDirectory(prefix="hybrid-relay-dist-") as staging_name:
        staging = Path(staging_name)
        shutil.copytree(
            ROOT / "relay",
            staging / "relay",
            ignore=shutil.ignore_patterns("__pycache__", "_native"),
        )
        if compiled:
            try:
                shutil.copytree(_compiled_build(), staging / "relay" / "_native")
                (staging / "setup.py").write_text(_BINARY_SETUP)
            except NativeBuildFailed as exc:
                if native == "yes":
                    raise SystemExit(f"build.py: {exc}") from None
                print(f"build.py: {exc}: building the plain-Python wheel", file=sys.stderr)
        (staging / "hybrid").mkdir()
        for name in ("__init__.py", "wire.py"):
            shutil.copy2(ROOT / "hybrid" / name, staging / "hybrid" / name)
        template = (HERE / "pyproject.toml").read_text()
        (staging / "pyproject.toml").write_text(template.replace("@VERSION@", version))
        shutil.copy2(ROOT / "relay" / "README.md", staging / "README.md")
        # Built into the staging directory first: outdir may hold the other kind of wheel from
        # an earlier build, and only the one made now is the answer.
        built = staging / "wheel"
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(built)]
        if _can_build_here():
            command.append("--no-build-isolation")  # no download when the tools are here
        subprocess.run([*command, str(staging)], check=True)
        wheels = sorted(built.glob(f"hybrid_relay-{version}-*.whl"))
        if not wheels:
            raise SystemExit("build.py: pip wheel produced no hybrid_relay wheel")
        wheel = outdir / wheels[0].name
        shutil.move(wheels[0], wheel)
    return wheel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--outdir", default=str(ROOT / "dist"), help="where the wheel goes (default: dist/)"
    )
    parser.add_argument(
        "--native",
        choices=("auto", "yes", "no"),
        default="auto",
        help="include the compiled modules: auto (default) when mypyc and a C compiler are here, "
        "yes (fail without them), no (the plain py3-none-any wheel)",
    )
    args = parser.parse_args()
    print(build(Path(args.outdir), args.native))
    return 0


if __name__ == "__main__":
    sys.exit(main())
