"""Scanning real BLE adverts with bleak, bridged from bleak's asyncio world into trio.

bleak is asyncio-only, while the flow runs on trio, so the scanner runs bleak's event loop in a
worker thread and hands each detection back to trio through the trio token (a thread-safe call).
Detections go through ``BleakAdvertScanner.on_detection``, bleak's ordinary detection callback,
which keeps only service data under the two hybrid UUIDs (``FFF9`` and ``FDE2``; bleak reports
service data keyed by the 128-bit UUID string). Scanning is unfiltered on purpose: BlueZ may not
deliver service data reliably with a UUID filter (docs/protocol.md section 6.3).

If bleak cannot start (no adapter, Bluetooth off, no BlueZ/D-Bus), entering ``scan()`` raises
``NoAdapterError``, which the desktop reports as "No compatible device found".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from hybrid.ble.asyncio_bridge import asyncio_service
from hybrid.ble.eid import SERVICE_UUID16S
from hybrid.ble.medium import SCAN_BUFFER, Scanner, ServiceData
from hybrid.ble.seen import MAX_SERVICE_DATA_LEN

START_TIMEOUT = 10.0
_BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"


class _BleakScannerLike(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


DetectionCallback = Callable[[Any, Any], None]
ScannerFactory = Callable[[DetectionCallback], _BleakScannerLike]


def uuid16_of(uuid: str) -> int | None:
    """The 16-bit form of a Bluetooth base UUID (128-bit string or 4 hex digits), else ``None``."""
    text = uuid.strip().lower()
    if len(text) == 4:
        digits = text
    elif len(text) == 36 and text.startswith("0000") and text.endswith(_BASE_UUID_SUFFIX):
        digits = text[4:8]
    else:
        return None
    try:
        return int(digits, 16)
    except ValueError:
        return None


def hybrid_service_data(advertisement: Any) -> Iterator[ServiceData]:
    """Service-data values of one bleak ``AdvertisementData`` that a hybrid desktop looks at."""
    for uuid, value in dict(getattr(advertisement, "service_data", None) or {}).items():
        if not isinstance(uuid, str) or not isinstance(value, bytes | bytearray):
            continue
        if len(value) > MAX_SERVICE_DATA_LEN:  # no AD structure carries that much: not an advert
            continue
        uuid16 = uuid16_of(uuid)
        if uuid16 in SERVICE_UUID16S:
            yield ServiceData(uuid16, bytes(value))


def _default_factory(adapter: str | None) -> ScannerFactory:
    def make(callback: DetectionCallback) -> _BleakScannerLike:
        from bleak import BleakScanner
        from bleak.args.bluez import BlueZScannerArgs

        bluez: BlueZScannerArgs = {"adapter": adapter} if adapter else {}
        return BleakScanner(detection_callback=callback, scanning_mode="active", bluez=bluez)

    return make


class BleakAdvertScanner(Scanner):
    """``Scanner`` backed by bleak (BlueZ on Linux, CoreBluetooth on macOS, WinRT on Windows)."""

    def __init__(
        self,
        adapter: str | None = None,
        *,
        scanner_factory: ScannerFactory | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self._factory = scanner_factory or _default_factory(adapter)
        self._start_timeout = start_timeout
        self._token: trio.lowlevel.TrioToken | None = None
        self._send: trio.MemorySendChannel[ServiceData] | None = None

    def on_detection(self, device: Any, advertisement: Any) -> None:
        """bleak detection callback (any thread): forward hybrid service data to the scan."""
        del device  # phones rotate their addresses; nothing may be keyed on them
        token, send = self._token, self._send
        if token is None or send is None:
            return
        for observed in hybrid_service_data(advertisement):
            try:
                token.run_sync_soon(self._deliver, send, observed)
            except trio.RunFinishedError:
                return

    @staticmethod
    def _deliver(send: trio.MemorySendChannel[ServiceData], observed: ServiceData) -> None:
        try:
            send.send_nowait(observed)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    @asynccontextmanager
    async def scan(self) -> AsyncIterator[trio.abc.ReceiveChannel[ServiceData]]:
        send, receive = trio.open_memory_channel[ServiceData](SCAN_BUFFER)

        async def start() -> _BleakScannerLike:
            scanner = self._factory(self.on_detection)
            await scanner.start()
            return scanner

        async def stop(scanner: _BleakScannerLike) -> None:
            await scanner.stop()

        self._token, self._send = trio.lowlevel.current_trio_token(), send
        try:
            async with asyncio_service(
                start, stop, what="bleak", start_timeout=self._start_timeout
            ):
                yield receive
        finally:
            self._token = self._send = None
            send.close()
