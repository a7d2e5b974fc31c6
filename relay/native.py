"""The relay's per-connection modules compiled with mypyc, used only while they match the source.

Why: once the reactor left nothing but the relay's own Python between the syscalls of a tunnel
(bench/PROFILE.md, "Round three"), most of a tunnel's user CPU was the interpreter's work around
that code: attribute and global look-ups, calls, boxing. mypyc compiles the same typed source to
C; the code, its behaviour and its tests stay the ones in ``relay/*.py``.

- ``python -m relay.native`` builds ``MODULES`` into ``relay/_native/`` (one shared library and a
  small extension per module) with a manifest of the SHA-256 of each source. It needs mypy (the
  ``test`` and ``bench`` extras) and a C compiler with the Python headers; ``./dev test`` and
  ``./dev bench`` run it, and it does nothing when the build is current.
- ``relay/__init__.py`` calls ``relay.compiled.activate``: only when every listed source still has
  the hash it was built from (and the build is for this interpreter) is ``relay/_native`` put
  first on the package's search path, so that ``import relay.reactor`` loads the compiled module.
  An edited source therefore runs as plain Python until the next build, never as stale C.
- ``HYBRID_RELAY_NATIVE=0`` runs plain Python even with a current build (the test suite reruns
  part of itself that way); the ``listening`` log line says which one runs (``native``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from relay.compiled import (
    GROUP,
    MANIFEST,
    MODULES,
    NATIVE_DIR,
    PACKAGE_DIR,
    _digest,
    _ext_suffix,
    _interpreter,
    stale_reason,
)


def build(quiet: bool = False, force: bool = False) -> int:
    """Compile ``MODULES`` into ``NATIVE_DIR`` unless current; 0 on success, 1 on failure."""

    def say(text: str) -> None:
        if not quiet:
            print(f"relay.native: {text}", file=sys.stderr, flush=True)

    if not force and stale_reason() is None:
        say("compiled modules are current")
        return 0
    try:
        from mypyc.build import mypycify  # noqa: PLC0415 - only the build needs mypy
    except ImportError:
        print(
            "relay.native: mypyc is not installed (pip install mypy); the relay runs as plain "
            "Python",
            file=sys.stderr,
        )
        return 1
    from setuptools import Distribution  # type: ignore[import-untyped, unused-ignore]  # noqa: PLC0415

    root = PACKAGE_DIR.parent
    sources = {name: _digest(PACKAGE_DIR / f"{name}.py") for name in MODULES}
    say(f"compiling {len(MODULES)} modules with mypyc (about a minute)...")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="relay-native-") as scratch:
        work = Path(scratch)
        cwd = os.getcwd()
        log = work / "build.log"
        try:
            # mypyc names modules after the paths it is given and reads the mypy settings of
            # pyproject.toml, both relative to the project root.
            os.chdir(root)
            with log.open("w") as sink:
                saved = os.dup(1), os.dup(2)
                os.dup2(sink.fileno(), 1)
                os.dup2(sink.fileno(), 2)
                try:
                    extensions = mypycify(
                        [f"relay/{name}.py" for name in MODULES],
                        opt_level="3",
                        group_name=GROUP,
                        target_dir=str(work / "c"),
                    )
                    # A bare Distribution: setup() would also read this project's pyproject.toml.
                    dist = Distribution({"name": "relay-native", "ext_modules": extensions})
                    dist.script_args = [
                        "build_ext",
                        "--build-lib",
                        str(work / "lib"),
                        "--build-temp",
                        str(work / "tmp"),
                    ]
                    dist.parse_command_line()
                    dist.run_commands()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os.dup2(saved[0], 1)
                    os.dup2(saved[1], 2)
                    os.close(saved[0])
                    os.close(saved[1])
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure leaves plain Python
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            print(
                f"relay.native: the build failed ({exc!r}); the relay runs as plain Python.\n"
                f"{tail}",
                file=sys.stderr,
            )
            return 1
        finally:
            os.chdir(cwd)
        built = sorted((work / "lib" / "relay").glob("*" + (_ext_suffix())))
        expected = {f"{name}{_ext_suffix()}" for name in MODULES}
        if not expected <= {path.name for path in built}:
            print(f"relay.native: the build made {[p.name for p in built]}", file=sys.stderr)
            return 1
        staging = work / "_native"
        staging.mkdir()
        for path in built:
            shutil.copy2(path, staging / path.name)
        (staging / MANIFEST).write_text(
            json.dumps({"interpreter": _interpreter(), "sources": sources}, indent=1) + "\n"
        )
        # Replace the old build whole, so a half-copied one is never picked up.
        old = work / "old"
        if NATIVE_DIR.exists():
            NATIVE_DIR.rename(old)
        shutil.move(str(staging), NATIVE_DIR)
    say(f"built in {time.monotonic() - started:.0f} s: {NATIVE_DIR}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m relay.native",
        description=(
            "Compile the relay's per-connection modules with mypyc into relay/_native/, where "
            "the relay uses them while every source still matches its build (plain Python "
            "otherwise, or with HYBRID_RELAY_NATIVE=0). Does nothing when the build is current."
        ),
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when current")
    parser.add_argument("--check", action="store_true", help="only say whether it is current")
    parser.add_argument("--quiet", action="store_true", help="print only failures")
    args = parser.parse_args(argv)
    if args.check:
        why = stale_reason()
        print("current" if why is None else f"not current: {why}")
        return 0 if why is None else 1
    return build(quiet=args.quiet, force=args.force)


if __name__ == "__main__":
    sys.exit(main())
