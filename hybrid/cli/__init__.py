"""The ``hybrid`` command line: one sub-command module per area, one error policy for all.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``, which adds its sub-command and
sets ``func`` on the parser defaults; ``func(args)`` returns the process exit code. Every deliberate
error is a ``HybridError``: it is printed as one line on stderr, never as a traceback, and
``hybrid.cli.exit_codes`` alone decides the exit status. Usage errors (argparse's, and
``hybrid.cli.args.UsageError`` for checks made after parsing) exit 2; Ctrl-C prints
``hybrid: interrupted`` and exits 130, however deep in a trio nursery it arrived; a closed standard
output (``hybrid qr decode ... | head -0``) ends the command quietly with exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from hybrid.cli.exit_codes import GENERIC, INTERRUPTED, USAGE, exit_code_for
from hybrid.errors import HybridError, UsageError

COMMAND_MODULES = ("qr", "ble", "domain", "demo", "desktop", "phone", "portal")


def version() -> str:
    """The installed distribution's version, else the package's own."""
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as dist_version

        return dist_version("hybrid")
    except PackageNotFoundError:
        from hybrid import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid",
        description="FIDO hybrid transport (caBLE v2): show or read FIDO:/ QR codes, inspect "
        "adverts, run the desktop or the phone side, or a full local demo.",
        epilog="Exit status: 0 success, 1 other error, 2 usage error, 10-22 the support "
        "article's passkey errors (see the README), 130 interrupted (Ctrl-C).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"hybrid.cli.{name}")
        module.register(sub)
    return parser


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail too.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args: argparse.Namespace | None = None
    try:
        args = parser.parse_args(argv)
        try:
            return int(args.func(args) or 0)
        except BaseExceptionGroup as group:
            # A nursery may wrap Ctrl-C or our one error; report what is inside, not the group.
            leaves = _leaves(group)
            if any(isinstance(exc, KeyboardInterrupt) for exc in leaves):
                raise KeyboardInterrupt from None
            if leaves and all(isinstance(exc, BrokenPipeError) for exc in leaves):
                raise BrokenPipeError from None
            errors = [exc for exc in leaves if isinstance(exc, HybridError)]
            if len(errors) == len(leaves) == 1:
                raise errors[0] from None
            raise
    except UsageError as exc:
        words = ["hybrid", getattr(args, "command", ""), getattr(args, "desktop_action", "")]
        parser_name = " ".join(word for word in words if word)
        print(f"{parser_name}: error: {exc}", file=sys.stderr)
        return USAGE
    except HybridError as exc:
        print(f"hybrid: error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        print("hybrid: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return GENERIC


if __name__ == "__main__":
    sys.exit(main())
