"""An in-memory BLE medium for unit tests: scanners and advertisers of one ``MemoryMedium`` object.

It behaves like the air in one room: every advert on the medium reaches every scanner currently
scanning, repeated every ``interval`` seconds while the advertiser's context is open. Tests can also
``inject`` arbitrary service data (foreign adverts, junk) to see how a desktop copes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from hybrid.ble.medium import (
    SCAN_BUFFER,
    Advertiser,
    NoAdapterError,
    Scanner,
    ServiceData,
)
from hybrid.trio_util import single_exceptions


class MemoryMedium:
    """A shared broadcast domain for in-process scanners and advertisers."""

    def __init__(self, interval: float = 0.02, *, adapter_present: bool = True) -> None:
        self.interval = interval
        self.adapter_present = adapter_present
        self._listeners: set[trio.MemorySendChannel[ServiceData]] = set()
        self.sent: list[ServiceData] = []

    def inject(self, uuid16: int, data: bytes) -> None:
        """Deliver one service-data value to every current scanner (drops if a buffer is full)."""
        observed = ServiceData(uuid16, bytes(data))
        self.sent.append(observed)
        for listener in list(self._listeners):
            try:
                listener.send_nowait(observed)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    @property
    def scanning(self) -> int:
        """How many scanners are active (lets tests wait for the desktop to start scanning)."""
        return len(self._listeners)

    def scanner(self) -> MemoryScanner:
        return MemoryScanner(self)

    def advertiser(self) -> MemoryAdvertiser:
        return MemoryAdvertiser(self)

    def _check_adapter(self) -> None:
        if not self.adapter_present:
            raise NoAdapterError("in-memory BLE medium: adapter switched off")


class MemoryScanner(Scanner):
    def __init__(self, medium: MemoryMedium) -> None:
        self.medium = medium

    @asynccontextmanager
    async def scan(self) -> AsyncIterator[trio.abc.ReceiveChannel[ServiceData]]:
        self.medium._check_adapter()
        send, receive = trio.open_memory_channel[ServiceData](SCAN_BUFFER)
        self.medium._listeners.add(send)
        try:
            yield receive
        finally:
            self.medium._listeners.discard(send)
            send.close()
            receive.close()


class MemoryAdvertiser(Advertiser):
    def __init__(self, medium: MemoryMedium) -> None:
        self.medium = medium

    @asynccontextmanager
    async def advertise(self, uuid16: int, data: bytes) -> AsyncIterator[None]:
        self.medium._check_adapter()
        with single_exceptions():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._repeat, uuid16, bytes(data))
                try:
                    yield
                finally:
                    nursery.cancel_scope.cancel()

    async def _repeat(self, uuid16: int, data: bytes) -> None:
        while True:
            self.medium.inject(uuid16, data)
            await trio.sleep(self.medium.interval)
