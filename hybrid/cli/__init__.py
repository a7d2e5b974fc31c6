"""The ``hybrid`` command line: one sub-command module per area, one error policy for all.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its sub-command and
sets ``func`` on the parser defaults; ``func(args)`` returns the process exit code. Every deliberate
error is a ``HybridError``: it is printed as one line on stderr, never as a traceback. An error may
carry an ``exit_code`` attribute; otherwise the exit code is 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hybrid.errors import HybridError

COMMAND_MODULES = ("qr", "ble", "domain", "demo", "desktop", "phone", "portal")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid",
        description="FIDO hybrid transport (caBLE v2): show or read FIDO:/ QR codes, inspect "
        "adverts, run the desktop or the phone side, or a full local demo.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"hybrid.cli.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HybridError as exc:
        print(f"hybrid: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 1))
    except KeyboardInterrupt:
        print("hybrid: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
