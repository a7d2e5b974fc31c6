"""Structured JSON logs: one line per event, never payload bytes, never a whole tunnel id.

The relay logs through the ``relay`` stdlib logger with the event name as the message and the
fields in ``extra={"fields": ...}``; ``JsonFormatter`` renders one JSON object per line. Tunnel ids
are bearer tokens (protocol notes section 14), so only ``tunnel_tag`` (their first 6 hex digits)
is ever logged.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

logger = logging.getLogger("relay")
# Made once: json.dumps with non-default options builds a new encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)

#: Hex digits of a tunnel id that may appear in logs: enough to correlate, far too few to use.
TUNNEL_TAG_DIGITS = 6


def tunnel_tag(tunnel_id: bytes) -> str:
    return tunnel_id.hex().upper()[:TUNNEL_TAG_DIGITS]


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        # Built directly: Logger.log would walk the stack for a source location nobody logs.
        record = logger.makeRecord(
            logger.name, level, "", 0, event, (), None, extra={"fields": fields}
        )
        logger.handle(record)


class JsonFormatter(logging.Formatter):
    """Formats a record as ``{"ts", "level", "event", ...fields}`` on one line."""

    _second = -1
    _stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            # strftime is the slow part; many events share a second.
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        entry: dict[str, Any] = {
            "ts": f"{self._stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return _ENCODER.encode(entry)


def configure(level: str = "info", stream: Any = None) -> None:
    """Send the relay logger's records to ``stream`` (stderr by default) as JSON lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    # The JSON lines carry none of these; skipping them makes every log record cheaper.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logger.setLevel(level.upper())
    logger.propagate = False
