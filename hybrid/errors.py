"""The root of every error type this project raises on purpose.

Each module defines its own typed errors as subclasses of these, so a caller (the command line, the
relay, the desktop) can catch ``HybridError`` and turn it into a one-line message instead of a
traceback.
"""


class HybridError(Exception):
    """Base class for every error raised deliberately by the hybrid package."""


class ProtocolError(HybridError):
    """Bytes from a peer (QR text, advert, handshake, tunnel message) broke the protocol."""
