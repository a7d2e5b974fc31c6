"""Structured JSON logs: one line per event, never payload bytes, never a whole tunnel id.

The relay logs through the ``relay`` stdlib logger with the event name as the message and the
fields in ``extra={"fields": ...}``; ``JsonFormatter`` renders one JSON object per line. Tunnel ids
are bearer tokens (docs/protocol.md section 14), so only ``tunnel_tag`` (their first 6 hex digits)
is ever logged.
"""

from __future__ import annotations

import json
import logging
import time
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

logger = logging.getLogger("relay")
# Made once: json.dumps with non-default options builds a new encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
# The C encoder behind _ENCODER, made once instead of on every encode (the same output; no
# circular-reference check: fields are flat values).
_encode_flat: Any = (
    c_make_encoder(None, str, encode_basestring_ascii, None, ":", ",", False, False, True)
    if c_make_encoder is not None
    else None
)

#: Hex digits of a tunnel id that may appear in logs: enough to correlate, far too few to use.
TUNNEL_TAG_DIGITS = 6


def tunnel_tag(tunnel_id: bytes) -> str:
    return tunnel_id.hex().upper()[:TUNNEL_TAG_DIGITS]


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    if not logger.isEnabledFor(level):
        return
    direct = _direct
    if direct is not None:
        handler, formatter = direct
        handlers = logger.handlers
        if (
            len(handlers) == 1
            and handlers[0] is handler
            and level >= handler.level
            and not logger.filters
            and not handler.filters
        ):
            # Exactly what configure() set up: the same line as the record path, without
            # building a LogRecord and walking the handler chain (three events per tunnel).
            line = formatter.line(time.time(), level, event, fields)
            held = _held
            if held is not None:
                held.append(line + handler.terminator)
                return
            try:
                handler.stream.write(line + handler.terminator)
                handler.stream.flush()
            except (OSError, ValueError):
                pass
            return
    # Built directly: Logger.log would walk the stack for a source location nobody logs.
    record = logger.makeRecord(logger.name, level, "", 0, event, (), None, extra={"fields": fields})
    logger.handle(record)


class JsonFormatter(logging.Formatter):
    """Formats a record as ``{"ts", "level", "event", ...fields}`` on one line."""

    _second = -1
    _stamp = ""

    def line(self, created: float, level: int, event: str, fields: dict[str, Any]) -> str:
        """The JSON line for one event; ``created`` is a ``time.time()`` value."""
        second = int(created)
        if second != self._second:
            # strftime is the slow part; many events share a second.
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        entry: dict[str, Any] = {
            "ts": f"{self._stamp}.{int((created - second) * 1000):03d}Z",
            "level": _LEVEL_NAMES.get(level) or logging.getLevelName(level).lower(),
            "event": event,
        }
        entry.update(fields)
        if _encode_flat is not None:
            return "".join(_encode_flat(entry, 0))
        return _ENCODER.encode(entry)

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "fields", {}))
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return self.line(record.created, record.levelno, record.getMessage(), fields)


_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}

#: The handler and formatter ``configure`` installed, for ``log_event``'s direct path.
_direct: tuple[logging.StreamHandler, JsonFormatter] | None = None
#: Lines of the direct path held back for one write (``hold``), else None.
_held: list[str] | None = None


def hold() -> None:
    """Hold the direct path's lines until ``flush_held``: many lines in one write.

    The reactor holds them while it handles one batch of events and flushes before it waits, so
    a line is late by at most one batch and the order of lines is kept.
    """
    global _held
    if _held is None:
        _held = []


def flush_held() -> None:
    """Write the held lines (one ``write`` and one flush)."""
    held = _held
    if not held or _direct is None:
        return
    stream = _direct[0].stream
    text = "".join(held)
    held.clear()
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        pass


def release() -> None:
    """Write the held lines and go back to one write per line."""
    global _held
    flush_held()
    _held = None


def configure(level: str = "info", stream: Any = None) -> None:
    """Send the relay logger's records to ``stream`` (stderr by default) as JSON lines."""
    global _direct
    handler = logging.StreamHandler(stream)
    formatter = JsonFormatter()
    handler.setFormatter(formatter)
    logger.handlers[:] = [handler]
    _direct = (handler, formatter)
    # The JSON lines carry none of these; skipping them makes every log record cheaper.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logger.setLevel(level.upper())
    logger.propagate = False
    # Everything else that logs (trio, the stdlib, warnings) comes out as JSON lines too.
    root = logging.getLogger()
    root.handlers[:] = [handler]
    if root.level > logging.WARNING or root.level == logging.NOTSET:
        root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
