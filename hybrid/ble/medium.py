"""The BLE seam: what the desktop needs from a scanner and the phone from an advertiser.

The hybrid transport only uses BLE to carry one 20-byte service-data value from the phone to the
desktop (protocol notes section 6). Everything above that is radio-independent, so both roles talk
to two small interfaces and the backends (bleak on a real desktop, the loopback medium between two
processes on one machine, an in-memory medium in unit tests) plug in underneath:

* ``Scanner.scan()`` is an async context manager that yields a receive channel of ``ServiceData``
  observations; leaving the context stops scanning and frees the radio.
* ``Advertiser.advertise(uuid16, data)`` is an async context manager; the advert is on the air while
  the context is open.

A backend that cannot get at a radio (no adapter, port already taken) raises ``NoAdapterError`` when
the context is entered; the desktop and phone turn it into the catalogue's "No compatible device
found".
"""

from __future__ import annotations

import abc
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import trio

from hybrid.errors import HybridError

# Observations are dropped, not queued without bound, when a consumer falls behind: adverts repeat
# every ~100 ms, so a lost one costs nothing.
SCAN_BUFFER = 64


class NoAdapterError(HybridError):
    """No usable BLE adapter (or, for the loopback medium, the medium's port cannot be used)."""


@dataclass(frozen=True)
class ServiceData:
    """One observed service-data AD structure: 16-bit service UUID and its value."""

    uuid16: int
    data: bytes


class Scanner(abc.ABC):
    """Receives service data from nearby advertisers."""

    @abc.abstractmethod
    def scan(self) -> AbstractAsyncContextManager[trio.abc.ReceiveChannel[ServiceData]]:
        """Start scanning; the channel yields every service-data value seen until the exit."""


class Advertiser(abc.ABC):
    """Broadcasts one service-data value."""

    @abc.abstractmethod
    def advertise(self, uuid16: int, data: bytes) -> AbstractAsyncContextManager[None]:
        """Advertise ``data`` under the 16-bit service UUID while the context is open."""
