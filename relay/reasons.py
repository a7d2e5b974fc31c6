"""Why a tunnel ends: one table from end reason to close codes, close text and metric label.

Every way a tunnel can end is one ``End`` in ``ENDS``; the tunnel code names an entry instead of
spelling codes at each call. ``label`` is the ``reason`` label of ``hybrid_relay_tunnel_closes_total``
and the ``reason`` field of the ``tunnel_closed`` log line; several entries may share a label (the
side is in the close text). ``FRAMING`` as a code means "the close code the framing error names"
(1002 or 1007), which only the offending side of a ``protocol_error`` gets.
"""

# The table below reads best one end per line, aligned.
# ruff: noqa: E501

from __future__ import annotations

from typing import Final, NamedTuple

#: Placeholder code: use the code carried by the peer's framing error.
FRAMING: Final = 0


class End(NamedTuple):
    """One way a tunnel ends."""

    label: str
    #: Close code sent to the authenticator's socket.
    authenticator_code: int
    #: Close code sent to the initiator's socket.
    initiator_code: int
    #: Close reason text sent on both sockets.
    text: str


# fmt: off
#: name -> End.  Codes: 1000 clean, 1001 going away, 1003 text, 1008 policy, 1009 too big.
ENDS: Final[dict[str, End]] = {
    #  name                            metric label       to auth   to init   close text
    "authenticator_closed":     End("authenticator_closed", 1000, 1000, "authenticator closed the tunnel"),
    "initiator_closed":         End("initiator_closed",     1000, 1000, "initiator closed the tunnel"),
    "authenticator_gone":       End("authenticator_gone",   1001, 1001, "authenticator disconnected"),
    "initiator_gone":           End("initiator_gone",       1001, 1001, "initiator disconnected"),
    "authenticator_text_frame": End("text_frame",           1003, 1003, "authenticator sent a text frame"),
    "initiator_text_frame":     End("text_frame",           1003, 1003, "initiator sent a text frame"),
    "authenticator_too_big":    End("message_too_big",      1009, 1009, "authenticator sent an oversized message"),
    "initiator_too_big":        End("message_too_big",      1009, 1009, "initiator sent an oversized message"),
    "authenticator_framing":    End("protocol_error",    FRAMING, 1001, "authenticator broke WebSocket framing"),
    "initiator_framing":        End("protocol_error",       1001, FRAMING, "initiator broke WebSocket framing"),
    "authenticator_quota":      End("message_quota",        1008, 1008, "authenticator sent too many messages"),
    "initiator_quota":          End("message_quota",        1008, 1008, "initiator sent too many messages"),
    "authenticator_silent":     End("ping_timeout",         1001, 1001, "authenticator stopped answering pings"),
    "initiator_silent":         End("ping_timeout",         1001, 1001, "initiator stopped answering pings"),
    "pending_overflow":         End("pending_overflow",     1008, 1008, "too many messages before the initiator joined"),
    "wait_timeout":             End("wait_timeout",         1008, 1008, "no initiator joined in time"),
    "lifetime":                 End("lifetime",             1008, 1008, "tunnel lifetime exceeded"),
    "shutdown":                 End("shutdown",             1001, 1001, "relay shutting down"),
}
# fmt: on

SHUTDOWN: Final = ENDS["shutdown"]
LIFETIME: Final = ENDS["lifetime"]
WAIT_TIMEOUT: Final = ENDS["wait_timeout"]
PENDING_OVERFLOW: Final = ENDS["pending_overflow"]


def labels() -> list[str]:
    """Every metric label a tunnel end can carry, sorted."""
    return sorted({end.label for end in ENDS.values()})
