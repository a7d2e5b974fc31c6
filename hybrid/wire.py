"""Wire facts of the tunnel service that the relay and both roles share.

This module has no dependencies (not even on the rest of ``hybrid``), so the relay can import it
without pulling in the client side: the paths, header names, subprotocol and id lengths of the
WebSocket tunnel protocol (docs/protocol.md, "WebSocket tunnel").
"""

from typing import Final

SUBPROTOCOL: Final = "fido.cable"
ROUTING_ID_HEADER: Final = "X-caBLE-Routing-ID"
CLIENT_PAYLOAD_HEADER: Final = "X-caBLE-Client-Payload"
SIGNAL_CONNECTION_HEADER: Final = "X-caBLE-Signal-Connection"

NEW_PATH_PREFIX: Final = "/cable/new/"
CONNECT_PATH_PREFIX: Final = "/cable/connect/"
CONTACT_PATH_PREFIX: Final = "/cable/contact/"

TUNNEL_ID_LEN: Final = 16
ROUTING_ID_LEN: Final = 3
