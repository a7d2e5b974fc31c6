"""The relay's version, from the installed distribution's metadata."""

from __future__ import annotations

from importlib import metadata


def _version() -> str:
    # The relay ships in the "hybrid" distribution, or alone as "hybrid-relay" (relay/README.md).
    for distribution in ("hybrid-relay", "hybrid"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "0+unknown"


__version__ = _version()
