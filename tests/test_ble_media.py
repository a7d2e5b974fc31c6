"""The loopback and in-memory BLE media: wire format, repeats, filtering, port ownership."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from hybrid.ble.loopback import (
    DEFAULT_PORT,
    LoopbackAdvertiser,
    LoopbackScanner,
    decode_datagram,
    encode_datagram,
    resolve_port,
)
from hybrid.ble.medium import NoAdapterError, ServiceData
from hybrid.ble.memory import MemoryMedium

ADVERT = bytes(range(20))


def test_datagram_is_big_endian_uuid_then_service_data() -> None:
    assert encode_datagram(0xFFF9, ADVERT) == b"\xff\xf9" + ADVERT
    assert encode_datagram(0xFDE2, ADVERT) == b"\xfd\xe2" + ADVERT
    assert decode_datagram(b"\xfd\xe2" + ADVERT) == ServiceData(0xFDE2, ADVERT)


@pytest.mark.parametrize("datagram", [b"", b"\xff", b"\xf9\xff" + ADVERT, b"\x18\x0f" + ADVERT])
def test_short_or_foreign_datagrams_are_ignored(datagram: bytes) -> None:
    assert decode_datagram(datagram) is None


def test_port_comes_from_argument_then_environment_then_default(monkeypatch) -> None:
    monkeypatch.delenv("HYBRID_BLE_PORT", raising=False)
    assert resolve_port() == DEFAULT_PORT == 47474
    monkeypatch.setenv("HYBRID_BLE_PORT", "5000")
    assert resolve_port() == 5000
    assert resolve_port(6000) == 6000
    monkeypatch.setenv("HYBRID_BLE_PORT", "nope")
    with pytest.raises(NoAdapterError):
        resolve_port()
    with pytest.raises(NoAdapterError):
        resolve_port(70000)


async def test_loopback_advertiser_repeats_about_every_100_ms(ble_socket: socket.socket) -> None:
    seen: list[tuple[float, ServiceData]] = []
    port = ble_socket.getsockname()[1]
    async with LoopbackScanner(sock=ble_socket).scan() as adverts:
        async with LoopbackAdvertiser(port).advertise(0xFFF9, ADVERT):
            with trio.move_on_after(0.55):
                async for observed in adverts:
                    seen.append((trio.current_time(), observed))
    assert all(observed == ServiceData(0xFFF9, ADVERT) for _, observed in seen)
    assert 3 <= len(seen) <= 7
    gaps = sorted(b[0] - a[0] for a, b in zip(seen, seen[1:], strict=False))
    assert 0.08 < gaps[len(gaps) // 2] < 0.2  # median: robust to a busy machine


async def test_loopback_advertiser_stops_when_its_context_exits(ble_socket: socket.socket) -> None:
    async with LoopbackScanner(sock=ble_socket).scan() as adverts:
        async with LoopbackAdvertiser(ble_socket.getsockname()[1]).advertise(0xFFF9, ADVERT):
            assert await adverts.receive() == ServiceData(0xFFF9, ADVERT)
        await trio.sleep(0.05)
        # drain anything already in flight, then nothing more may arrive
        with trio.move_on_after(0.05):
            async for _ in adverts:
                pass
        with trio.move_on_after(0.3) as scope:
            await adverts.receive()
        assert scope.cancelled_caught


async def test_loopback_scanner_accepts_datagrams_from_any_tool(ble_socket: socket.socket) -> None:
    """A foreign implementation only needs a plain UDP socket to join the medium."""
    ble_port = ble_socket.getsockname()[1]
    async with LoopbackScanner(sock=ble_socket).scan() as adverts:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tool:
            tool.sendto(b"\x00", ("127.0.0.1", ble_port))
            tool.sendto(b"\x12\x34" + ADVERT, ("127.0.0.1", ble_port))
            tool.sendto(b"\xfd\xe2" + ADVERT + b"suffix", ("127.0.0.1", ble_port))
        with trio.fail_after(2):
            observed = await adverts.receive()
    assert observed == ServiceData(0xFDE2, ADVERT + b"suffix")


async def test_second_scanner_on_the_same_port_has_no_adapter(ble_port: int) -> None:
    async with LoopbackScanner(ble_port).scan():
        with pytest.raises(NoAdapterError, match="in use"):
            async with LoopbackScanner(ble_port).scan():
                pass
    # and the port is free again afterwards
    async with LoopbackScanner(ble_port).scan():
        pass


async def test_memory_medium_repeats_on_its_interval_and_stops_with_the_context(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Virtual time: the count is exact, not a wall-clock bound.
    medium = MemoryMedium(interval=0.1)
    async with medium.scanner().scan() as adverts:
        start = trio.current_time()
        async with medium.advertiser().advertise(0xFFF9, ADVERT):
            await trio.sleep(1.05)
        await trio.sleep(5)  # nothing more after the context closed
        received = 0
        while True:
            try:
                adverts.receive_nowait()
            except trio.WouldBlock:
                break
            received += 1
    assert len(medium.sent) == 11  # at 0.0, 0.1, ..., 1.0 s
    assert set(medium.sent) == {ServiceData(0xFFF9, ADVERT)}
    assert trio.current_time() - start == pytest.approx(6.05)
    assert received == 11  # every repeat reached the scanner, none after the context


async def test_memory_medium_broadcasts_to_every_scanner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    medium = MemoryMedium(interval=0.01)
    async with medium.scanner().scan() as first, medium.scanner().scan() as second:
        assert medium.scanning == 2
        async with medium.advertiser().advertise(0xFFF9, ADVERT):
            assert await first.receive() == ServiceData(0xFFF9, ADVERT)
            assert await second.receive() == ServiceData(0xFFF9, ADVERT)
    assert medium.scanning == 0


async def test_memory_medium_without_adapter_refuses_to_scan() -> None:
    medium = MemoryMedium(adapter_present=False)
    with pytest.raises(NoAdapterError):
        async with medium.scanner().scan():
            pass


async def test_loopback_advertiser_datagrams_as_any_tool_sees_them(
    ble_socket: socket.socket,
) -> None:
    """An independent scanner binding the port with a plain UDP socket gets the exact bytes."""
    with ble_socket as tool:  # a plain socket bound to the port, like any other tool's
        tool.setblocking(False)
        async with LoopbackAdvertiser(tool.getsockname()[1]).advertise(0xFFF9, ADVERT):
            await trio.sleep(0.25)
        datagrams = []
        while True:
            try:
                datagrams.append(tool.recv(4096))
            except BlockingIOError:
                break
    assert 1 <= len(datagrams) <= 4
    assert set(datagrams) == {b"\xff\xf9" + ADVERT}
