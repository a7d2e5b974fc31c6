"""Independent hybrid desktop (initiator), built only from docs/protocol.md.

Shows a Chrome-shaped QR (§3.2), scans the loopback BLE medium (UDP, README), connects
``/cable/connect/<RID>/<TID>`` (§7), runs KNpsk0 (§8), reads the post-handshake map (§10.1), sends
one canonical CTAP2 request (§11), sends shutdown and closes. Verifies the answer itself:
attestationObject "none" with an ES256 COSE key, or an ECDSA assertion with a rising counter.

Run standalone: ``python -m tests.interop.peer_desktop --relay ws://127.0.0.1:P --ble-port N mc``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from trio_websocket import ConnectionClosed, open_websocket_url

from . import (
    SUBPROTOCOL,
    UUID_FDE2,
    UUID_FFF9,
    Crypter,
    KNInitiator,
    PeerError,
    advert_trial_decrypt,
    cbor_decode_one,
    cbor_encode,
    eid_key,
    fido_url,
    is_ctap_canonical,
    new_key,
    psk,
    pub33,
    qr_map,
    random_bytes,
    recv_binary,
    tunnel_id,
)

FLAG_UP, FLAG_UV, FLAG_AT = 0x01, 0x04, 0x40


@dataclass
class Credential:
    rp_id: str
    credential_id: bytes
    public_key: ec.EllipticCurvePublicKey
    counter: int
    user_id: bytes


@dataclass
class DesktopResult:
    url: str
    get_info: dict
    features: list
    status: int
    response: dict
    credential: Credential | None
    counter: int
    updates: int
    advert_uuid: bytes = b""
    advert_len: int = 0
    domain_id: int = -1


def parse_auth_data(auth: bytes, rp_id: str) -> tuple[int, int, bytes]:
    if len(auth) < 37:
        raise PeerError("authData too short")
    if auth[:32] != hashlib.sha256(rp_id.encode()).digest():
        raise PeerError("rpIdHash mismatch")
    flags = auth[32]
    if not flags & FLAG_UP or not flags & FLAG_UV:
        raise PeerError(f"UP/UV not set (flags {flags:#04x})")
    (counter,) = struct.unpack(">I", auth[33:37])
    return flags, counter, auth[37:]


def cose_es256(cose: dict) -> ec.EllipticCurvePublicKey:
    if cose.get(1) != 2 or cose.get(3) != -7 or cose.get(-1) != 1:
        raise PeerError(f"not an ES256 COSE key: {cose!r}")
    x, y = cose.get(-2), cose.get(-3)
    if not (isinstance(x, bytes) and isinstance(y, bytes) and len(x) == len(y) == 32):
        raise PeerError("bad COSE coordinates")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)


def verify_make_credential(resp: dict, rp_id: str, user_id: bytes) -> Credential:
    if resp.get(1) != "none":
        raise PeerError(f"attestation fmt {resp.get(1)!r}, expected 'none'")
    if resp.get(3) != {}:
        raise PeerError("'none' attestation must have an empty attStmt")
    auth = resp.get(2)
    if not isinstance(auth, bytes):
        raise PeerError("authData missing")
    flags, counter, rest = parse_auth_data(auth, rp_id)
    if not flags & FLAG_AT:
        raise PeerError("AT flag not set")
    if len(rest) < 18:
        raise PeerError("attested credential data too short")
    (cid_len,) = struct.unpack(">H", rest[16:18])
    cred_id = rest[18 : 18 + cid_len]
    if len(cred_id) != cid_len:
        raise PeerError("credential id truncated")
    key_bytes = rest[18 + cid_len :]
    if flags & 0x80:
        raise PeerError("unexpected extension data")
    public_key = cose_es256(cbor_decode_one(key_bytes))
    return Credential(rp_id, cred_id, public_key, counter, user_id)


def verify_get_assertion(resp: dict, cred: Credential, client_data_hash: bytes) -> int:
    auth, sig = resp.get(2), resp.get(3)
    if not isinstance(auth, bytes) or not isinstance(sig, bytes):
        raise PeerError("assertion lacks authData or signature")
    c = resp.get(1)
    if c is not None and c.get("id") != cred.credential_id:
        raise PeerError("assertion for another credential")
    _, counter, rest = parse_auth_data(auth, cred.rp_id)
    if rest:
        raise PeerError("unexpected trailing authData")
    try:
        cred.public_key.verify(sig, auth + client_data_hash, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise PeerError("assertion signature does not verify") from exc
    if not (counter > cred.counter or counter == cred.counter == 0):
        raise PeerError(f"signature counter did not increase ({cred.counter} -> {counter})")
    return counter


def build_request(
    mode: str,
    rp_id: str,
    user: str,
    user_id: bytes,
    cdh: bytes,
    cred: Credential | None,
    discoverable: bool = False,
    exclude: list[bytes] | None = None,
) -> bytes:
    if mode == "mc":
        params = {
            1: cdh,
            2: {"id": rp_id, "name": rp_id},
            3: {"id": user_id, "name": user, "displayName": user},
            4: [{"type": "public-key", "alg": -7}],
            7: {"rk": True, "uv": True},
        }
        if exclude:
            params[5] = [{"type": "public-key", "id": cid} for cid in exclude]
        command = 0x01
    else:
        params = {1: rp_id, 2: cdh, 5: {"uv": True}}
        if cred is not None and not discoverable:
            params[3] = [{"type": "public-key", "id": cred.credential_id}]
        command = 0x02
    body = cbor_encode(params)
    if not is_ctap_canonical(body):
        raise AssertionError("own request is not CTAP2 canonical")
    return bytes([command]) + body


async def scan_for_advert(sock: trio.socket.SocketType, key64: bytes) -> tuple[bytes, bytes, bytes]:
    """Returns (service UUID, service data, EID plaintext) of the first advert that is ours."""
    tried: set[bytes] = set()
    while True:
        data = await sock.recv(2048)
        if len(data) < 2 or data[:2] not in (UUID_FFF9, UUID_FDE2):
            continue
        service_data = data[2:]
        if service_data in tried:
            continue
        tried.add(service_data)
        plain = advert_trial_decrypt(key64, service_data)
        if plain is not None:
            return data[:2], service_data, plain


async def run_desktop(
    relay: str,
    ble_port: int,
    mode: str,
    *,
    rp_id: str = "example.com",
    user: str = "alice",
    credential: Credential | None = None,
    on_url: Callable[[str], Any] | None = None,
    hex_case: str = "upper",
    linger: float = 0.3,
    discoverable: bool = False,
    qr_variant: Callable[[dict], dict] | None = None,
    url_prefix: str = "FIDO:/",
    exclude: list[bytes] | None = None,
    send_update_first: bool = False,
) -> DesktopResult:
    """One QR transaction; ``mode`` is "mc" (register) or "ga" (sign in with ``credential``).

    ``discoverable`` sends an empty allowList; ``exclude`` fills the excludeList;
    ``send_update_first`` sends a desktop update message (§10.2) before the request;
    ``qr_variant`` edits the QR map (other desktops omit optional keys or add unknown ones) and
    ``url_prefix`` replaces ``FIDO:/``.
    """
    identity = new_key()
    secret = random_bytes(16)
    qr = cbor_decode_one(qr_map(pub33(identity.public_key()), secret, int(time.time()), mode))
    if qr_variant is not None:
        qr = qr_variant(qr)
    url = url_prefix + fido_url(cbor_encode(qr))[len("FIDO:/") :]
    key64 = eid_key(secret)
    tid = tunnel_id(secret)

    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", ble_port))
        if on_url is not None:
            on_url(url)
        uuid, service_data, plain = await scan_for_advert(sock, key64)
    routing_id = plain[11:14]
    rid_hex, tid_hex = routing_id.hex(), tid.hex()
    if hex_case == "upper":
        rid_hex, tid_hex = rid_hex.upper(), tid_hex.upper()
    noise = KNInitiator(identity, psk(secret, plain))

    user_id = credential.user_id if credential else random_bytes(16)
    cdh = random_bytes(32)
    updates = 0
    target = f"{relay.rstrip('/')}/cable/connect/{rid_hex}/{tid_hex}"
    async with open_websocket_url(target, subprotocols=[SUBPROTOCOL]) as ws:
        if ws.subprotocol != SUBPROTOCOL:
            raise PeerError(f"relay selected subprotocol {ws.subprotocol!r}")
        await ws.send_message(noise.message1())
        write_key, read_key, _ = noise.read_message2(await recv_binary(ws))
        crypter = Crypter(write_key, read_key)

        post = cbor_decode_one(crypter.decrypt(await recv_binary(ws)))
        if not isinstance(post, dict):
            raise PeerError("post-handshake message is not a map")
        features = post.get(3, ["ctap"])
        if "ctap" not in features or not isinstance(post.get(1), bytes):
            raise PeerError(f"phone offers no CTAP: {post!r}")
        info = cbor_decode_one(post[1])
        versions = info.get(1, [])
        if not isinstance(info, dict) or not {"FIDO_2_0", "FIDO_2_1"} & set(versions):
            raise PeerError(f"bad getInfo {info!r}")

        request = build_request(mode, rp_id, user, user_id, cdh, credential, discoverable, exclude)
        if send_update_first:
            await ws.send_message(crypter.encrypt(b"\x02" + cbor_encode({0: bytes(40)})))
        await ws.send_message(crypter.encrypt(b"\x01" + request))
        while True:
            plaintext = crypter.decrypt(await recv_binary(ws))
            if not plaintext:
                raise PeerError("empty message")
            if plaintext[0] == 0x02:
                cbor_decode_one(plaintext[1:])
                updates += 1
                continue
            if plaintext[0] != 0x01:
                raise PeerError(f"unexpected message type {plaintext[0]:#04x}")
            break
        status = plaintext[1]
        response = cbor_decode_one(plaintext[2:]) if status == 0 else {}
        try:
            await ws.send_message(crypter.encrypt(b"\x00"))
            with trio.move_on_after(linger):
                while True:
                    late = crypter.decrypt(await recv_binary(ws))
                    if late[:1] != b"\x02":
                        raise PeerError(f"late message of type {late[:1].hex()}")
                    updates += 1
        except ConnectionClosed:
            pass

    counter = -1
    new_cred = None
    if status == 0 and mode == "mc":
        new_cred = verify_make_credential(response, rp_id, user_id)
        counter = new_cred.counter
    elif status == 0:
        if credential is None:
            raise PeerError("need a credential to verify an assertion")
        if discoverable:
            # Empty allowList: credential (key 1) and user (key 4) are required (§11.1).
            if response.get(1, {}).get("id") != credential.credential_id:
                raise PeerError("discoverable assertion lacks the credential id")
            if response.get(4, {}).get("id") != credential.user_id:
                raise PeerError("discoverable assertion lacks the user handle")
        counter = verify_get_assertion(response, credential, cdh)
        credential.counter = counter
    return DesktopResult(
        url,
        info,
        features,
        status,
        response,
        new_cred or credential,
        counter,
        updates,
        uuid,
        len(service_data),
        int.from_bytes(plain[14:16], "little"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relay", required=True)
    parser.add_argument("--ble-port", type=int, required=True)
    parser.add_argument("--rp-id", default="example.com")
    parser.add_argument("mode", choices=["mc"])
    args = parser.parse_args(argv)

    def show(url: str) -> None:
        print(url, flush=True)

    result = trio.run(lambda: run_desktop(args.relay, args.ble_port, args.mode, on_url=show))
    print(json.dumps({"status": result.status, "counter": result.counter}), file=sys.stderr)
    return 0 if result.status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
