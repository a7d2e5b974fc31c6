"""Independent hybrid phone (authenticator), built only from docs/protocol.md.

Validates a FIDO:/ URL (§3.5), opens ``/cable/new/<TID>`` (§7), reads the routing id, advertises
``FF F9`` + advert on the loopback BLE medium every 100 ms until the first WebSocket message
(§6, README), answers KNpsk0 (§8), sends ``{1: getInfo, 3: ["ctap"]}`` (§10.1) and answers one
makeCredential/getAssertion with a minimal ES256 software authenticator ("none" attestation),
then closes without sending shutdown (§10.2). Credentials live in a JSON file.

Run standalone: ``python -m tests.interop.peer_phone --relay ws://... --ble-port N --state F URL``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import trio
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from trio_websocket import ConnectionClosed, open_websocket_url

from . import (
    ROUTING_ID_HEADER,
    SUBPROTOCOL,
    UUID_FFF9,
    Crypter,
    PeerError,
    advert_encrypt,
    cbor_decode_one,
    cbor_encode,
    eid_key,
    is_ctap_canonical,
    kn_respond,
    new_key,
    parse_fido_url,
    psk,
    random_bytes,
    recv_binary,
    tunnel_id,
)

AAGUID = bytes(16)
OK, INVALID_CBOR, MISSING_PARAMETER, EXCLUDED = 0x00, 0x12, 0x14, 0x19
UNSUPPORTED_ALGORITHM, NO_CREDENTIALS, INVALID_COMMAND = 0x26, 0x2E, 0x01

GET_INFO = {
    1: ["FIDO_2_0", "FIDO_2_1"],
    3: AAGUID,
    4: {"rk": True, "up": True, "uv": True, "plat": False},
    9: ["hybrid", "internal"],
    10: [{"alg": -7, "type": "public-key"}],
}


@dataclass
class PhoneResult:
    qr: dict
    command: int
    request: dict
    status: int
    noncanonical: bool
    messages_after: list = field(default_factory=list)


class Store:
    """Credentials by hex id in a JSON file, so a later process or task can sign in."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.creds: dict = json.loads(path.read_text()) if path.exists() else {}

    def save(self) -> None:
        self.path.write_text(json.dumps(self.creds))

    def add(self, rp_id: str, user: dict) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
        cred_id = random_bytes(32)
        key = new_key()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.creds[cred_id.hex()] = {
            "rp_id": rp_id,
            "key": pem.decode(),
            "user_id": user["id"].hex(),
            "counter": 0,
        }
        self.save()
        return cred_id, key

    def key(self, cred_id: bytes) -> ec.EllipticCurvePrivateKey:
        pem = self.creds[cred_id.hex()]["key"].encode()
        return serialization.load_pem_private_key(pem, None)  # type: ignore[return-value]


def auth_data(rp_id: str, flags: int, counter: int, attested: bytes = b"") -> bytes:
    rp_hash = hashlib.sha256(rp_id.encode()).digest()
    return rp_hash + bytes([flags]) + struct.pack(">I", counter) + attested


def make_credential(store: Store, req: dict) -> tuple[int, dict | None]:
    cdh, rp, user, params = req.get(1), req.get(2), req.get(3), req.get(4)
    if not isinstance(cdh, bytes) or not isinstance(rp, dict) or not isinstance(user, dict):
        return MISSING_PARAMETER, None
    # One deployed phone parser requires the full entities (§11.1).
    if not all(isinstance(rp.get(k), str) for k in ("id", "name")):
        return MISSING_PARAMETER, None
    if not isinstance(user.get("id"), bytes) or not all(
        isinstance(user.get(k), str) for k in ("name", "displayName")
    ):
        return MISSING_PARAMETER, None
    if not isinstance(params, list) or not any(
        p.get("alg") == -7 and p.get("type") == "public-key" for p in params
    ):
        return UNSUPPORTED_ALGORITHM, None
    for excluded in req.get(5) or []:
        entry = store.creds.get(excluded.get("id", b"").hex())
        if entry and entry["rp_id"] == rp["id"]:
            return EXCLUDED, None
    cred_id, key = store.add(rp["id"], user)
    nums = key.public_key().public_numbers()
    cose = cbor_encode(
        {1: 2, 3: -7, -1: 1, -2: nums.x.to_bytes(32, "big"), -3: nums.y.to_bytes(32, "big")}
    )
    attested = AAGUID + struct.pack(">H", len(cred_id)) + cred_id + cose
    auth = auth_data(rp["id"], 0x01 | 0x04 | 0x40, 0, attested)
    return OK, {1: "none", 2: auth, 3: {}}


def get_assertion(store: Store, req: dict) -> tuple[int, dict | None]:
    rp_id, cdh, allow = req.get(1), req.get(2), req.get(3) or []
    if not isinstance(rp_id, str) or not isinstance(cdh, bytes):
        return MISSING_PARAMETER, None
    if allow:
        ids = [a.get("id", b"").hex() for a in allow]
    else:
        ids = list(store.creds)
    ids = [i for i in ids if i in store.creds and store.creds[i]["rp_id"] == rp_id]
    if not ids:
        return NO_CREDENTIALS, None
    cid = ids[0]
    entry = store.creds[cid]
    entry["counter"] += 1
    store.save()
    auth = auth_data(rp_id, 0x01 | 0x04, entry["counter"])
    sig = store.key(bytes.fromhex(cid)).sign(auth + cdh, ec.ECDSA(hashes.SHA256()))
    resp = {1: {"id": bytes.fromhex(cid), "type": "public-key"}, 2: auth, 3: sig}
    if not allow:
        resp[4] = {"id": bytes.fromhex(entry["user_id"])}
        resp[6] = True
    return OK, resp


def linking_info(desktop_identity: ec.EllipticCurvePublicKey, handshake_hash: bytes) -> dict:
    """§12.1 linking information with a valid §12.3 handshake signature."""
    phone_key = new_key()
    shared = phone_key.exchange(ec.ECDH(), desktop_identity)
    return {
        1: random_bytes(40),
        2: random_bytes(8),
        3: random_bytes(32),
        4: phone_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        ),
        5: "Independent phone",
        6: hmac.new(shared, handshake_hash, hashlib.sha256).digest(),
    }


def update_message(size: int, link: dict | None = None) -> bytes:
    for pad in range(size, -1, -1):
        body: dict = {0: bytes(pad)}
        if link is not None:
            body[1] = link
        plaintext = b"\x02" + cbor_encode(body)
        if len(plaintext) <= size:
            return plaintext
    raise AssertionError("unreachable")


async def advertise(sock: trio.socket.SocketType, port: int, datagrams: list[bytes]) -> None:
    while True:
        for datagram in datagrams:
            await sock.sendto(datagram, ("127.0.0.1", port))
        await trio.sleep(0.1)


async def run_phone(
    url: str,
    relay: str,
    ble_port: int,
    state: Path,
    *,
    wait_for_shutdown: float = 0.0,
    send_update: bool = False,
    domain_id: int = 0,
    hex_case: str = "upper",
    uuid: bytes = UUID_FFF9,
    suffix: bytes = b"",
    junk: bool = False,
    hang_up: bool = False,
    force_status: int | None = None,
    linking: str | None = None,
    features: list[str] | None = ["ctap"],  # noqa: B006 - never mutated
    post_extra: dict | None = None,
) -> PhoneResult:
    """Serve one transaction for the desktop that showed ``url``."""
    qr = parse_fido_url(url)
    tid = tunnel_id(qr.secret)
    store = Store(state)
    tid_hex = tid.hex().upper() if hex_case == "upper" else tid.hex()
    target = f"{relay.rstrip('/')}/cable/new/{tid_hex}"
    async with open_websocket_url(target, subprotocols=[SUBPROTOCOL]) as ws:
        if ws.subprotocol != SUBPROTOCOL:
            raise PeerError(f"relay selected subprotocol {ws.subprotocol!r}")
        values = [v for k, v in ws.handshake_headers if k.decode().lower() == ROUTING_ID_HEADER]
        if len(values) != 1:
            raise PeerError(f"{len(values)} routing id headers")
        rid_text = values[0].decode()
        if len(rid_text) != 6:
            raise PeerError(f"routing id {rid_text!r}")
        routing_id = bytes.fromhex(rid_text)
        plain = b"\x00" + random_bytes(10) + routing_id + domain_id.to_bytes(2, "little")
        advert = advert_encrypt(eid_key(qr.secret), plain)

        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock:
            async with trio.open_nursery() as nursery:
                datagrams = [uuid + advert + suffix]
                if junk:
                    # Other phones' adverts, stray traffic, and correctly MACed adverts whose
                    # reserved byte or domain id is invalid (§6.2 step 4) must all be ignored.
                    key64 = eid_key(qr.secret)
                    bad_reserved = advert_encrypt(key64, b"\x01" + plain[1:])
                    bad_domain = advert_encrypt(key64, plain[:14] + (7).to_bytes(2, "little"))
                    datagrams[:0] = [
                        b"\xff",
                        b"\x12\x34" + advert,
                        uuid + random_bytes(20),
                        uuid + bad_reserved,
                        uuid + bad_domain,
                    ]
                nursery.start_soon(advertise, sock, ble_port, datagrams)
                msg1 = await recv_binary(ws)
                nursery.cancel_scope.cancel()

        msg2, write_key, read_key, hh = kn_respond(qr.identity, psk(qr.secret, plain), msg1)
        await ws.send_message(msg2)
        crypter = Crypter(write_key, read_key)
        post: dict = {1: cbor_encode(GET_INFO)}
        if features is not None:
            post[3] = features
            if "ctap" not in features:
                del post[1]  # §10.1: key 1 only with CTAP
        post.update(post_extra or {})
        if linking == "post-handshake":
            post[2] = linking_info(qr.identity, hh)  # older phones (§10.1 key 2)
        await ws.send_message(crypter.encrypt(cbor_encode(post)))
        if send_update or linking == "update":
            # Like the deployed Android phone: an update padded to a 512-byte plaintext (§10.2).
            link = linking_info(qr.identity, hh) if linking == "update" else None
            await ws.send_message(crypter.encrypt(update_message(512, link)))

        while True:
            plaintext = crypter.decrypt(await recv_binary(ws))
            if plaintext[:1] == b"\x02":
                cbor_decode_one(plaintext[1:])
                continue
            if plaintext == b"\x00":
                # §11.1: the desktop gave up before sending a request; nothing to answer.
                return PhoneResult(qr.raw, -1, {}, -1, False, [plaintext])
            if plaintext[:1] != b"\x01" or len(plaintext) < 2:
                raise PeerError(f"expected a CTAP message, got {plaintext[:2].hex()}")
            break
        command, body = plaintext[1], plaintext[2:]
        noncanonical = False
        request: dict = {}
        if command in (0x01, 0x02):
            try:
                request = cbor_decode_one(body)
                noncanonical = not is_ctap_canonical(body)
            except PeerError:
                noncanonical = True
        if noncanonical:
            status, resp = INVALID_CBOR, None
        elif command == 0x01:
            status, resp = make_credential(store, request)
        elif command == 0x02:
            status, resp = get_assertion(store, request)
        elif command == 0x04:
            status, resp = OK, GET_INFO
        else:
            status, resp = INVALID_COMMAND, None
        if hang_up:
            # The user dismissed the sheet: no CTAP response at all (§11.2).
            return PhoneResult(qr.raw, command, request, -1, noncanonical)
        if force_status is not None:
            status, resp = force_status, None
        out = bytes([0x01, status]) + (cbor_encode(resp) if resp is not None else b"")
        await ws.send_message(crypter.encrypt(out))

        after: list = []
        if wait_for_shutdown:
            with trio.move_on_after(wait_for_shutdown):
                try:
                    while True:
                        after.append(crypter.decrypt(await recv_binary(ws)))
                        if after[-1] == b"\x00":
                            break
                except ConnectionClosed:
                    pass
    return PhoneResult(qr.raw, command, request, status, noncanonical, after)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relay", required=True)
    parser.add_argument("--ble-port", type=int, required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("url")
    args = parser.parse_args(argv)
    result = trio.run(run_phone, args.url, args.relay, args.ble_port, args.state)
    print(json.dumps({"command": result.command, "status": result.status}), file=sys.stderr)
    return 0 if result.status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
