"""What a desktop checks and opens *before* it shows a QR code, so it never shows one in vain.

A QR code is a promise that a phone scanning it can finish the ceremony. Before making it, the
desktop therefore validates its relay URL (``check_relay_url``) and opens its BLE scanner
(``prepared_scanner``: binds the loopback medium's port, or starts the adapter through bleak). A
failure is the catalogue error whose cause fits, raised before any QR exists.

``prepared_scanner`` yields a ``Scanner`` whose ``scan()`` hands out the channel that is already
open, so a ``DesktopSession`` given it starts receiving adverts without a second bind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import trio

from hybrid.ble.medium import NoAdapterError, Scanner, ServiceData
from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.session_errors import check_relay_url

__all__ = ["check_relay_url", "prepared_scanner"]


class _OpenedScanner(Scanner):
    """A scanner whose scan is already running: ``scan()`` returns the open channel."""

    def __init__(self, channel: trio.abc.ReceiveChannel[ServiceData], inner: Scanner) -> None:
        self._channel = channel
        self.inner = inner

    def scan(self) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[ServiceData]]:
        @asynccontextmanager
        async def already_open() -> AsyncIterator[trio.abc.ReceiveChannel[ServiceData]]:
            yield self._channel

        return already_open()


@asynccontextmanager
async def prepared_scanner(scanner: Scanner, operation: Operation) -> AsyncIterator[Scanner]:
    """Open ``scanner`` now; "No compatible device found" (before any QR) if it cannot start."""
    try:
        context = scanner.scan()
        channel = await context.__aenter__()
    except NoAdapterError as exc:
        raise PasskeyError(
            Failure.NO_BLE_ADAPTER, operation, f"{exc}; no QR code was shown"
        ) from None
    try:
        yield _OpenedScanner(channel, scanner)
    except BaseException as exc:
        if not await context.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await context.__aexit__(None, None, None)
