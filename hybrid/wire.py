"""Wire facts of the hybrid protocol that more than one module (or the relay) needs.

This module has no dependencies (not even on the rest of ``hybrid``), so the relay can import it
without pulling in the client side. It is the one home of each fact below: the tunnel service's
paths, header names, subprotocol and close codes (docs/protocol.md section 7), the lengths of the
ids and keys both roles exchange, and the BLE service UUIDs (section 6). Facts used by a single
module stay in that module.
"""

from enum import IntEnum
from typing import Final

SUBPROTOCOL: Final = "fido.cable"
ROUTING_ID_HEADER: Final = "X-caBLE-Routing-ID"
CLIENT_PAYLOAD_HEADER: Final = "X-caBLE-Client-Payload"
SIGNAL_CONNECTION_HEADER: Final = "X-caBLE-Signal-Connection"

NEW_PATH_PREFIX: Final = "/cable/new/"
CONNECT_PATH_PREFIX: Final = "/cable/connect/"
CONTACT_PATH_PREFIX: Final = "/cable/contact/"

# Ids and secrets (bytes).
QR_SECRET_LEN: Final = 16
TUNNEL_ID_LEN: Final = 16
ROUTING_ID_LEN: Final = 3
PSK_LEN: Final = 32

# P-256 points in SEC1 form, AES-GCM tags, and so the one Noise message each side sends.
P256_COMPRESSED_LEN: Final = 33
P256_UNCOMPRESSED_LEN: Final = 65
GCM_TAG_LEN: Final = 16
HANDSHAKE_MESSAGE_LEN: Final = P256_UNCOMPRESSED_LEN + GCM_TAG_LEN  # ephemeral key + empty payload

# 16-bit BLE service UUIDs a phone's advert may use (the FIDO one, and Google's older one).
FIDO_SERVICE_UUID16: Final = 0xFFF9
GOOGLE_SERVICE_UUID16: Final = 0xFDE2


class CloseCode(IntEnum):
    """WebSocket close codes (RFC 6455 section 7.4.1) the tunnel service sends or expects."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
