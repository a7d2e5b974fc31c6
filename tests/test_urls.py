"""Tunnel URL builders (docs/protocol.md section 7.1)."""

from __future__ import annotations

import base64

import interop
import pytest

from hybrid.tunnel.domains import UnknownTunnelDomainError
from hybrid.tunnel.urls import (
    CLIENT_PAYLOAD_HEADER,
    ROUTING_ID_HEADER,
    ROUTING_ID_LEN,
    SIGNAL_CONNECTION_HEADER,
    SUBPROTOCOL,
    TUNNEL_ID_LEN,
    TunnelAddressError,
    connect_url,
    contact_url,
    new_url,
)

# A captured session (kanidm/webauthn-rs, webauthn-authenticator-rs/src/cable/discovery.rs).
TID = bytes.fromhex("367cbbf5f5085df4098476afe4b9b1d2")
RID = bytes([2, 101, 85])


def test_wire_vocabulary() -> None:
    # Checked against the independent peers' spelling (tests/interop), not our own literals.
    assert SUBPROTOCOL == interop.SUBPROTOCOL
    assert ROUTING_ID_HEADER.lower() == interop.ROUTING_ID_HEADER
    assert CLIENT_PAYLOAD_HEADER.lower() == "x-cable-client-payload"
    assert SIGNAL_CONNECTION_HEADER.lower() == "x-cable-signal-connection"
    assert (TUNNEL_ID_LEN, ROUTING_ID_LEN) == (len(TID), len(RID))  # the captured session's


def test_connect_url_uses_upper_case_hex_like_browsers() -> None:
    assert connect_url(RID, TID, domain_id=0) == (
        "wss://cable.ua5v.com/cable/connect/026555/367CBBF5F5085DF4098476AFE4B9B1D2"
    )
    assert connect_url(RID, TID, domain_id=266).startswith("wss://cable.wufkweyy3uaxb.com/")


def test_new_url() -> None:
    assert new_url(TID, domain_id=1) == (
        "wss://cable.auth.com/cable/new/367CBBF5F5085DF4098476AFE4B9B1D2"
    )


def test_base_url_replaces_the_domain_for_a_local_relay() -> None:
    assert new_url(TID, base_url="ws://127.0.0.1:8080/") == (
        "ws://127.0.0.1:8080/cable/new/367CBBF5F5085DF4098476AFE4B9B1D2"
    )
    assert connect_url(RID, TID, base_url="ws://127.0.0.1:1").endswith(
        "/026555/" + TID.hex().upper()
    )


def test_contact_url_is_unpadded_base64url() -> None:
    contact = bytes(range(250, 256)) + b"\xfb\xff"
    url = contact_url(contact, domain_id=0)
    encoded = url.rsplit("/", 1)[1]
    assert "=" not in encoded and "+" not in encoded and "/" not in encoded
    assert base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)) == contact
    assert url.startswith("wss://cable.ua5v.com/cable/contact/")


@pytest.mark.parametrize(
    "call",
    [
        lambda: new_url(TID[:15], domain_id=0),
        lambda: connect_url(RID[:2], TID, domain_id=0),
        lambda: connect_url(RID, TID + b"\x00", domain_id=0),
        lambda: contact_url(b"", domain_id=0),
        lambda: new_url(TID),
        lambda: new_url(TID, base_url="http://127.0.0.1:80"),
        lambda: new_url(TID.hex(), domain_id=0),  # type: ignore[arg-type]
        lambda: connect_url("0a1b2c", TID, domain_id=0),  # type: ignore[arg-type]
        lambda: contact_url("contact", domain_id=0),  # type: ignore[arg-type]
    ],
)
def test_bad_addresses_raise_tunnel_address_error(call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TunnelAddressError):
        call()


def test_reserved_domain_id_is_rejected() -> None:
    with pytest.raises(UnknownTunnelDomainError):
        new_url(TID, domain_id=2)
