"""The root of every error type this project raises on purpose, and its three families.

Each module defines its own typed errors as subclasses of one of these bases, so a caller can tell
*who* is at fault without knowing every class:

* ``ProtocolError``: a peer (a QR code, an advert, the other role, the relay) sent bytes that
  break the protocol. Nothing local is wrong; retrying with the same peer usually fails again.
* ``EnvironmentalError``: this machine's surroundings failed: a file, a database, a BLE adapter,
  the network or a relay that cannot be reached, a certificate, a child process.
* ``UsageError``: the caller asked for something impossible (a bad argument or option value).

``hybrid.catalogue.PasskeyError`` sits beside them: it is what a user sees, worded by the support
article, and wraps one of the above as its detail. How an error becomes an exit status is decided
only by the command line (``hybrid.cli.exit_codes``), never by the error classes.
"""


class HybridError(Exception):
    """Base class for every error raised deliberately by the hybrid package."""


class ProtocolError(HybridError):
    """Bytes from a peer (QR text, advert, handshake, tunnel message) broke the protocol."""


class EnvironmentalError(HybridError):
    """Something around this process failed: files, adapters, network, certificates, processes."""


class UsageError(HybridError):
    """The caller passed an argument or option value that cannot work."""
