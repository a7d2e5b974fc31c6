"""The root of the relay's own error types.

The relay is deployable on its own, so its errors do not derive from the client library's
hierarchy; ``RelayError`` is caught at the command line and turned into one line.
"""


class RelayError(Exception):
    """Base class for every error raised deliberately by the relay."""


class RelayProtocolError(RelayError):
    """Bytes from a peer broke the HTTP or WebSocket protocol."""
