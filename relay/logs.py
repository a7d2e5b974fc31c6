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
from typing import Any, Final

logger: Final = logging.getLogger("relay")
# Made once: json.dumps with non-default options builds a new encoder per call.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), default=str)
# The C encoder behind _ENCODER, made once instead of on every encode (the same output; no
# circular-reference check: fields are flat values).
_encode_flat: Final[Any] = (
    c_make_encoder(None, str, encode_basestring_ascii, None, ":", ",", False, False, True)
    if c_make_encoder is not None
    else None
)

#: Hex digits of a tunnel id that may appear in logs: enough to correlate, far too few to use.
TUNNEL_TAG_DIGITS: Final = 6


def tunnel_tag(tunnel_id: bytes) -> str:
    return tunnel_id.hex().upper()[:TUNNEL_TAG_DIGITS]


def log_event(event: str, level: int = logging.INFO, **fields: Any) -> None:
    if not logger.isEnabledFor(level):
        return
    handler = _direct_handler(level)
    if handler is not None:
        # Exactly what configure() set up: the same line as the record path, without building a
        # LogRecord and walking the handler chain.
        assert _direct is not None
        _emit(handler, _direct[1].line(time.time(), level, event, fields))
        return
    # Built directly: Logger.log would walk the stack for a source location nobody logs.
    record = logger.makeRecord(logger.name, level, "", 0, event, (), None, extra={"fields": fields})
    logger.handle(record)


def _direct_handler(level: int) -> logging.StreamHandler | None:
    """The handler ``configure`` installed, when a line at ``level`` goes only to it unfiltered
    (the direct path); else None. The caller has checked that ``level`` is enabled."""
    direct = _direct
    if direct is None:
        return None
    handler = direct[0]
    handlers = logger.handlers
    if (
        len(handlers) == 1
        and handlers[0] is handler
        and level >= handler.level
        and not logger.filters
        and not handler.filters
    ):
        return handler
    return None


def _emit(handler: logging.StreamHandler, line: str) -> None:
    held = _held
    if held is not None:
        held.append(line + handler.terminator)
        return
    try:
        handler.stream.write(line + handler.terminator)
        handler.stream.flush()
    except (OSError, ValueError):
        pass


# -- the three events of every tunnel ---------------------------------------------------------
# Each logs exactly the line of ``log_event`` with the same fields in the same order (checked in
# tests/test_relay_fastpath.py), from a template whose names are encoded once: JSON-encoding the
# fields one by one was about a sixth of the relay's instructions per tunnel. The templates are
# f-strings: compiled, they are joined in one step, where ``%`` parsed its format every time.


def _info_handler() -> logging.StreamHandler | None:
    if not logger.isEnabledFor(logging.INFO):
        return None
    return _direct_handler(logging.INFO)


def tunnel_opened(tag: str, routing_id: str, client: str) -> None:
    """``log_event("tunnel_opened", tunnel=tag, routing_id=routing_id, client=client)``."""
    handler = _info_handler()
    if handler is None:
        log_event("tunnel_opened", tunnel=tag, routing_id=routing_id, client=client)
        return
    _emit(
        handler,
        f'{{"ts":"{_timestamp(_time())}","level":"info","event":"tunnel_opened",'
        f'"tunnel":{_quote(tag)},"routing_id":{_quote(routing_id)},"client":{_quote(client)}}}',
    )


def tunnel_paired(tag: str, latency_ms: int, client: str) -> None:
    """``log_event("tunnel_paired", tunnel=tag, latency_ms=latency_ms, client=client)``."""
    handler = _info_handler()
    if handler is None or type(latency_ms) is not int:
        log_event("tunnel_paired", tunnel=tag, latency_ms=latency_ms, client=client)
        return
    _emit(
        handler,
        f'{{"ts":"{_timestamp(_time())}","level":"info","event":"tunnel_paired",'
        f'"tunnel":{_quote(tag)},"latency_ms":{latency_ms},"client":{_quote(client)}}}',
    )


def tunnel_closed(
    tag: str, reason: str | None, paired: bool, duration_ms: int, counts: list[int]
) -> None:
    """The ``tunnel_closed`` event; ``counts``: messages and bytes to the initiator, then to the
    authenticator."""
    handler = _info_handler()
    if handler is None or type(duration_ms) is not int or type(paired) is not bool:
        log_event(
            "tunnel_closed",
            tunnel=tag,
            reason=reason,
            paired=paired,
            duration_ms=duration_ms,
            messages_to_initiator=counts[0],
            bytes_to_initiator=counts[1],
            messages_to_authenticator=counts[2],
            bytes_to_authenticator=counts[3],
        )
        return
    _emit(
        handler,
        f'{{"ts":"{_timestamp(_time())}","level":"info","event":"tunnel_closed",'
        f'"tunnel":{_quote(tag)},"reason":{"null" if reason is None else _quote(reason)},'
        f'"paired":{"true" if paired else "false"},"duration_ms":{duration_ms},'
        f'"messages_to_initiator":{counts[0]},"bytes_to_initiator":{counts[1]},'
        f'"messages_to_authenticator":{counts[2]},"bytes_to_authenticator":{counts[3]}}}',
    )


_quote: Final = encode_basestring_ascii
_time: Final = time.time
#: ".mmmZ" for every millisecond.
_MILLIS: Final = [f".{ms:03d}Z" for ms in range(1000)]
_second = -1
_stamp = ""


def _timestamp(created: float) -> str:
    """``created`` (a ``time.time()`` value) as ``2026-12-02T03:11:15.123Z``."""
    global _second, _stamp
    second = int(created)
    if second != _second:
        # strftime is the slow part; many events share a second.
        _stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second = second
    return _stamp + _MILLIS[int((created - second) * 1000)]


#: The keys every line starts with; fields of these names take the general path (there they
#: replace the value in place).
_RESERVED: Final = frozenset(("ts", "level", "event"))
#: For each tuple of field names seen, the JSON text around their values (``_flat_fields``), or
#: "" when those names must take the general path.
_TEMPLATES: Final[dict[tuple[Any, ...], str]] = {}
_TEMPLATES_MAX: Final = 512


def _template(names: tuple[Any, ...]) -> str:
    if not all(type(name) is str for name in names) or _RESERVED.intersection(names):
        template = ""
    else:
        quoted = (encode_basestring_ascii(name).replace("%", "%%") for name in names)
        template = "".join(f",{name}:%s" for name in quoted) + "}"
    if len(_TEMPLATES) < _TEMPLATES_MAX:
        _TEMPLATES[names] = template
    return template


def _flat_fields(fields: dict[str, Any]) -> str | None:
    """``fields`` as the rest of a JSON object (``,"k":v,...}``), exactly as the json encoder
    writes them, when every value is a str, int, bool or None; else None (then the encoder runs).

    The relay logs a few events with the same names many times a second (three per tunnel): the
    names are encoded once per tuple of names and the values by type, with no dict built per line
    (tests/test_relay_fastpath.py checks it against the json module).
    """
    names = tuple(fields)
    template = _TEMPLATES.get(names)
    if template is None:
        template = _template(names)
    if not template:
        return None
    values: list[str] = []
    append = values.append
    for value in fields.values():
        kind = type(value)
        if kind is str:
            append(encode_basestring_ascii(value))
        elif kind is int:
            append(int.__repr__(value))
        elif kind is bool:
            append("true" if value else "false")
        elif value is None:
            append("null")
        else:
            return None
    return template % tuple(values)


class JsonFormatter(logging.Formatter):
    """Formats a record as ``{"ts", "level", "event", ...fields}`` on one line."""

    def line(self, created: float, level: int, event: str, fields: dict[str, Any]) -> str:
        """The JSON line for one event; ``created`` is a ``time.time()`` value."""
        stamp = _timestamp(created)
        name = _LEVEL_NAMES.get(level) or logging.getLevelName(level).lower()
        flat = _flat_fields(fields)
        if flat is not None:
            return (
                f'{{"ts":"{stamp}","level":{encode_basestring_ascii(name)},'
                f'"event":{encode_basestring_ascii(event)}{flat}'
            )
        entry: dict[str, Any] = {"ts": stamp, "level": name, "event": event}
        entry.update(fields)
        if _encode_flat is not None:
            return "".join(_encode_flat(entry, 0))
        return _ENCODER.encode(entry)

    def format(self, record: logging.LogRecord) -> str:
        fields = dict(getattr(record, "fields", {}))
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return self.line(record.created, record.levelno, record.getMessage(), fields)


_LEVEL_NAMES: Final = {
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
