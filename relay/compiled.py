"""Whether the relay runs its compiled modules (``relay.native`` builds them): the freshness check.

``relay/__init__.py`` calls ``activate``. Only when every compiled source still has the SHA-256 it
was built from, and the build is for this interpreter, is ``relay/_native`` put first on the
package's search path, so that ``import relay.reactor`` loads the compiled module; an edited
source runs as plain Python until the next build, never as stale C. ``HYBRID_RELAY_NATIVE=0``
runs plain Python even with a current build. See ``relay.native`` for why and how it is built.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

#: The modules compiled together: everything a connection runs through between two syscalls.
MODULES = (
    "reactor",
    "tunnel",
    "dispatch",
    "http",
    "requests",
    "wsframe",
    "logs",
    "guard",
    "routing",
    "values",
)
PACKAGE_DIR = Path(__file__).resolve().parent
NATIVE_DIR = PACKAGE_DIR / "_native"
MANIFEST = "manifest.json"
#: mypyc's name for the group; its shared library is ``relay/_native/hot__mypyc.*``.
GROUP = "relay.hot"
ENV = "HYBRID_RELAY_NATIVE"

#: Whether ``activate`` put the compiled modules on the path, and why not when it did not.
active = False
reason = "not checked"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ext_suffix() -> str:
    return str(sysconfig.get_config_var("EXT_SUFFIX") or ".so")


def _interpreter() -> str:
    return f"{sys.implementation.cache_tag}{_ext_suffix()}"


def stale_reason(native_dir: Path = NATIVE_DIR, package_dir: Path = PACKAGE_DIR) -> str | None:
    """Why the build in ``native_dir`` cannot be used for the sources in ``package_dir``; None if
    it can."""
    try:
        manifest = json.loads((native_dir / MANIFEST).read_text())
    except FileNotFoundError:
        return "not built (python -m relay.native builds it)"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {exc}"
    if not isinstance(manifest, dict) or manifest.get("interpreter") != _interpreter():
        return "built for another interpreter"
    sources = manifest.get("sources")
    if not isinstance(sources, dict) or set(sources) != set(MODULES):
        return "built from another module list"
    for name in MODULES:
        try:
            if _digest(package_dir / f"{name}.py") != sources[name]:
                return f"relay/{name}.py changed since the build"
        except OSError as exc:
            return f"cannot read relay/{name}.py: {exc}"
    return None


def turned_off() -> bool:
    """Whether ``HYBRID_RELAY_NATIVE`` asks for plain Python."""
    return os.environ.get(ENV, "").strip() in ("0", "false", "no", "off")


def unusable_reason() -> str | None:
    """Why a relay started now would run plain Python (``HYBRID_RELAY_NATIVE=0``, or the build
    is not current); None if it would run the compiled modules."""
    if turned_off():
        return f"{ENV}=0"
    return stale_reason()


def activate(package_path: list[str]) -> bool:
    """Put the compiled modules first on ``package_path`` (``relay.__path__``) if they are
    current and wanted; True if they are."""
    global active, reason
    why = unusable_reason()
    if why is not None:
        reason = why
        return False
    package_path.insert(0, str(NATIVE_DIR))
    active = True
    reason = "current"
    return True
