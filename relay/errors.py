"""Every error type of the relay, in one hierarchy.

The relay is deployable on its own, so its errors do not derive from the client library's.

::

    RelayError                      raised deliberately by the relay
    ├── ConfigError                 an option has a value the relay cannot run with (exit 2)
    ├── RoutingIdsExhausted         no free routing id under this node's prefix
    ├── ClientGone                  the client left before a whole request arrived
    ├── RelayProtocolError          bytes from a peer broke HTTP, WebSocket or PROXY protocol
    │   ├── BadRequest              not an acceptable HTTP/1.1 request (``status``)
    │   ├── ProxyHeaderError        a malformed PROXY header, or one from an untrusted peer
    │   ├── ForwardedError          an X-Forwarded-For that cannot be parsed
    │   └── FrameError              broken RFC 6455 framing (``code``: close code to answer)
    │       ├── TextFrameError      a text message (1003)
    │       └── MessageTooBigError  a message over the size limit (1009)
    └── WebSocketEnded              a tunnel socket stopped delivering messages
        ├── PeerClosed              the client sent a close frame
        ├── PeerGone                the connection dropped without one
        └── FrameError              (also) the client broke framing: see above

``FrameError`` is both: the frame parser reports it as an event, and the socket raises the same
object to the task reading from it.
"""

from __future__ import annotations

#: RFC 6455 close codes the framing errors carry.
_CLOSE_PROTOCOL_ERROR = 1002
_CLOSE_UNSUPPORTED_DATA = 1003
_CLOSE_MESSAGE_TOO_BIG = 1009


class RelayError(Exception):
    """Base class for every error raised deliberately by the relay."""


class ConfigError(RelayError):
    """A relay option has a value the relay cannot run with."""

    exit_code = 2


class RoutingIdsExhausted(RelayError):
    """No unused routing id could be drawn under this node's prefix."""


class ClientGone(RelayError):
    """The client closed or reset the connection before a whole request arrived."""


class RelayProtocolError(RelayError):
    """Bytes from a peer broke the HTTP, WebSocket or PROXY protocol."""


class BadRequest(RelayProtocolError):
    """The bytes received are not an acceptable HTTP/1.1 request; ``status`` is the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ProxyHeaderError(RelayProtocolError):
    """A PROXY protocol header is malformed, or came from a peer that is not trusted."""


class ForwardedError(RelayProtocolError):
    """An X-Forwarded-For header that cannot be believed or parsed."""


class WebSocketEnded(RelayError):
    """Base of the ways a tunnel socket stops delivering messages."""


class PeerClosed(WebSocketEnded):
    """The client sent a close frame: a clean end."""


class PeerGone(WebSocketEnded):
    """The connection dropped (EOF, reset, TLS failure) without a close frame."""


class FrameError(WebSocketEnded, RelayProtocolError):
    """A client broke RFC 6455 framing; ``code`` is the close code to answer with."""

    def __init__(self, message: str, code: int = _CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code

    @property
    def ws_code(self) -> int:
        """The close code for the offending socket (same as ``code``)."""
        return self.code


class TextFrameError(FrameError):
    """A client started a text message where only binary ones are allowed (close code 1003)."""

    def __init__(self) -> None:
        super().__init__("text frame: only binary messages are allowed", _CLOSE_UNSUPPORTED_DATA)


class MessageTooBigError(FrameError):
    """A client message exceeded the relay's maximum message size (close code 1009)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"websocket message of at least {size} bytes exceeds the {limit}-byte limit",
            _CLOSE_MESSAGE_TOO_BIG,
        )
        self.size = size
        self.limit = limit
