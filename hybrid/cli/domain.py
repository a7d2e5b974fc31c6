"""`hybrid domain ID`: the relay host name a 16-bit tunnel-server domain id stands for.

Ids 0 and 1 are the assigned relays, 256..65535 hashed names (docs/protocol.md section 5); anything
else is refused with exit code 2.
"""

from __future__ import annotations

import argparse
import json

from hybrid.tunnel.domains import UnknownTunnelDomainError, tunnel_domain


def parse_domain_id(text: str) -> int:
    """Decimal, or hex with a 0x prefix; anything else is an ``UnknownTunnelDomainError``."""
    cleaned = text.strip()
    try:
        return int(cleaned, 16) if cleaned.lower().startswith("0x") else int(cleaned, 10)
    except ValueError:
        raise UnknownTunnelDomainError(
            f"tunnel-server domain id must be a number in 0..65535, got {text!r}"
        ) from None


def _run(args: argparse.Namespace) -> int:
    domain_id = parse_domain_id(args.domain_id)
    domain = tunnel_domain(domain_id)
    if args.json:
        print(json.dumps({"domain_id": domain_id, "domain": domain}))
    else:
        print(domain)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "domain",
        help="print the relay host for a tunnel-server domain id",
        description="Print the tunnel-server (relay) host name for a 16-bit domain id: 0 is "
        "cable.ua5v.com, 1 is cable.auth.com, 256..65535 are hashed names; 2..255 are reserved "
        "and rejected (exit code 2).",
    )
    parser.add_argument("domain_id", metavar="ID", help="domain id, decimal or 0x-prefixed hex")
    parser.add_argument(
        "--json", action="store_true", help='print {"domain_id": N, "domain": "..."}'
    )
    parser.set_defaults(func=_run)
