"""Scenario (d): one complete hybrid QR transaction through the relay, with real cryptography.

Both ends live in the load generator: the phone opens ``/cable/new``, derives its EID and
encrypts the BLE advert; the desktop decrypts it (as if scanned over BLE), joins with
``/cable/connect``, and the two run the Noise KNpsk0 handshake, the post-handshake message
carrying getInfo, one encrypted CTAP exchange (authenticatorGetInfo) and the close. Everything the
endpoints compute counts as load-generator CPU, so relay CPU / (relay + endpoints) is the relay's
share of the cost of a real transaction.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import cbor2

from bench.wire import Dialer, WireError
from hybrid import keys
from hybrid.ble.eid import Eid, decrypt_advert, encrypt_advert
from hybrid.tunnel.crypter import Crypter
from hybrid.tunnel.messages import (
    MessageType,
    encode_message,
    encode_post_handshake,
    parse_message,
    parse_post_handshake,
)
from hybrid.tunnel.noise import Initiator, Responder

GET_INFO_COMMAND = b"\x04"
CTAP_OK = b"\x00"


def authenticator_get_info() -> bytes:
    """The software authenticator's getInfo map, or an equivalent one if it cannot be built."""
    try:
        from hybrid.phone import CredentialStore, SoftwareAuthenticator, auto_approver

        with tempfile.TemporaryDirectory() as data_dir:
            store = CredentialStore(Path(data_dir))
            return SoftwareAuthenticator(store, auto_approver()).get_info()
    except Exception:  # the benchmark only needs realistic bytes
        return cbor2.dumps({1: ["FIDO_2_0", "FIDO_2_1"], 3: bytes(16), 9: ["hybrid", "internal"]})


class Transaction:
    """Runs transactions over one relay; ``run`` is one complete QR-flow session."""

    def __init__(self, dialer: Dialer) -> None:
        self.dialer = dialer
        self.get_info = authenticator_get_info()

    async def run(self) -> None:
        # Desktop: a fresh QR identity key and secret, as shown in a new QR code.
        identity = keys.generate_private_key()
        qr_secret = os.urandom(16)
        eid_key = keys.eid_key(qr_secret)
        tunnel_id = keys.tunnel_id(qr_secret)

        # Phone: reads the QR, opens the tunnel, advertises its EID.
        phone = await self.dialer.new(tunnel_id)
        desktop = None
        try:
            eid = Eid.create(bytes.fromhex(phone.routing_id), 0)
            advert = encrypt_advert(eid_key, eid.pack())
            phone_psk = keys.psk(qr_secret, eid.pack())

            # Desktop: sees the advert, joins the tunnel the EID names.
            plaintext = decrypt_advert(eid_key, advert)
            if plaintext is None:
                raise WireError("desktop could not decrypt the advert")
            seen = Eid.parse(plaintext)
            desktop = await self.dialer.connect(seen.routing_id.hex().upper(), tunnel_id)
            initiator = Initiator.qr(identity, keys.psk(qr_secret, plaintext))
            desktop.send(initiator.write_message())

            responder = Responder.qr(keys.public_key_bytes(identity), phone_psk)
            responder.read_message(await phone.recv())
            reply, phone_keys = responder.write_message()
            phone_crypter = Crypter.from_handshake(phone_keys)
            phone.send(reply)
            phone.send(phone_crypter.encrypt(encode_post_handshake(self.get_info)))

            desktop_crypter = Crypter.from_handshake(initiator.read_message(await desktop.recv()))
            hello = parse_post_handshake(desktop_crypter.decrypt_first(await desktop.recv()))
            if hello.get_info != self.get_info:
                raise WireError("getInfo did not survive the tunnel")
            request = encode_message(MessageType.CTAP, GET_INFO_COMMAND)
            desktop.send(desktop_crypter.encrypt(request))

            kind, request = parse_message(phone_crypter.decrypt(await phone.recv()))
            if kind != MessageType.CTAP or request != GET_INFO_COMMAND:
                raise WireError("the CTAP request did not survive the tunnel")
            response = encode_message(MessageType.CTAP, CTAP_OK + self.get_info)
            phone.send(phone_crypter.encrypt(response))
            phone.close()

            kind, answer = parse_message(desktop_crypter.decrypt(await desktop.recv()))
            if kind != MessageType.CTAP or answer[:1] != CTAP_OK:
                raise WireError("the CTAP response did not survive the tunnel")
            await phone.closed
            await desktop.closed
        except BaseException:
            phone.abort()
            if desktop is not None:
                desktop.abort()
            raise
