"""Tunnel-server domain names for 16-bit domain ids (docs/protocol.md section 5)."""

from __future__ import annotations

import re

import pytest

from hybrid.cli.exit_codes import exit_code_for
from hybrid.errors import UsageError
from hybrid.tunnel.domains import (
    ASSIGNED_DOMAINS,
    UnknownTunnelDomainError,
    domain_id_for_desktop,
    is_known_domain_id,
    tunnel_domain,
)

HOSTNAME = re.compile(r"cable\.[a-z2-7]{10,13}\.(com|org|net|info)")


def test_assigned_ids_map_to_the_two_fixed_hosts() -> None:
    assert tunnel_domain(0) == "cable.ua5v.com"
    assert tunnel_domain(1) == "cable.auth.com"
    assert [tunnel_domain(i) for i in range(len(ASSIGNED_DOMAINS))] == list(ASSIGNED_DOMAINS)


def test_hashed_ids_match_independent_implementations() -> None:
    # 266 is Chromium's own vector (device/fido/cable/v2_handshake_unittest.cc); 0xF980 is from
    # kanidm/webauthn-rs (webauthn-authenticator-rs/src/cable/tunnel.rs), which also checks 266.
    assert tunnel_domain(266) == "cable.wufkweyy3uaxb.com"
    assert tunnel_domain(0xF980) == "cable.my4kstlhndi4c.net"


def test_every_hashed_id_is_a_valid_host_name() -> None:
    names = set()
    for domain_id in range(256, 65536):
        name = tunnel_domain(domain_id)
        assert HOSTNAME.fullmatch(name), (domain_id, name)
        names.add(name)
    assert len(names) == 65536 - 256
    assert not names & set(ASSIGNED_DOMAINS)


@pytest.mark.parametrize("domain_id", range(2, 256))
def test_reserved_ids_are_rejected(domain_id: int) -> None:
    with pytest.raises(UnknownTunnelDomainError, match="reserved"):
        tunnel_domain(domain_id)
    assert not is_known_domain_id(domain_id)


@pytest.mark.parametrize("domain_id", [-1, 65536, 1 << 40, "1", 1.0, None, True])
def test_out_of_range_and_non_integer_ids_are_rejected(domain_id: object) -> None:
    with pytest.raises(UnknownTunnelDomainError):
        tunnel_domain(domain_id)  # type: ignore[arg-type]
    assert not is_known_domain_id(domain_id)  # type: ignore[arg-type]


def test_unknown_domain_error_is_a_usage_error() -> None:
    assert issubclass(UnknownTunnelDomainError, UsageError)
    assert exit_code_for(UnknownTunnelDomainError("id 7 is reserved")) == 2


def test_is_known_domain_id() -> None:
    assert all(is_known_domain_id(i) for i in (0, 1, 256, 1000, 65535))


def test_phone_keeps_its_domain_when_the_desktop_knows_it():
    assert domain_id_for_desktop(0, 0xCAB1, 2) == 0
    assert domain_id_for_desktop(1, 0xCAB1, 2) == 1
    assert domain_id_for_desktop(300, 0xCAB1, 0) == 300


def test_phone_falls_back_to_a_hashed_domain_the_desktop_cannot_know_otherwise():
    assert domain_id_for_desktop(0, 0xCAB1, 0) == 0xCAB1
    assert domain_id_for_desktop(1, 0xCAB1, 1) == 0xCAB1


def test_fallback_domain_must_be_hashed():
    with pytest.raises(UnknownTunnelDomainError, match="hashed id"):
        domain_id_for_desktop(0, 5, 0)
