"""The ``hybrid`` command line: one sub-command module per area, one error policy for all.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its sub-command and
sets ``func`` on the parser defaults; ``func(args)`` returns the process exit code. Every deliberate
error is a ``HybridError``: it is printed as one line on stderr, never as a traceback, and
``hybrid.cli.exit_codes`` alone decides the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from hybrid.cli.exit_codes import GENERIC, INTERRUPTED, exit_code_for
from hybrid.errors import HybridError

COMMAND_MODULES = ("qr", "ble", "domain", "demo", "desktop", "phone")


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
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("hybrid: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        return GENERIC


if __name__ == "__main__":
    sys.exit(main())
