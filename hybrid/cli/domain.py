"""`hybrid domain ID` and `hybrid domain --of HOST`: tunnel-server domain ids and relay host names.

Ids 0 and 1 are the assigned relays, 256..65535 hashed names (docs/protocol.md section 5); anything
else is refused with exit code 2. ``--of HOST`` goes the other way: the id a phone must advertise
for a relay at HOST (an assigned name or a hashed one; a URL is accepted too). A host that no id
names exits 1 and says so: only desktops given the same ``--relay`` can reach such a relay.
"""

from __future__ import annotations

import argparse
import json
from urllib.parse import urlsplit

from hybrid.cli.args import UsageError
from hybrid.errors import HybridError
from hybrid.tunnel.domains import UnknownTunnelDomainError, domain_id_for_host, tunnel_domain


class NotADomainError(HybridError):
    """The host is neither an assigned relay nor any hashed domain name."""


def parse_domain_id(text: str) -> int:
    """Decimal, or hex with a 0x prefix; anything else is an ``UnknownTunnelDomainError``."""
    cleaned = text.strip()
    try:
        return int(cleaned, 16) if cleaned.lower().startswith("0x") else int(cleaned, 10)
    except ValueError:
        raise UnknownTunnelDomainError(
            f"tunnel-server domain id must be a number in 0..65535, got {text!r}"
        ) from None


def host_of(text: str) -> str:
    """A host name from ``HOST`` or ``wss://HOST[:port]``."""
    text = text.strip()
    host = urlsplit(text).hostname if "://" in text else text.split(":", 1)[0]
    if not host:
        raise UsageError(f"--of needs a host name or a relay URL, got {text!r}")
    return host.lower()


def _run(args: argparse.Namespace) -> int:
    if (args.domain_id is None) == (args.of is None):
        raise UsageError("give either a domain ID or --of HOST")
    if args.of is not None:
        host = host_of(args.of)
        domain_id = domain_id_for_host(host)
        if domain_id is None:
            raise NotADomainError(
                f"{host} is not a tunnel-server domain name (neither assigned nor the hashed name "
                "of any id 256..65535): a phone using it can only be found by desktops given the "
                "same --relay"
            )
        domain = host
    else:
        domain_id = parse_domain_id(args.domain_id)
        domain = tunnel_domain(domain_id)
    if args.json:
        print(json.dumps({"domain_id": domain_id, "domain": domain}))
    elif args.of is not None:
        print(domain_id)
    else:
        print(domain)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "domain",
        help="print the relay host for a tunnel-server domain id, or the id of a relay host",
        description="Print the tunnel-server (relay) host name for a 16-bit domain id: 0 is "
        "cable.ua5v.com, 1 is cable.auth.com, 256..65535 are hashed names; 2..255 are reserved "
        "and rejected (exit code 2). With --of HOST, print the domain id whose host name is HOST "
        "(exit code 1 if there is none).",
    )
    parser.add_argument(
        "domain_id", nargs="?", metavar="ID", help="domain id, decimal or 0x-prefixed hex"
    )
    parser.add_argument(
        "--of",
        metavar="HOST",
        help="print the domain id of this relay host name (or wss:// URL) instead "
        "(default: none, print the host of ID)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"domain_id": N, "domain": "..."} (default: the bare host name or id)',
    )
    parser.set_defaults(func=_run)
