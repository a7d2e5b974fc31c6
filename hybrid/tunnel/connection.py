"""The rules of one hybrid transaction, per role, as sans-IO state machines (h11 / wsproto style).

``DesktopConnection`` and ``PhoneConnection`` know which tunnel message may come next, from the
first Noise message to the end of the transaction (protocol notes sections 8 to 11):

* **bytes in**: ``receive_data(message)`` takes one whole binary WebSocket message as it came off
  the tunnel; ``receive_close()`` says the tunnel closed. Either checks the message against the
  current state at once and raises ``TransactionError`` if the peer broke the rules;
* **events out**: ``next_event()`` returns the next event (small frozen dataclasses below) or
  ``NEED_DATA``; ``events()`` drains them;
* **bytes out**: every ``send_*`` method checks that this role may send that now, moves the state
  on and returns the bytes to write to the tunnel (already encrypted).

They cover the handshake too: the Noise messages (``hybrid.tunnel.noise``) are the first two
messages of the same conversation, and owning the handshake gives the desktop the handshake hash it
needs to verify linking information. Nothing in here touches a socket, a clock or a random source:
the Noise ephemeral keys are constructor arguments, so every byte is reproducible. Deadlines, the
BLE advert and the WebSocket belong to the trio shells (``hybrid.desktop.session``,
``hybrid.phone.session``).

Protocol revisions (section 10.4). The phone always speaks revision 1 (type byte + payload).
``DesktopConnection`` detects a revision-0 phone by the padded post-handshake message and then
frames requests and responses without a type byte; revision 0 has no shutdown and no update
messages, so ``send_shutdown`` returns ``b""`` there. Until the post-handshake message says
otherwise, revision 1 is assumed (every current phone, given QR key 4).

One exception type, ``TransactionError`` (a ``ProtocolError``), reports every illegal sequence,
whether the peer broke the protocol (``remote=True``: wrong message, bad CBOR, failed decryption)
or the caller asked for something the state does not allow (``remote=False``); its message says
what was expected. After a remote error the connection is ``FAILED`` and refuses everything.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, NoReturn

from cryptography.hazmat.primitives.asymmetric import ec

from hybrid import cbor as strict_cbor
from hybrid.errors import ProtocolError
from hybrid.tunnel.crypter import Crypter
from hybrid.tunnel.linking import LinkingInfo, parse_linking
from hybrid.tunnel.messages import (
    DEFAULT_FEATURES,
    MessageType,
    PostHandshake,
    encode_message,
    encode_post_handshake,
    encode_update,
    parse_message,
    parse_post_handshake,
    parse_update,
)
from hybrid.tunnel.noise import Initiator, PrivateKeyLike, PublicKeyLike, Responder

# ---- errors and events -----------------------------------------------------------------------


class TransactionError(ProtocolError):
    """A message (or a call) came at a point of the transaction where it is not allowed.

    ``remote`` is True when the peer's bytes broke the protocol, False when the caller asked for
    something the current state does not allow. ``expected`` says what the state allowed.
    """

    def __init__(self, message: str, *, expected: str, remote: bool) -> None:
        super().__init__(f"{message} (expected {expected})")
        self.expected = expected
        self.remote = remote


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""``next_event()`` returns this when every received message has been turned into events."""


@dataclass(frozen=True)
class ConnectionEvent:
    """Base of the events both connection objects produce."""


@dataclass(frozen=True)
class HandshakeComplete(ConnectionEvent):
    """The Noise handshake finished; ``handshake_hash`` binds linking information to it."""

    handshake_hash: bytes


@dataclass(frozen=True)
class PostHandshakeReceived(ConnectionEvent):
    """(Desktop) the phone's first message: getInfo, features, revision, legacy linking info."""

    post_handshake: PostHandshake
    revision: int
    linking: LinkingInfo | None


@dataclass(frozen=True)
class UpdateReceived(ConnectionEvent):
    """An update message; on the desktop ``linking`` holds validated linking information."""

    linking: LinkingInfo | None


@dataclass(frozen=True)
class CtapRequest(ConnectionEvent):
    """(Phone) the desktop's CTAP request: command byte and its CBOR parameters (maybe empty).

    ``cbor_error`` is set when the parameters are not strict CTAP2-canonical CBOR
    (``hybrid.cbor``): the phone must then answer ``CTAP2_ERR_INVALID_CBOR`` without looking
    further, as CTAP authenticators do, rather than hang up.
    """

    command: int
    parameters: bytes
    cbor_error: str | None = None

    @property
    def data(self) -> bytes:
        """The request as an authenticator takes it: command byte followed by the parameters."""
        return bytes([self.command]) + self.parameters


@dataclass(frozen=True)
class CtapResponse(ConnectionEvent):
    """(Desktop) the phone's CTAP response: status byte and the CBOR body (empty on error)."""

    status: int
    body: bytes


@dataclass(frozen=True)
class JsonMessage(ConnectionEvent):
    """A digital-credential JSON message (type 3), decoded to a Python value."""

    value: Any


@dataclass(frozen=True)
class ShutdownReceived(ConnectionEvent):
    """(Phone) the desktop will send nothing more: if the answer is not sent yet, it gave up."""

    answered: bool


@dataclass(frozen=True)
class TunnelClosed(ConnectionEvent):
    """The tunnel closed. ``complete`` says whether the transaction had already ended."""

    complete: bool


# ---- shared machinery ------------------------------------------------------------------------


class _Connection:
    _role: str
    _peer: str

    def __init__(self) -> None:
        self._events: deque[ConnectionEvent] = deque()
        self._crypter: Crypter | None = None
        self._handshake_hash: bytes | None = None

    @property
    def handshake_hash(self) -> bytes | None:
        """The Noise handshake hash once the handshake is done."""
        return self._handshake_hash

    def next_event(self) -> ConnectionEvent | _NeedData:
        """The next event produced by ``receive_data``/``receive_close``, or ``NEED_DATA``."""
        return self._events.popleft() if self._events else NEED_DATA

    def events(self) -> Iterator[ConnectionEvent]:
        """Every pending event, in order."""
        while self._events:
            yield self._events.popleft()

    def _remote(self, message: str, expected: str, cause: BaseException | None = None) -> NoReturn:
        self._set_failed()
        error = TransactionError(f"{self._peer} {message}", expected=expected, remote=True)
        if cause is not None:
            raise error from cause
        raise error

    def _local(self, message: str, expected: str) -> TransactionError:
        return TransactionError(f"{self._role} {message}", expected=expected, remote=False)

    def _set_failed(self) -> None:
        raise NotImplementedError

    def _decrypt(self, message: bytes, expected: str, *, first: bool = False) -> bytes:
        assert self._crypter is not None
        try:
            if first:
                return self._crypter.decrypt_first(message)
            return self._crypter.decrypt(message)
        except ProtocolError as exc:
            return self._remote(f"sent a message that does not decrypt: {exc}", expected, exc)

    def _encrypt(self, plaintext: bytes) -> bytes:
        assert self._crypter is not None
        return self._crypter.encrypt(plaintext)

    def _parse(self, plaintext: bytes, expected: str) -> tuple[MessageType, bytes]:
        try:
            return parse_message(plaintext)
        except ProtocolError as exc:
            return self._remote(f"sent an invalid message: {exc}", expected, exc)


def _decode_json(payload: bytes) -> Any:
    return json.loads(payload.decode("utf-8"))


# ---- desktop ---------------------------------------------------------------------------------


class DesktopState(Enum):
    """Where the desktop's transaction stands."""

    SEND_HANDSHAKE = "send Noise message 1"
    AWAIT_HANDSHAKE = "await Noise message 2"
    AWAIT_POST_HANDSHAKE = "await the post-handshake message"
    READY = "send the request"
    AWAIT_RESPONSE = "await the response"
    RESPONSE_RECEIVED = "response received; send shutdown"
    SHUT_DOWN = "shutdown sent; await late updates and the close"
    CLOSED = "closed"
    FAILED = "failed"


_DESKTOP_EXPECTED = {
    DesktopState.SEND_HANDSHAKE: "nothing from the phone before Noise message 1 is sent",
    DesktopState.AWAIT_HANDSHAKE: "Noise message 2",
    DesktopState.AWAIT_POST_HANDSHAKE: "the post-handshake message",
    DesktopState.READY: "an update message (no request was sent yet)",
    DesktopState.AWAIT_RESPONSE: "the response or an update message",
    DesktopState.RESPONSE_RECEIVED: "an update message or the close",
    DesktopState.SHUT_DOWN: "an update message, the close, or the reply still outstanding",
    DesktopState.CLOSED: "nothing: the tunnel is closed",
    DesktopState.FAILED: "nothing: the transaction failed",
}
_AFTER_HANDSHAKE = (
    DesktopState.AWAIT_POST_HANDSHAKE,
    DesktopState.READY,
    DesktopState.AWAIT_RESPONSE,
    DesktopState.RESPONSE_RECEIVED,
)


class DesktopConnection(_Connection):
    """The initiator's side of one QR-initiated transaction: one request, one response.

    ``identity_key`` is the desktop's per-QR identity key (its public half is QR key 0), ``psk``
    the handshake PSK derived from the QR secret and the advert (``hybrid.keys.psk``), and
    ``ephemeral_key`` the Noise ephemeral (pass ``hybrid.keys.generate_private_key()``; a fixed key
    makes every byte reproducible in tests).

    Sequence: ``send_handshake()`` -> ``receive_data(message 2)`` (``HandshakeComplete``) ->
    ``receive_data(post-handshake)`` (``PostHandshakeReceived``) -> ``send_request(ctap)`` or
    ``send_json(value)`` -> ``receive_data`` until ``CtapResponse``/``JsonMessage`` (with any
    ``UpdateReceived`` in between) -> ``send_shutdown()`` -> late ``UpdateReceived`` ->
    ``receive_close()``. ``send_shutdown()`` is also how the desktop gives up at any point after the
    handshake.
    """

    _role = "desktop"
    _peer = "phone"

    def __init__(
        self,
        identity_key: ec.EllipticCurvePrivateKey,
        psk: bytes,
        ephemeral_key: PrivateKeyLike,
    ) -> None:
        super().__init__()
        self._identity = identity_key
        self._initiator = Initiator.qr(identity_key, psk, ephemeral=ephemeral_key)
        self.state = DesktopState.SEND_HANDSHAKE
        self.revision = 1
        self.post_handshake: PostHandshake | None = None
        self._json_request = False
        self._outstanding = False  # a request was sent and its answer has not arrived
        self._failed_after_handshake = False  # a protocol error after a working handshake

    def _set_failed(self) -> None:
        self._failed_after_handshake = self.state in _AFTER_HANDSHAKE
        self.state = DesktopState.FAILED

    def _require(self, action: str, *allowed: DesktopState) -> None:
        if self.state not in allowed:
            raise self._local(
                f"cannot {action} now (state: {self.state.value})",
                " or ".join(s.value for s in allowed),
            )

    @property
    def features(self) -> tuple[str, ...]:
        """What the phone offers (``"ctap"``, ``"dc"``); empty before the post-handshake message."""
        return self.post_handshake.features if self.post_handshake else ()

    @property
    def may_send_shutdown(self) -> bool:
        """True when giving up now needs a shutdown message (after the handshake, not sent yet).

        Also after the phone broke the protocol, as long as the channel itself still works (the
        failure was in a decrypted message, not in decryption): telling the phone lets it dismiss
        its prompt at once.
        """
        if self.state in _AFTER_HANDSHAKE:
            return True
        return (
            self._failed_after_handshake and self._crypter is not None and not self._crypter.failed
        )

    # -- sending --

    def send_handshake(self) -> bytes:
        """Noise message 1 (81 bytes), the first message the desktop sends."""
        self._require("send Noise message 1", DesktopState.SEND_HANDSHAKE)
        message = self._initiator.write_message()
        self.state = DesktopState.AWAIT_HANDSHAKE
        return message

    def send_request(self, request: bytes) -> bytes:
        """The one CTAP request (command byte + CBOR parameters), encrypted and framed."""
        self._require("send a CTAP request", DesktopState.READY)
        if "ctap" not in self.features:
            raise self._local("cannot send a CTAP request", "a phone that listed 'ctap'")
        request = bytes(request)
        if not request:
            raise self._local("cannot send an empty CTAP request", "a command byte")
        plaintext = request if self.revision == 0 else encode_message(MessageType.CTAP, request)
        self.state = DesktopState.AWAIT_RESPONSE
        self._outstanding = True
        return self._encrypt(plaintext)

    def send_json(self, value: Any) -> bytes:
        """A digital-credential JSON request (type 3); only to a phone that listed ``"dc"``."""
        self._require("send a JSON request", DesktopState.READY)
        if "dc" not in self.features or self.revision == 0:
            raise self._local("cannot send a JSON message", "a phone that listed 'dc'")
        payload = json.dumps(value, separators=(",", ":")).encode("utf-8")
        self.state = DesktopState.AWAIT_RESPONSE
        self._json_request = True
        self._outstanding = True
        return self._encrypt(encode_message(MessageType.JSON, payload))

    def send_shutdown(self) -> bytes:
        """ "No more requests": after the response, or to give up; ``b""`` for revision 0.

        After a protocol error the state stays ``FAILED``; only ``may_send_shutdown`` allows it.
        """
        if not self.may_send_shutdown:
            self._require("send shutdown", *_AFTER_HANDSHAKE)
        if self.state is DesktopState.FAILED:
            self._failed_after_handshake = False  # said once; nothing else will be sent
        else:
            self.state = DesktopState.SHUT_DOWN
        if self.revision == 0:
            return b""
        return self._encrypt(encode_message(MessageType.SHUTDOWN))

    # -- receiving --

    def receive_data(self, message: bytes) -> None:
        """Process one whole tunnel message from the phone; events go to ``next_event()``."""
        message = bytes(message)
        state = self.state
        expected = _DESKTOP_EXPECTED[state]
        if state is DesktopState.AWAIT_HANDSHAKE:
            try:
                result = self._initiator.read_message(message)
            except ProtocolError as exc:
                self._remote(f"sent a bad Noise message 2: {exc}", expected, exc)
            self._crypter = Crypter.from_handshake(result)
            self._handshake_hash = result.handshake_hash
            self.state = DesktopState.AWAIT_POST_HANDSHAKE
            self._events.append(HandshakeComplete(result.handshake_hash))
            return
        if state is DesktopState.AWAIT_POST_HANDSHAKE:
            self._post_handshake(self._decrypt(message, expected, first=True), expected)
            return
        if state in (DesktopState.SEND_HANDSHAKE, DesktopState.CLOSED, DesktopState.FAILED):
            self._remote("sent a message out of turn", expected)
        plaintext = self._decrypt(message, expected)
        if self.revision == 0:
            if not self._outstanding:
                self._remote("sent a revision-0 message when no request was outstanding", expected)
            self._response(plaintext, expected)
            return
        kind, payload = self._parse(plaintext, expected)
        if kind is MessageType.UPDATE:
            self._events.append(UpdateReceived(self._update(payload, expected)))
        elif kind is MessageType.SHUTDOWN:
            self._remote("sent shutdown, which only a desktop may send", expected)
        elif not self._outstanding:
            what = "a second response" if state is not DesktopState.READY else "an unasked reply"
            self._remote(f"sent {what} ({kind.name} message)", expected)
        elif kind is MessageType.CTAP and not self._json_request:
            self._response(payload, expected)
        elif kind is MessageType.JSON and self._json_request:
            try:
                value = _decode_json(payload)
            except ValueError as exc:
                self._remote(f"sent a JSON message that is not JSON: {exc}", expected, exc)
            self._answered()
            self._events.append(JsonMessage(value))
        else:
            asked = "JSON" if self._json_request else "CTAP"
            self._remote(f"answered a {asked} request with a {kind.name} message", expected)

    def receive_close(self) -> None:
        """The tunnel closed; ``TunnelClosed(complete)`` says whether the transaction had ended."""
        complete = self.state in (DesktopState.RESPONSE_RECEIVED, DesktopState.SHUT_DOWN)
        if self.state is not DesktopState.FAILED:
            self.state = DesktopState.CLOSED
        self._events.append(TunnelClosed(complete))

    def _post_handshake(self, plaintext: bytes, expected: str) -> None:
        try:
            post = parse_post_handshake(plaintext)
        except ProtocolError as exc:
            self._remote(f"sent an invalid post-handshake message: {exc}", expected, exc)
        if post.get_info is not None:
            # Cached and answered locally (section 10.1): check it now, strictly, like any input.
            try:
                strict_cbor.decode_map(post.get_info, "getInfo (post-handshake key 1)")
            except ProtocolError as exc:
                self._remote(f"sent an invalid post-handshake message: {exc}", expected, exc)
        linking = None
        if post.linking is not None:
            linking = self._linking(post.linking, expected)
        self.post_handshake = post
        self.revision = 0 if post.legacy_revision0 else 1
        self.state = DesktopState.READY
        self._events.append(PostHandshakeReceived(post, self.revision, linking))

    def _linking(self, fields: Any, expected: str) -> LinkingInfo:
        assert self._handshake_hash is not None
        try:
            return parse_linking(
                fields, desktop_identity=self._identity, handshake_hash=self._handshake_hash
            )
        except ProtocolError as exc:
            return self._remote(f"sent invalid linking information: {exc}", expected, exc)

    def _update(self, payload: bytes, expected: str) -> LinkingInfo | None:
        # As Chromium's desktop: a CBOR map, key 1 (if present) a map of valid linking information.
        try:
            fields = parse_update(payload)
        except ProtocolError as exc:
            return self._remote(f"sent an invalid update message: {exc}", expected, exc)
        return None if fields is None else self._linking(fields, expected)

    def _response(self, payload: bytes, expected: str) -> None:
        if not payload:
            self._remote("sent an empty CTAP response (no status byte)", expected)
        status, body = payload[0], payload[1:]
        if status == 0 and body:
            try:
                strict_cbor.decode(body)
            except ProtocolError as exc:
                self._remote(f"sent a CTAP response that is not valid CBOR: {exc}", expected, exc)
        self._answered()
        self._events.append(CtapResponse(status, body))

    def _answered(self) -> None:
        self._outstanding = False
        # A reply racing a shutdown sent to give up is still the reply; the state stays SHUT_DOWN.
        if self.state is DesktopState.AWAIT_RESPONSE:
            self.state = DesktopState.RESPONSE_RECEIVED


# ---- phone -----------------------------------------------------------------------------------


class PhoneState(Enum):
    """Where the phone's transaction stands."""

    AWAIT_HANDSHAKE = "await Noise message 1"
    SEND_HANDSHAKE = "send Noise message 2"
    SEND_POST_HANDSHAKE = "send the post-handshake message"
    AWAIT_REQUEST = "await the request"
    ANSWERING = "answer the request"
    ANSWERED = "answered; await shutdown or the close"
    DESKTOP_STOPPED = "the desktop stopped waiting"
    DONE = "done"
    CLOSED = "closed"
    FAILED = "failed"


_PHONE_EXPECTED = {
    PhoneState.AWAIT_HANDSHAKE: "Noise message 1",
    PhoneState.SEND_HANDSHAKE: "nothing before Noise message 2 is sent",
    PhoneState.SEND_POST_HANDSHAKE: "nothing before the post-handshake message is sent",
    PhoneState.AWAIT_REQUEST: "a request, an update or shutdown",
    PhoneState.ANSWERING: "an update or shutdown while the request is answered",
    PhoneState.ANSWERED: "an update, shutdown or the close",
    PhoneState.DESKTOP_STOPPED: "nothing after shutdown but the close",
    PhoneState.DONE: "nothing after shutdown but the close",
    PhoneState.CLOSED: "nothing: the tunnel is closed",
    PhoneState.FAILED: "nothing: the transaction failed",
}
_PHONE_CAN_UPDATE = (
    PhoneState.AWAIT_REQUEST,
    PhoneState.ANSWERING,
    PhoneState.ANSWERED,
    PhoneState.DONE,
)


class PhoneConnection(_Connection):
    """The authenticator's side of one QR-initiated transaction: answer exactly one request.

    ``desktop_identity`` is QR key 0 (the desktop's public key), ``psk`` the handshake PSK derived
    from the QR secret and this phone's advert, ``ephemeral_key`` the Noise ephemeral (pass
    ``hybrid.keys.generate_private_key()``).

    Sequence: ``receive_data(message 1)`` (``HandshakeComplete``) -> ``send_handshake()`` ->
    ``send_post_handshake(get_info)`` -> ``receive_data`` until ``CtapRequest`` (or
    ``JsonMessage`` when ``"dc"`` was offered) -> ``send_response(reply)`` -> ``ShutdownReceived``
    / ``TunnelClosed``. A ``ShutdownReceived(answered=False)`` means the desktop gave up: nothing
    more may be answered. The phone never sends shutdown; ``send_update`` may come at any time after
    the post-handshake message.
    """

    _role = "phone"
    _peer = "desktop"

    def __init__(
        self,
        desktop_identity: PublicKeyLike,
        psk: bytes,
        ephemeral_key: PrivateKeyLike,
    ) -> None:
        super().__init__()
        self._responder = Responder.qr(desktop_identity, psk, ephemeral=ephemeral_key)
        self.state = PhoneState.AWAIT_HANDSHAKE
        self.features: tuple[str, ...] = ()
        self._json_request = False

    def _set_failed(self) -> None:
        self.state = PhoneState.FAILED

    def _require(self, action: str, *allowed: PhoneState) -> None:
        if self.state not in allowed:
            raise self._local(
                f"cannot {action} now (state: {self.state.value})",
                " or ".join(s.value for s in allowed),
            )

    # -- sending --

    def send_handshake(self) -> bytes:
        """Noise message 2 (81 bytes), right after message 1 was received."""
        self._require("send Noise message 2", PhoneState.SEND_HANDSHAKE)
        message, result = self._responder.write_message()
        self._crypter = Crypter.from_handshake(result)
        self._handshake_hash = result.handshake_hash
        self.state = PhoneState.SEND_POST_HANDSHAKE
        self._events.append(HandshakeComplete(result.handshake_hash))
        return message

    def send_post_handshake(
        self, get_info: bytes | None, features: Sequence[str] = DEFAULT_FEATURES
    ) -> bytes:
        """The first encrypted message: ``{1: getInfo, 3: features}``."""
        self._require("send the post-handshake message", PhoneState.SEND_POST_HANDSHAKE)
        plaintext = encode_post_handshake(get_info, features)
        self.features = tuple(features)
        self.state = PhoneState.AWAIT_REQUEST
        return self._encrypt(plaintext)

    def send_response(self, response: bytes) -> bytes:
        """The answer to the request: CTAP status byte + CBOR (or, to a JSON request, JSON)."""
        self._require("send the response", PhoneState.ANSWERING)
        if self._json_request:
            raise self._local("cannot answer a JSON request with CTAP", "send_json_response")
        response = bytes(response)
        if not response:
            raise self._local("cannot send an empty CTAP response", "a status byte")
        self.state = PhoneState.ANSWERED
        return self._encrypt(encode_message(MessageType.CTAP, response))

    def send_json_response(self, value: Any) -> bytes:
        """The answer to a JSON request (type 3)."""
        self._require("send the response", PhoneState.ANSWERING)
        if not self._json_request:
            raise self._local("cannot answer a CTAP request with JSON", "send_response")
        payload = json.dumps(value, separators=(",", ":")).encode("utf-8")
        self.state = PhoneState.ANSWERED
        return self._encrypt(encode_message(MessageType.JSON, payload))

    def send_update(self, linking: LinkingInfo | None = None) -> bytes:
        """An update message padded as deployed phones pad it (528 bytes encrypted)."""
        self._require("send an update", *_PHONE_CAN_UPDATE)
        fields = None if linking is None else linking.to_map()
        return self._encrypt(encode_update(fields))

    # -- receiving --

    def receive_data(self, message: bytes) -> None:
        """Process one whole tunnel message from the desktop; events go to ``next_event()``."""
        message = bytes(message)
        state = self.state
        expected = _PHONE_EXPECTED[state]
        if state is PhoneState.AWAIT_HANDSHAKE:
            try:
                self._responder.read_message(message)
            except ProtocolError as exc:
                self._remote(f"sent a bad Noise message 1: {exc}", expected, exc)
            self.state = PhoneState.SEND_HANDSHAKE
            return
        if state not in (
            PhoneState.AWAIT_REQUEST,
            PhoneState.ANSWERING,
            PhoneState.ANSWERED,
        ):
            self._remote("sent a message out of turn", expected)
        kind, payload = self._parse(self._decrypt(message, expected), expected)
        if kind is MessageType.UPDATE:
            # Phones only check that a desktop's update is CBOR; desktops define no fields.
            try:
                strict_cbor.decode(payload)
            except ProtocolError as exc:
                self._remote(f"sent an update that is not CBOR: {exc}", expected, exc)
            self._events.append(UpdateReceived(None))
        elif kind is MessageType.SHUTDOWN:
            if payload:
                self._remote("sent a shutdown message with a payload", expected)
            answered = state is PhoneState.ANSWERED
            self.state = PhoneState.DONE if answered else PhoneState.DESKTOP_STOPPED
            self._events.append(ShutdownReceived(answered))
        elif state is not PhoneState.AWAIT_REQUEST:
            self._remote(f"sent a second request ({kind.name} message)", expected)
        elif kind is MessageType.CTAP:
            if not payload:
                self._remote("sent an empty CTAP request (no command byte)", expected)
            self.state = PhoneState.ANSWERING
            parameters, error = payload[1:], None
            if parameters:
                try:
                    strict_cbor.decode(parameters)
                except ProtocolError as exc:
                    error = str(exc)
            self._events.append(CtapRequest(payload[0], parameters, error))
        else:  # JSON
            if "dc" not in self.features:
                self._remote("sent a JSON message, but this phone did not offer 'dc'", expected)
            try:
                value = _decode_json(payload)
            except ValueError as exc:
                self._remote(f"sent a JSON message that is not JSON: {exc}", expected, exc)
            self.state = PhoneState.ANSWERING
            self._json_request = True
            self._events.append(JsonMessage(value))

    def receive_close(self) -> None:
        """The tunnel closed; ``TunnelClosed(complete)`` says whether the answer had been sent."""
        complete = self.state in (PhoneState.ANSWERED, PhoneState.DONE)
        if self.state is not PhoneState.FAILED:
            self.state = PhoneState.CLOSED
        self._events.append(TunnelClosed(complete))


__all__ = [
    "NEED_DATA",
    "ConnectionEvent",
    "CtapRequest",
    "CtapResponse",
    "DesktopConnection",
    "DesktopState",
    "HandshakeComplete",
    "JsonMessage",
    "PhoneConnection",
    "PhoneState",
    "PostHandshakeReceived",
    "ShutdownReceived",
    "TransactionError",
    "TunnelClosed",
    "UpdateReceived",
]
