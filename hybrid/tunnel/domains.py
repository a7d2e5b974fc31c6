"""Tunnel-server (relay) host names for the 16-bit domain id carried in adverts.

docs/protocol.md section 5. Ids 0 and 1 are the two assigned relays, 2..255 are reserved (invalid
today), and every id from 256 up names a host derived by hashing the id, which is how a new vendor
gets a relay without a registry.
"""

from __future__ import annotations

import hashlib

from hybrid.errors import UsageError

ASSIGNED_DOMAINS = ("cable.ua5v.com", "cable.auth.com")
FIRST_HASHED_ID = 256
MAX_DOMAIN_ID = 0xFFFF

_HASH_PREFIX = b"caBLEv2 tunnel server domain"
_TLDS = (".com", ".org", ".net", ".info")
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"


class UnknownTunnelDomainError(UsageError):
    """A domain id that names no relay: reserved 2..255, outside 0..65535, or not an integer."""


def is_known_domain_id(domain_id: int) -> bool:
    """True for 0, 1 and 256..65535: the ids a desktop can turn into a host name."""
    if isinstance(domain_id, bool) or not isinstance(domain_id, int):
        return False
    return 0 <= domain_id < len(ASSIGNED_DOMAINS) or FIRST_HASHED_ID <= domain_id <= MAX_DOMAIN_ID


def _hashed_domain(domain_id: int) -> str:
    # The trailing NUL is part of the hash input (31 bytes in total), as deployed.
    data = _HASH_PREFIX + domain_id.to_bytes(2, "little") + b"\x00"
    value = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
    tld = _TLDS[value & 3]
    value >>= 2
    label = []
    while value:
        label.append(_BASE32[value & 31])
        value >>= 5
    return "cable." + "".join(label) + tld


def tunnel_domain(domain_id: int) -> str:
    """Host name of the relay for ``domain_id``; raises ``UnknownTunnelDomainError`` otherwise."""
    if isinstance(domain_id, bool) or not isinstance(domain_id, int):
        raise UnknownTunnelDomainError(
            f"tunnel-server domain id must be an integer, got {domain_id!r}"
        )
    if not 0 <= domain_id <= MAX_DOMAIN_ID:
        raise UnknownTunnelDomainError(
            f"tunnel-server domain id {domain_id} is outside 0..{MAX_DOMAIN_ID}"
        )
    if domain_id < len(ASSIGNED_DOMAINS):
        return ASSIGNED_DOMAINS[domain_id]
    if domain_id < FIRST_HASHED_ID:
        raise UnknownTunnelDomainError(
            f"tunnel-server domain id {domain_id} is reserved (2..255 are not assigned)"
        )
    return _hashed_domain(domain_id)


# The hashed domain a phone names when the desktop does not know its assigned one (QR key 2 too
# small); any id >= 256 that the phone's operator also serves would do.
DEFAULT_FALLBACK_DOMAIN_ID = 0xCAB1


def domain_id_for_desktop(own_id: int, fallback_id: int, desktop_known_count: int) -> int:
    """The domain id a phone names in its advert, given what the desktop's QR says it knows.

    A desktop knows assigned ids ``0 .. key2 - 1`` (key 2 absent means none) and every hashed id.
    A phone whose own id is an assigned one the desktop does not know falls back to a hashed id it
    also operates (docs/protocol.md section 5, "phone rule").
    """
    if own_id >= FIRST_HASHED_ID or own_id < desktop_known_count:
        return own_id
    if fallback_id < FIRST_HASHED_ID:
        raise UnknownTunnelDomainError(
            f"fallback tunnel-domain id {fallback_id} must be a hashed id (>= {FIRST_HASHED_ID})"
        )
    return fallback_id


def domain_id_for_host(host: str) -> int | None:
    """The domain id whose relay host name is ``host`` (assigned or hashed), else ``None``.

    Hashed names cannot be inverted, so every hashed id is tried (65,280 SHA-256 computations,
    a few tens of milliseconds).
    """
    wanted = host.strip().lower().rstrip(".")
    if wanted in ASSIGNED_DOMAINS:
        return ASSIGNED_DOMAINS.index(wanted)
    if not wanted.startswith("cable.") or not wanted.endswith(_TLDS):
        return None  # every hashed name has this shape: skip the search
    for domain_id in range(FIRST_HASHED_ID, MAX_DOMAIN_ID + 1):
        if _hashed_domain(domain_id) == wanted:
            return domain_id
    return None
