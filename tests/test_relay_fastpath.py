"""The relay's fast paths, checked against the general libraries they stand in for.

The lean request-head parser (``relay.http._parse_lean``) must accept only heads h11 accepts, and
parse them identically; the hand-built 101 answer must match what h11 and wsproto would write; a
whole read of frames must be forwarded in order.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import re
import secrets
from collections.abc import Iterator

import h11
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.utilities import generate_accept_token

from relay.http import Request, _parse_lean, accept_token, read_request, send_switching_protocols
from relay.requests import _by_name, _tokens
from tests.relay_helpers import (
    SUBPROTOCOL,
    connect_url,
    new_tunnel_id,
    new_url,
    open_ws,
    raw_http,
    routing_id_of,
    running_relay,
    upgrade_request,
)

FUZZ = settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def h11_parse(head: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    return event.method, event.target, list(event.headers)


# The lean parser's pattern as first written, with a value spelled "spaces, visible..visible,
# spaces": the parser must take and give exactly what this took and gave.
_REFERENCE_HEAD = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (/[\x21-\x7e]*) HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[ ]*(?:[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?[ ]*\r\n)*)"
    rb"\r\n"
)


def reference_parse_lean(head: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]] | None:
    match = _REFERENCE_HEAD.fullmatch(head)
    if match is None:
        return None
    headers: list[tuple[bytes, bytes]] = []
    hosts = 0
    block = match[3]
    for line in block[:-2].split(b"\r\n") if block else []:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding"):
            return None
        hosts += name == b"host"
        headers.append((name, value.strip(b" ")))
    return (match[1], match[2], headers) if hosts == 1 else None


def typical_head(path: str = "/cable/new/" + "AB" * 16) -> bytes:
    return upgrade_request(path)


def test_lean_parser_matches_h11_on_a_typical_upgrade():
    head = typical_head()
    assert _parse_lean(head) == h11_parse(head)
    assert _parse_lean(head) is not None


_PIECES = [
    b"GET",
    b"HEAD",
    b"POST",
    b"G T",
    b" ",
    b"  ",
    b"/",
    b"/cable/new/00",
    b"*",
    b"http://x/",
    b"HTTP/1.1",
    b"HTTP/1.0",
    b"HTTP/2",
    b"\r\n",
    b"\n",
    b"\r",
    b"Host: a",
    b"host:a",
    b"Host : a",
    b"X:",
    b"X: ",
    b"X:\tv",
    b"X: v\t",
    b" folded",
    b"\tfolded",
    b"Content-Length: 0",
    b"Content-Length: 5",
    b"Transfer-Encoding: chunked",
    b"Upgrade: websocket",
    b"Connection: Upgrade",
    b"N\x00me: v",
    b"Name: v\x7f",
    b"Name: \xff",
    b"",
    b":",
    b"a b: c",
]


@FUZZ
@given(st.lists(st.sampled_from(_PIECES), max_size=14))
def test_lean_parser_never_disagrees_with_h11(pieces):
    head = b"".join(pieces) + b"\r\n\r\n"
    lean = _parse_lean(head)
    assert lean == reference_parse_lean(head)
    if lean is not None:
        assert lean == h11_parse(head)


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.text(alphabet="abcXYZ-_!~0123456789", min_size=1, max_size=8),
            st.binary(max_size=12),
        ),
        max_size=6,
    ),
    st.binary(max_size=20),
)
def test_lean_parser_on_arbitrary_header_bytes(headers, target):
    lines = [b"GET /" + target + b" HTTP/1.1", b"Host: h"]
    lines += [name.encode() + b":" + value for name, value in headers]
    head = b"\r\n".join(lines) + b"\r\n\r\n"
    lean = _parse_lean(head)
    assert lean == reference_parse_lean(head)
    if lean is not None:
        assert lean == h11_parse(head)


_BYTE_PIECES = [
    b"GET /",
    b"GET / HTTP/1.1\r\n",
    b"Host: h\r\n",
    b"X:  v  \r\n",
    b"HTTP/1.1",
    b" ",
    b"  ",
    b"/",
    b":",
    b"\r",
    b"\n",
    b"\r\n",
    b"a",
    b"A-b",
    b"\t",
    b"\x00",
    b"\x7f",
    b"\x80",
    b"\xff",
    b'"',
    b"Content-Length: 1\r\n",
]


@FUZZ
@given(
    st.lists(st.one_of(st.sampled_from(_BYTE_PIECES), st.binary(max_size=4)), max_size=16),
    st.sampled_from([b"\r\n\r\n", b"\r\n", b"\n\r\n", b""]),
)
def test_lean_parser_matches_the_longer_pattern(pieces, tail):
    head = b"".join(pieces) + tail
    assert _parse_lean(head) == reference_parse_lean(head)


def test_accept_token_matches_wsproto():
    for _ in range(50):
        key = base64.b64encode(secrets.token_bytes(16))
        assert accept_token(key) == generate_accept_token(key)


class _Sink(trio.abc.Stream):
    """Collects what is written; ``receive_some`` replays ``incoming`` in chunks."""

    def __init__(self, incoming: bytes = b"", chunk: int = 7) -> None:
        self.written = b""
        self.incoming = incoming
        self.chunk = chunk

    async def send_all(self, data) -> None:
        self.written += bytes(data)

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def receive_some(self, max_bytes=None) -> bytes:
        await trio.lowlevel.checkpoint()
        data, self.incoming = self.incoming[: self.chunk], self.incoming[self.chunk :]
        return data

    async def aclose(self) -> None:
        pass


async def test_switching_protocols_matches_h11():
    key = base64.b64encode(secrets.token_bytes(16))
    sink = _Sink()
    request = Request(b"GET", b"/", [], None, b"rest")
    line = b"X-caBLE-Routing-ID: 0A0B0C\r\n"
    trailing = await send_switching_protocols(sink, request, key, line)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(typical_head())
    conn.next_event()
    conn.next_event()
    expected = conn.send(
        h11.InformationalResponse(
            status_code=101,
            headers=[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", generate_accept_token(key).decode()),
                ("Sec-WebSocket-Protocol", SUBPROTOCOL),
                ("X-caBLE-Routing-ID", "0A0B0C"),
            ],
            reason=b"Switching Protocols",
        )
    )
    assert sink.written == expected
    assert trailing == b"rest"


async def test_read_request_in_small_chunks_keeps_trailing_bytes():
    head = typical_head()
    sink = _Sink(head + b"\x82\x80abcd", chunk=5)
    request = await read_request(sink, 8192)
    assert request.conn is None
    assert (request.method, request.target, request.headers) == h11_parse(head)
    assert request.trailing + sink.incoming == b"\x82\x80abcd"


async def test_read_request_falls_back_to_h11_for_bare_lf():
    head = typical_head().replace(b"\r\n", b"\n")
    request = await read_request(_Sink(head), 8192)
    assert request.conn is not None
    assert request.target.startswith(b"/cable/new/")


async def test_upgrade_with_body_is_refused_on_the_h11_path():
    async with running_relay() as relay:
        request = upgrade_request("/cable/new/" + new_tunnel_id(), extra="Content-Length: 3\r\n")
        response = await raw_http(relay.port, request + b"abc")
        assert response.status == 400
        assert relay.stats.refusals["malformed"] == 1


async def test_a_burst_of_messages_in_one_read_is_forwarded_in_order():
    async with running_relay() as relay:
        tid = new_tunnel_id()
        async with open_ws(new_url(relay, tid)) as authenticator:
            rid = routing_id_of(authenticator)
            async with open_ws(connect_url(relay, rid, tid)) as initiator:
                messages = [secrets.token_bytes(n) for n in (0, 1, 125, 126, 65535, 40, 3)]
                for message in messages:
                    await initiator.send_message(message)
                for message in messages:
                    assert await authenticator.get_message() == message
                for message in messages:
                    await authenticator.send_message(message)
                for message in messages:
                    assert await initiator.get_message() == message
        await trio.sleep(0.05)
        assert relay.stats.messages_to_authenticator == len(messages)
        assert relay.stats.bytes_to_initiator == sum(map(len, messages))


def _reference_tokens(headers, name):
    tokens = []
    for key, value in headers:
        if key.lower() == name:
            tokens.extend(t.strip() for t in value.split(b","))
    return tokens


def _reference_header(headers, name):
    for key, value in headers:
        if key.lower() == name:
            return value.strip()
    return None


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"Upgrade", b"upgrade", b"Origin", b"X", b"Connection"]),
            st.binary(max_size=10).map(lambda b: b.replace(b"\x00", b",")),
        ),
        max_size=6,
    )
)
def test_header_lookup_matches_the_per_name_scan(headers):
    named = _by_name(headers)
    for name in (b"upgrade", b"origin", b"x", b"connection", b"absent"):
        assert _tokens(named.get(name, [])) == _reference_tokens(headers, name)
        values = named.get(name)
        assert (values[0].strip() if values else None) == _reference_header(headers, name)


async def test_a_burst_of_connections_larger_than_one_accept_batch_is_served():
    async with running_relay() as relay:
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        statuses: list[int] = []

        async def one() -> None:
            statuses.append((await raw_http(relay.port, request)).status)

        async with trio.open_nursery() as nursery:
            for _ in range(80):
                nursery.start_soon(one)
        assert statuses == [200] * 80
        assert relay.stats.connections_accepted == 80


async def test_plain_tcp_tunnels_use_the_raw_socket_path():
    from relay.rawio import raw_socket

    async with running_relay() as relay:
        stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
        async with stream:
            assert raw_socket(stream) is not None
        assert raw_socket(trio.StapledStream(stream, stream)) is None


def test_direct_log_lines_equal_the_record_path():
    import io
    import json
    import logging

    from relay import logs

    saved = (logs.logger.handlers[:], logs.logger.propagate, logs.logger.level, logs._direct)
    flags = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    try:
        out = io.StringIO()
        logs.configure("info", out)
        logs.log_event("tunnel_opened", tunnel="ABCDEF", routing_id="0A0B0C", client="127.0.0.1")
        logs.log_event("hidden", logging.DEBUG, x=1)
        direct = out.getvalue().splitlines()
        assert len(direct) == 1
        entry = json.loads(direct[0])
        record = logs.logger.makeRecord(
            "relay",
            logging.INFO,
            "",
            0,
            "tunnel_opened",
            (),
            None,
            extra={"fields": {"tunnel": "ABCDEF", "routing_id": "0A0B0C", "client": "127.0.0.1"}},
        )
        via_record = json.loads(logs.JsonFormatter().format(record))
        assert entry.keys() == via_record.keys()
        assert list(entry) == ["ts", "level", "event", "tunnel", "routing_id", "client"]
        assert {k: v for k, v in entry.items() if k != "ts"} == {
            k: v for k, v in via_record.items() if k != "ts"
        }
        assert entry["ts"].endswith("Z") and len(entry["ts"]) == len(via_record["ts"])
    finally:
        logs.logger.handlers[:], logs.logger.propagate, level, logs._direct = saved
        logs.logger.setLevel(level)
        logging.logThreads, logging.logProcesses, logging.logMultiprocessing = flags


# -- log lines: the templates of the three tunnel events and the flat encoder ---------------------

_TS = re.compile(r'^\{"ts":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",')


@contextlib.contextmanager
def _captured_logs(level: str = "info") -> Iterator[io.StringIO]:
    from relay import logs

    saved = (logs.logger.handlers[:], logs.logger.propagate, logs.logger.level, logs._direct)
    flags = (logging.logThreads, logging.logProcesses, logging.logMultiprocessing)
    root = (logging.getLogger().handlers[:], logging.getLogger().level)
    try:
        out = io.StringIO()
        logs.configure(level, out)
        yield out
    finally:
        logs.logger.handlers[:], logs.logger.propagate, level_, logs._direct = saved
        logs.logger.setLevel(level_)
        logging.logThreads, logging.logProcesses, logging.logMultiprocessing = flags
        logging.getLogger().handlers[:], root_level = root
        logging.getLogger().setLevel(root_level)


def _without_ts(line: str) -> str:
    assert _TS.match(line), line
    return _TS.sub("{", line)


_texts = st.text(max_size=12)
_counts = st.integers(min_value=0, max_value=2**53)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    tag=_texts,
    routing=_texts,
    client=_texts,
    latency=st.integers(min_value=-(2**40), max_value=2**40),
    reason=st.none() | _texts,
    paired=st.booleans(),
    counts=st.lists(_counts, min_size=4, max_size=4),
    filtered=st.booleans(),
)
def test_tunnel_event_lines_equal_log_event(
    tag: str,
    routing: str,
    client: str,
    latency: int,
    reason: str | None,
    paired: bool,
    counts: list[int],
    filtered: bool,
) -> None:
    """``tunnel_opened``/``_paired``/``_closed`` write exactly ``log_event``'s line (but the time),
    on the direct path and, with a filter on the logger, on the record path."""
    from relay import logs

    with _captured_logs() as out:
        if filtered:
            logs.logger.addFilter(lambda record: True)
        try:
            logs.tunnel_opened(tag, routing, client)
            logs.log_event("tunnel_opened", tunnel=tag, routing_id=routing, client=client)
            logs.tunnel_paired(tag, latency, client)
            logs.log_event("tunnel_paired", tunnel=tag, latency_ms=latency, client=client)
            logs.tunnel_closed(tag, reason, paired, latency, counts)
            logs.log_event(
                "tunnel_closed",
                tunnel=tag,
                reason=reason,
                paired=paired,
                duration_ms=latency,
                messages_to_initiator=counts[0],
                bytes_to_initiator=counts[1],
                messages_to_authenticator=counts[2],
                bytes_to_authenticator=counts[3],
            )
        finally:
            logs.logger.filters.clear()
        lines = out.getvalue().splitlines()
    assert len(lines) == 6
    for ours, reference in zip(lines[::2], lines[1::2], strict=True):
        assert _without_ts(ours) == _without_ts(reference)
        json.loads(ours)


def test_tunnel_event_lines_respect_the_level() -> None:
    from relay import logs

    with _captured_logs("warning") as out:
        logs.tunnel_opened("ABCDEF", "0A0B0C", "127.0.0.1")
        logs.tunnel_paired("ABCDEF", 3, "127.0.0.1")
        logs.tunnel_closed("ABCDEF", "normal", True, 5, [1, 2, 3, 4])
        assert out.getvalue() == ""


_flat_values = st.one_of(
    st.text(max_size=10),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(), max_size=3),
)


@settings(max_examples=300)
@given(
    fields=st.dictionaries(
        st.sampled_from(["ts", "level", "event", "a", "b%s", 'q"uote', "ü", "client"])
        | st.text(max_size=6),
        _flat_values,
        max_size=6,
    )
)
def test_log_lines_equal_the_json_module(fields: dict[str, object]) -> None:
    """Whatever the fields (names in the line's own keys, floats, lists, odd names), a line is
    what ``json`` writes for ``{"ts", "level", "event", **fields}``."""
    from relay import logs

    formatter = logs.JsonFormatter()
    created = 1_700_000_000.25
    for _ in range(2):  # the second time through the cached template
        line = formatter.line(created, logging.INFO, "some_event", fields)
        entry = {"ts": "2023-11-14T22:13:20.250Z", "level": "info", "event": "some_event"}
        entry.update(fields)
        assert line == json.dumps(entry, separators=(",", ":"), default=str)
