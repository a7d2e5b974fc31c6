"""Argument types and shared options of the ``hybrid`` commands: bad values are usage errors.

Each ``*_arg`` function is an argparse ``type=``: it returns the parsed value or raises
``argparse.ArgumentTypeError`` with a sentence naming what is wrong, which argparse prints as
``hybrid <command>: error: argument --x: <sentence>`` and turns into exit status 2 before anything
runs (no QR code is shown, no socket opened). ``validate_relay_url`` is the same check for code
paths outside argparse (``hybrid.tunnel.relay_url``; the desktop API validates its relay URL before
it shows a QR code).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from hybrid.errors import UsageError
from hybrid.tunnel.domains import FIRST_HASHED_ID, MAX_DOMAIN_ID, is_known_domain_id
from hybrid.tunnel.relay_url import MAX_PORT, RelayUrlError, validate_relay_url

CA_FILE_ENV = "HYBRID_CA_FILE"


__all__ = ["CA_FILE_ENV", "UsageError"]


def relay_url_arg(text: str) -> str:
    try:
        return validate_relay_url(text)
    except RelayUrlError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def seconds_arg(text: str) -> float:
    """A positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def port_arg(text: str) -> int:
    """A UDP/TCP port, 1..65535."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"port {value} is outside 1..{MAX_PORT}")
    return value


def _integer(text: str) -> int:
    cleaned = text.strip()
    try:
        return int(cleaned, 16) if cleaned.lower().startswith("0x") else int(cleaned, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def domain_id_arg(text: str) -> int:
    """A tunnel-server domain id a desktop can resolve: 0, 1 or 256..65535."""
    value = _integer(text)
    if not is_known_domain_id(value):
        if not 0 <= value <= MAX_DOMAIN_ID:
            raise argparse.ArgumentTypeError(
                f"domain id {value} is outside 0..{MAX_DOMAIN_ID} (it is a 16-bit number)"
            )
        raise argparse.ArgumentTypeError(
            f"domain id {value} is reserved: use 0 or 1 (assigned relays) or "
            f"{FIRST_HASHED_ID}..{MAX_DOMAIN_ID} (hashed names)"
        )
    return value


def hashed_domain_id_arg(text: str) -> int:
    """A hashed tunnel-server domain id, 256..65535."""
    value = _integer(text)
    if not FIRST_HASHED_ID <= value <= MAX_DOMAIN_ID:
        raise argparse.ArgumentTypeError(
            f"must be a hashed domain id in {FIRST_HASHED_ID}..{MAX_DOMAIN_ID}, got {value}"
        )
    return value


def ca_file_arg(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"CA file {text!r} does not exist or is not a file")
    return path


def add_ca_file(parser: argparse.ArgumentParser) -> None:
    """``--ca-file PEM`` (default ``$HYBRID_CA_FILE``): extra CA certificates for a wss:// relay."""
    parser.add_argument(
        "--ca-file",
        type=ca_file_arg,
        default=None,
        metavar="PEM",
        help="trust the CA certificate(s) in this PEM file for a wss:// relay, in addition to "
        f"the system's (default: ${CA_FILE_ENV} if set, else none)",
    )


def ca_file_from(args: argparse.Namespace) -> Path | None:
    """``--ca-file``, else ``$HYBRID_CA_FILE``; an environment value that names no file is a
    usage error too."""
    if args.ca_file is not None:
        return args.ca_file
    env = os.environ.get(CA_FILE_ENV, "").strip()
    if not env:
        return None
    try:
        return ca_file_arg(env)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"${CA_FILE_ENV}: {exc}") from None
