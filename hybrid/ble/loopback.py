"""The loopback BLE medium: UDP datagrams on 127.0.0.1 stand in for the radio between processes.

Two processes on one machine (the demo's desktop and phone, or our code and an independent
implementation) find each other through it exactly as they would over the air: the phone
"advertises" its encrypted EID and the desktop "scans" for it. The wire format is deliberately tiny
so that other tools can join:

* Each advertisement is **one UDP datagram** sent to ``127.0.0.1:<port>``.
* Payload = the 16-bit service UUID as two bytes, **big-endian** (``FF F9`` or ``FD E2``), followed
  by the service data (the 20-byte advert, or longer when a CTAP 2.3 suffix is present).
* The scanner binds ``127.0.0.1:<port>``; only one scanner can hold the port at a time. Datagrams
  shorter than 2 bytes or under another UUID are ignored.
* The advertiser repeats its datagram about every 100 ms until it is told to stop (the phone stops
  once the Noise handshake arrives), like a phone's low-latency advertising interval.

The port is ``DEFAULT_PORT`` (47474) unless ``--ble-port`` or the ``HYBRID_BLE_PORT`` environment
variable says otherwise. A scanner that cannot bind the port (another scanner holds it) reports
``NoAdapterError``, which the desktop shows as "No compatible device found".
"""

from __future__ import annotations

import errno
import os
import socket as stdlib_socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from hybrid.ble.eid import SERVICE_UUID16S
from hybrid.ble.medium import Advertiser, NoAdapterError, Scanner, ServiceData
from hybrid.trio_util import single_exceptions

DEFAULT_PORT = 47474
PORT_ENV_VAR = "HYBRID_BLE_PORT"
HOST = "127.0.0.1"
ADVERTISING_INTERVAL = 0.1
UUID_LEN = 2
# Service data beyond a CTAP 2.3 suffix never comes near this; it only bounds the read buffer.
MAX_DATAGRAM = 2048


def resolve_port(port: int | None = None) -> int:
    """The medium's port: an explicit value, else ``$HYBRID_BLE_PORT``, else ``DEFAULT_PORT``."""
    if port is None:
        raw = os.environ.get(PORT_ENV_VAR, "").strip()
        if not raw:
            return DEFAULT_PORT
        try:
            port = int(raw)
        except ValueError:
            raise NoAdapterError(f"{PORT_ENV_VAR} is not a port number: {raw!r}") from None
    if not 1 <= port <= 65535:
        raise NoAdapterError(f"loopback BLE port must be 1..65535, got {port}")
    return port


def encode_datagram(uuid16: int, data: bytes) -> bytes:
    """The loopback wire form of one advertisement."""
    return uuid16.to_bytes(UUID_LEN, "big") + bytes(data)


def decode_datagram(datagram: bytes) -> ServiceData | None:
    """Inverse of ``encode_datagram``; ``None`` for anything that is not an advert we scan for."""
    if len(datagram) < UUID_LEN:
        return None
    uuid16 = int.from_bytes(datagram[:UUID_LEN], "big")
    if uuid16 not in SERVICE_UUID16S:
        return None
    return ServiceData(uuid16, bytes(datagram[UUID_LEN:]))


class _DatagramChannel(trio.abc.ReceiveChannel[ServiceData]):
    """Reads the bound socket directly, so scanning needs no background task."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock

    async def receive(self) -> ServiceData:
        while True:
            try:
                datagram = await self._sock.recv(MAX_DATAGRAM)
            except OSError as exc:
                raise trio.ClosedResourceError(f"loopback BLE socket failed: {exc}") from exc
            observed = decode_datagram(datagram)
            if observed is not None:
                return observed

    async def aclose(self) -> None:
        self._sock.close()
        await trio.lowlevel.checkpoint()


class LoopbackScanner(Scanner):
    """Scans the loopback medium by binding its UDP port on 127.0.0.1."""

    def __init__(self, port: int | None = None) -> None:
        self.port = resolve_port(port)

    @asynccontextmanager
    async def scan(self) -> AsyncIterator[trio.abc.ReceiveChannel[ServiceData]]:
        # No SO_REUSEADDR: UDP has no TIME_WAIT, so a restarted scanner rebinds at once anyway,
        # and on Linux the option would let two scanners share the port and split the adverts.
        sock = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
        try:
            await sock.bind((HOST, self.port))
        except OSError as exc:
            sock.close()
            reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise NoAdapterError(
                f"loopback BLE medium: cannot bind {HOST}:{self.port} ({reason})"
            ) from None
        channel = _DatagramChannel(sock)
        try:
            yield channel
        finally:
            sock.close()


class LoopbackAdvertiser(Advertiser):
    """Advertises on the loopback medium: one datagram to 127.0.0.1:port every ~100 ms."""

    def __init__(self, port: int | None = None, interval: float = ADVERTISING_INTERVAL) -> None:
        self.port = resolve_port(port)
        self.interval = interval

    @asynccontextmanager
    async def advertise(self, uuid16: int, data: bytes) -> AsyncIterator[None]:
        datagram = encode_datagram(uuid16, data)
        sock = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_DGRAM)
        try:
            with single_exceptions():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._repeat, sock, datagram)
                    try:
                        yield
                    finally:
                        nursery.cancel_scope.cancel()
        finally:
            sock.close()

    async def _repeat(self, sock: trio.socket.SocketType, datagram: bytes) -> None:
        while True:
            try:
                await sock.sendto(datagram, (HOST, self.port))
            except OSError:
                # Nobody scanning yet (ICMP port unreachable) is normal: keep advertising.
                pass
            await trio.sleep(self.interval)


class LoopbackMedium:
    """Factory for both ends of one loopback medium (one port)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = resolve_port(port)

    def scanner(self) -> LoopbackScanner:
        return LoopbackScanner(self.port)

    def advertiser(self) -> LoopbackAdvertiser:
        return LoopbackAdvertiser(self.port)
