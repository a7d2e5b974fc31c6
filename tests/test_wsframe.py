"""The relay's WebSocket frame codec, checked against wsproto and fuzzed."""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.connection import CLIENT, SERVER, Connection
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage

from relay import wsframe
from relay.wsframe import (
    Close,
    FrameError,
    FrameParser,
    MessageTooBigError,
    binary_frame,
    close_frame,
    pong_frame,
    write_binary,
)

FUZZ = settings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
UNLIMITED = 1 << 62


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    mask: bytes = b"\x37\xfa\x21\x3d",
    length_form: int | None = None,
    declared_length: int | None = None,
) -> bytes:
    """A client frame built by hand, so tests can break any rule on purpose."""
    n = len(payload) if declared_length is None else declared_length
    form = length_form if length_form is not None else (0 if n < 126 else 1 if n < 65536 else 2)
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    flag = 0x80 if masked else 0
    if form == 0:
        head += bytes([flag | n])
    elif form == 1:
        head += bytes([flag | 126]) + struct.pack("!H", n)
    else:
        head += bytes([flag | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def feed(parser: FrameParser, data: bytes, cuts: list[int] | None = None) -> list:
    """Feed ``data`` split at ``cuts`` (sorted offsets) and collect every event."""
    events: list = []
    start = 0
    for cut in [*(cuts or []), len(data)]:
        events += parser.receive(data[start:cut])
        start = cut
    return events


def error_code(events: list) -> int | None:
    assert events and isinstance(events[-1], FrameError)
    return events[-1].code


# --- wsproto as the reference ------------------------------------------------------------------


def wsproto_server_events(data: bytes, cuts: list[int]) -> tuple[list, object]:
    """Run wsproto's server side on the stream; return (messages, terminal) like ours.

    Messages are ``bytes``, ``str`` or ``("ping", payload)``; terminal is None (still waiting),
    ``("close", code, reason)`` or ``("error", code)``. A close event whose reason wsproto wrote
    itself cannot be told apart from a real close frame, so callers compare codes for errors.
    """
    conn = Connection(SERVER)
    out: list = []
    partial: list = []
    start = 0
    for cut in [*cuts, len(data)]:
        conn.receive_data(data[start:cut])
        start = cut
        for ev in conn.events():
            if isinstance(ev, (BytesMessage, TextMessage)):
                partial.append(ev.data)
                if ev.message_finished:
                    if isinstance(ev, BytesMessage):
                        out.append(b"".join(bytes(p) for p in partial))
                    else:
                        out.append("".join(partial))
                    partial = []
            elif isinstance(ev, Ping):
                out.append(("ping", bytes(ev.payload)))
            elif isinstance(ev, Pong):
                pass
            elif isinstance(ev, CloseConnection):
                return out, ("close", ev.code, ev.reason or "")
    return out, None


def our_server_events(data: bytes, cuts: list[int]) -> tuple[list, object]:
    parser = FrameParser(UNLIMITED)
    out: list = []
    for ev in feed(parser, data, cuts):
        if isinstance(ev, bytes):
            out.append(ev)
        elif isinstance(ev, wsframe.TextMessage):
            out.append(ev.text)
        elif isinstance(ev, wsframe.Ping):
            out.append(("ping", ev.payload))
        elif isinstance(ev, Close):
            return out, ("close", ev.code, ev.reason)
        elif isinstance(ev, FrameError):
            return out, ("error", ev.code)
        else:  # pragma: no cover - would be a bug in the parser
            raise AssertionError(f"unexpected event {ev!r}")
    return out, None


# --- unit behaviour ----------------------------------------------------------------------------


def test_binary_message_comes_out_as_bytes():
    assert FrameParser().receive(client_frame(2, b"hello")) == [b"hello"]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 16384, 16385, 65535, 65536])
def test_a_read_holding_exactly_one_frame_gives_its_message(size):
    payload = os.urandom(size)
    assert FrameParser().receive(client_frame(2, payload)) == [payload]
    assert FrameParser().receive(client_frame(2, payload) + b"\x82") == [payload]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(2, b"u" * 10, masked=False), 1002),
        (client_frame(2, b"u" * 200, masked=False), 1002),
        (client_frame(2, b"n" * 100, length_form=1), 1002),
        (client_frame(2, b"b" * 101), 1009),
        (client_frame(2, b"b" * 300), 1009),
    ],
)
def test_a_read_holding_exactly_one_bad_frame_gets_its_error(frame, code):
    assert error_code(FrameParser(max_message_size=100).receive(frame)) == code


def test_every_complete_frame_in_one_chunk_is_returned_in_order():
    data = client_frame(2, b"a") + client_frame(2, b"b" * 300) + client_frame(2, b"c" * 70000)
    assert FrameParser().receive(data) == [b"a", b"b" * 300, b"c" * 70000]


def test_frames_fed_one_byte_at_a_time_are_reassembled():
    data = client_frame(2, b"x" * 200, fin=False) + client_frame(9, b"p") + client_frame(0, b"yz")
    parser = FrameParser()
    events = feed(parser, data, list(range(1, len(data))))
    assert events == [wsframe.Ping(b"p"), b"x" * 200 + b"yz"]


def test_empty_binary_message():
    assert FrameParser().receive(client_frame(2, b"")) == [b""]


def test_pong_is_dropped_and_ping_is_reported():
    data = client_frame(10, b"ignored") + client_frame(9, b"echo me")
    assert FrameParser().receive(data) == [wsframe.Ping(b"echo me")]


def test_text_message_is_reported_as_text():
    data = client_frame(1, "h\u00e9".encode(), fin=False) + client_frame(0, b"llo")
    assert FrameParser().receive(data) == [wsframe.TextMessage("h\u00e9llo")]


def test_refused_text_is_1003_at_its_first_frame_whatever_its_size():
    # Only the header of an oversized text frame has arrived: refused as text, not as too big.
    oversized = client_frame(1, b"x" * 300)[:8]
    assert error_code(FrameParser(100, refuse_text=True).receive(oversized)) == 1003
    first_fragment = client_frame(1, b"he", fin=False)
    assert error_code(FrameParser(refuse_text=True).receive(first_fragment)) == 1003
    binary = client_frame(2, b"still fine")
    assert FrameParser(refuse_text=True).receive(binary) == [b"still fine"]


def test_text_message_that_is_not_utf8_is_1007():
    assert error_code(FrameParser().receive(client_frame(1, b"\xff\xfe"))) == 1007


def test_close_frame_is_parsed_and_ends_the_stream():
    data = client_frame(8, struct.pack("!H", 1000) + b"bye") + client_frame(2, b"after")
    parser = FrameParser()
    assert parser.receive(data) == [Close(1000, "bye")]
    assert parser.finished
    assert parser.receive(client_frame(2, b"later")) == []


def test_empty_close_frame_means_no_status_code():
    assert FrameParser().receive(client_frame(8)) == [Close(1005, "")]


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"\x03", 1002),
        (struct.pack("!H", 999), 1002),
        (struct.pack("!H", 1004), 1002),
        (struct.pack("!H", 1005), 1002),
        (struct.pack("!H", 1006), 1002),
        (struct.pack("!H", 1014), 1002),
        (struct.pack("!H", 1015), 1002),
        (struct.pack("!H", 2999), 1002),
        (struct.pack("!H", 5000), 1002),
        (struct.pack("!H", 1000) + b"\xc3", 1007),
    ],
)
def test_bad_close_payload_is_refused(payload, code):
    assert error_code(FrameParser().receive(client_frame(8, payload))) == code


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1011, 1013, 3000, 4999])
def test_valid_close_codes_are_accepted(code):
    assert FrameParser().receive(client_frame(8, struct.pack("!H", code))) == [Close(code, "")]


@pytest.mark.parametrize(
    ("frame", "what"),
    [
        (client_frame(2, b"x", masked=False), "not masked"),
        (client_frame(2, b"x", rsv=4), "reserved bits"),
        (client_frame(2, b"x", rsv=1), "reserved bits"),
        (client_frame(3, b"x"), "unknown opcode"),
        (client_frame(11, b"x"), "unknown opcode"),
        (client_frame(0, b"x"), "continuation"),
        (client_frame(9, b"x", fin=False), "fragmented control"),
        (client_frame(9, b"x" * 126), "125 bytes"),
        (client_frame(2, b"x" * 100, length_form=1), "minimally"),
        (client_frame(2, b"x" * 1000, length_form=2), "minimally"),
        (client_frame(2, b"", declared_length=1 << 63, length_form=2), "top bit"),
        (client_frame(2, b"a", fin=False) + client_frame(2, b"b"), "inside a fragmented"),
        (client_frame(2, b"a", fin=False) + client_frame(1, b"b"), "inside a fragmented"),
    ],
)
def test_protocol_violations_are_1002(frame, what):
    events = FrameParser().receive(frame)
    assert error_code(events) == 1002
    assert what in str(events[-1])


def test_unmasked_frame_is_refused_from_its_header_alone():
    assert error_code(FrameParser().receive(b"\x82\x05")) == 1002


def test_oversized_frame_is_refused_before_its_payload_arrives():
    header = client_frame(2, declared_length=1 << 20, length_form=2)[:14]
    events = FrameParser(max_message_size=65536).receive(header)
    assert isinstance(events[-1], MessageTooBigError)
    assert events[-1].code == 1009


def test_message_at_the_size_limit_is_accepted():
    assert FrameParser(max_message_size=1000).receive(client_frame(2, b"z" * 1000)) == [b"z" * 1000]


def test_fragments_adding_up_past_the_limit_are_1009():
    data = client_frame(2, b"a" * 600, fin=False) + client_frame(0, b"b" * 401, fin=False)
    assert error_code(FrameParser(max_message_size=1000).receive(data)) == 1009


def test_messages_before_a_violation_are_still_delivered():
    events = FrameParser().receive(client_frame(2, b"ok") + client_frame(2, b"x", rsv=2))
    assert events[0] == b"ok"
    assert error_code(events) == 1002


def test_parser_ignores_input_after_an_error():
    parser = FrameParser()
    parser.receive(client_frame(2, b"x", masked=False))
    assert parser.finished
    assert parser.receive(client_frame(2, b"fine")) == []


@pytest.mark.parametrize("size", [300, 70000])
def test_partial_extended_length_waits_for_more_bytes(size):
    long_frame = client_frame(2, b"r" * 90000)
    frame = client_frame(2, b"q" * size)
    parser = FrameParser()
    assert parser.receive(long_frame[:100]) == []
    # The long frame must not leave a stale "bytes needed" behind for the short one after it.
    assert parser.receive(long_frame[100:] + frame[:3]) == [b"r" * 90000]
    assert parser.receive(frame[3:]) == [b"q" * size]


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 125, 126, 1024, 16384, 16385, 65535, 65536, 70001])
def test_c_and_fallback_unmasking_agree(n):
    data = os.urandom(n)
    mask = os.urandom(4)
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert wsframe._translate_mask(data, mask) == expected
    assert wsframe.apply_mask(data, mask) == expected
    assert wsframe.apply_mask(memoryview(data), mask) == expected


def test_parser_works_with_the_pure_python_unmasking(monkeypatch):
    monkeypatch.setattr(wsframe, "apply_mask", wsframe._translate_mask)
    payload = os.urandom(20000)
    assert FrameParser().receive(client_frame(2, payload) + client_frame(2, b"s")) == [
        payload,
        b"s",
    ]


def test_close_reason_is_truncated_on_a_character_boundary():
    frame = close_frame(1000, "\u00e9" * 100)
    assert len(frame) <= 127
    assert frame[4:].decode("utf-8") == "\u00e9" * 61


def test_pong_payload_longer_than_a_control_frame_is_refused():
    with pytest.raises(ValueError, match="125"):
        pong_frame(b"x" * 126)


# --- server frames read by a wsproto client ----------------------------------------------------


def wsproto_client_reads(data: bytes) -> list:
    conn = Connection(CLIENT)
    conn.receive_data(data)
    out: list = []
    partial: list[bytes] = []
    for ev in conn.events():
        if isinstance(ev, BytesMessage):
            partial.append(bytes(ev.data))
            if ev.message_finished:
                out.append(b"".join(partial))
                partial = []
        elif isinstance(ev, Pong):
            out.append(("pong", bytes(ev.payload)))
        elif isinstance(ev, CloseConnection):
            out.append(("close", ev.code, ev.reason))
        else:
            out.append(ev)
    return out


@FUZZ
@given(
    sizes=st.lists(st.sampled_from([0, 1, 125, 126, 127, 65535, 65536]) | st.integers(0, 70000)),
    pong=st.binary(max_size=125),
    code=st.sampled_from([None, 1000, 1001, 1003, 1008, 1009, 4000]),
    reason=st.text(max_size=80),
)
def test_wsproto_client_reads_our_server_frames(sizes, pong, code, reason):
    rng = random.Random(len(sizes))
    messages = [rng.randbytes(n) for n in sizes]
    out = bytearray()
    for m in messages:
        write_binary(out, m)
    out += pong_frame(pong)
    out += close_frame(code, reason if code else "")
    expected_reason = close_frame(code, reason)[4:].decode() if code else ""
    expected = [*messages, ("pong", pong), ("close", code or 1005, expected_reason)]
    assert wsproto_client_reads(bytes(out)) == expected


def test_binary_frame_matches_write_binary():
    out = bytearray()
    write_binary(out, b"abc")
    assert binary_frame(b"abc") == out == b"\x82\x03abc"


# --- differential against wsproto's server side ------------------------------------------------


@st.composite
def client_streams(draw):
    """A realistic client byte stream from wsproto's client, with random fragmentation."""
    rng = random.Random(draw(st.integers(0, 2**32)))
    client = Connection(CLIENT)
    chunks: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["binary", "binary", "binary", "text", "ping", "pong"]))
        if kind in ("ping", "pong"):
            event = Ping(rng.randbytes(rng.randint(0, 125)))
            if kind == "pong":
                event = Pong(event.payload)
            chunks.append(client.send(event))
            continue
        size = draw(st.sampled_from([0, 1, 125, 126, 65535, 65536]) | st.integers(0, 70000))
        body = rng.randbytes(size)
        if kind == "text":
            body = "".join(rng.choice("a\u00e9\u20ac\U0001f600") for _ in range(size // 8))
        pieces = sorted(rng.sample(range(len(body) + 1), min(len(body), draw(st.integers(0, 4)))))
        bounds = [0, *pieces, len(body)]
        for i in range(len(bounds) - 1):
            last = i == len(bounds) - 2
            chunks.append(
                client.send(Message(body[bounds[i] : bounds[i + 1]], message_finished=last))
            )
            if not last and rng.random() < 0.3:
                chunks.append(client.send(Ping(rng.randbytes(rng.randint(0, 20)))))
    if draw(st.booleans()):
        code = draw(st.sampled_from([None, 1000, 1001, 3000, 4999]))
        chunks.append(client.send(CloseConnection(code, "done" if code else None)))
        chunks.append(rng.randbytes(rng.randint(0, 50)))  # garbage after close is ignored
    data = b"".join(chunks)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=8))))
    return data, cuts


@settings(FUZZ)
@given(client_streams())
def test_same_messages_as_wsproto_for_wsproto_client_streams(stream):
    data, cuts = stream
    ours = our_server_events(data, cuts)
    assert ours == wsproto_server_events(data, cuts)
    assert ours[1] is None or ours[1][0] == "close"


# --- fuzzing -----------------------------------------------------------------------------------


@st.composite
def hostile_frames(draw):
    """Frames with every header field drawn freely, so each rule gets broken sometimes."""
    frames = []
    for _ in range(draw(st.integers(1, 6))):
        opcode = draw(st.sampled_from([0, 1, 2, 8, 9, 10]) | st.integers(0, 15))
        if opcode == 8 and draw(st.booleans()):
            edges = st.sampled_from([999, 1000, 1004, 1005, 1006, 1012, 1014, 1015, 1016, 2999])
            code = draw(edges | st.sampled_from([3000, 4999, 5000, 5999]) | st.integers(0, 65535))
            payload = struct.pack("!H", code) + draw(st.binary(max_size=8))
        elif opcode == 1:
            payload = draw(st.text(max_size=20)).encode() + draw(st.binary(max_size=2))
        else:
            payload = draw(st.binary(max_size=300))
        frames.append(
            client_frame(
                opcode,
                payload,
                fin=draw(st.booleans()) or draw(st.booleans()),
                rsv=draw(st.sampled_from([0, 0, 0, 0, 1, 2, 4])),
                masked=draw(st.integers(0, 15)) > 0,
                mask=draw(st.binary(min_size=4, max_size=4)),
                length_form=draw(st.none() | st.integers(0, 2)) if len(payload) < 126 else None,
            )
        )
    data = b"".join(frames) + draw(st.binary(max_size=20))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=6))))
    return data, cuts


def check_against_wsproto(data: bytes, cuts: list[int]) -> None:
    ours_msgs, ours_end = our_server_events(data, cuts)
    ref_msgs, ref_end = wsproto_server_events(data, cuts)
    if ref_end is not None and ref_end[1] == 1007 and ours_end != ref_end:
        # wsproto checks UTF-8 frame by frame; we check a text message once it is complete.
        assert ours_msgs[: len(ref_msgs)] == ref_msgs
        return
    if ours_end is not None and ours_end[0] == "error" and ref_end is None:
        # We judge a frame from its first two bytes; wsproto waits for its mask and payload.
        assert ours_msgs == ref_msgs
        ref_msgs, ref_end = wsproto_server_events(data + bytes(16), cuts)
    assert ours_msgs == ref_msgs
    if ours_end is not None and ours_end[0] == "error":
        assert ref_end is not None and ref_end[1] == ours_end[1]
    else:
        assert ours_end == ref_end


@settings(FUZZ)
@given(hostile_frames())
def test_hostile_frames_get_the_same_verdict_as_wsproto(stream):
    check_against_wsproto(*stream)


@settings(FUZZ)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=5))
def test_arbitrary_bytes_give_only_messages_or_a_typed_error(data, cuts):
    cuts = sorted({c for c in cuts if c <= len(data)})
    events = feed(FrameParser(max_message_size=100), data, cuts)
    allowed = (bytes, wsframe.TextMessage, wsframe.Ping, Close)
    assert all(isinstance(ev, (*allowed, FrameError)) for ev in events)
    errors = [i for i, ev in enumerate(events) if isinstance(ev, FrameError)]
    assert errors in ([], [len(events) - 1]), "a FrameError may only be the parser's last event"
    if errors:
        assert events[-1].code in (1002, 1007, 1009)
    check_against_wsproto(data, cuts)
