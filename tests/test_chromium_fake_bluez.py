"""The fake BlueZ the Chromium tests rely on, checked on its own over a real private bus.

What Chromium needs from it (see tests/chromium/bluez.py): a powered adapter in
``GetManagedObjects``, and every advert as a new ``Device1`` announced by ``InterfacesAdded``
from ``/`` with the 20 bytes under ``0000fff9-...`` in ``ServiceData``, whether the advert came as
a loopback datagram or through our real ``BluezAdvertiser``.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from chromium.bluez import ADAPTER, ADAPTER_PATH, DEVICE, FakeBluez, uuid128
from chromium.processes import PrivateBus, under_ci

from hybrid.ble.bluez_advertiser import BluezAdvertiser
from tests.conftest import free_udp_port

ADVERT = bytes(range(20))
FIDO_UUID = uuid128(0xFFF9)

# Skipped only off CI: under CI=true a missing dbus-daemon fails these tests.
pytestmark = pytest.mark.skipif(
    shutil.which("dbus-daemon") is None and not under_ci(), reason="needs dbus-daemon"
)


@pytest.fixture
def bluez(tmp_path: Path) -> Iterator[FakeBluez]:
    bus = PrivateBus(tmp_path).start()
    fake = FakeBluez(bus.address, loopback_port=free_udp_port()).start()
    try:
        yield fake
    finally:
        fake.stop()
        bus.stop()


class Watcher:
    """A separate bus client, like Chromium: reads the managed objects, then InterfacesAdded."""

    def __init__(self, address: str, until: int, timeout: float = 5.0) -> None:
        self.address, self.until, self.timeout = address, until, timeout
        self.objects: dict[str, Any] = {}
        self.added: list[tuple[str, Any]] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        assert self._ready.wait(5), "the watcher did not connect"
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(self.timeout + 5)

    async def _main(self) -> None:
        from dbus_fast import Message, MessageType
        from dbus_fast.aio import MessageBus

        bus = await MessageBus(bus_address=self.address).connect()
        done = asyncio.Event()

        def on_message(message: Message) -> None:
            if (
                message.message_type == MessageType.SIGNAL
                and message.member == "InterfacesAdded"
                and DEVICE in message.body[1]  # not the advertiser's own export of its object
            ):
                self.added.append((message.path or "", message.body))
                if len(self.added) >= self.until:
                    done.set()

        bus.add_message_handler(on_message)
        await bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="AddMatch",
                signature="s",
                body=["type='signal',interface='org.freedesktop.DBus.ObjectManager'"],
            )
        )
        reply = await bus.call(
            Message(
                destination="org.bluez",
                path="/",
                interface="org.freedesktop.DBus.ObjectManager",
                member="GetManagedObjects",
            )
        )
        self.objects = reply.body[0]
        self._ready.set()
        if self.until:
            try:
                await asyncio.wait_for(done.wait(), self.timeout)
            except TimeoutError:
                pass
        bus.disconnect()


def _device_adverts(added: list[tuple[str, Any]]) -> list[tuple[str, str, str, bytes]]:
    adverts = []
    for signal_path, (path, interfaces) in added:
        assert signal_path == "/", "Chromium only listens for InterfacesAdded from /"
        props = interfaces[DEVICE]
        ((uuid, data),) = props["ServiceData"].value.items()
        adverts.append((path, props["Address"].value, uuid, bytes(data.value)))
    return adverts


def test_adapter_is_powered(bluez: FakeBluez) -> None:
    with Watcher(bluez.bus_address, until=0) as watcher:
        pass
    objects = watcher.objects
    assert objects[ADAPTER_PATH][ADAPTER]["Powered"].value is True
    assert "org.bluez.LEAdvertisingManager1" in objects[ADAPTER_PATH]


def test_each_loopback_datagram_is_a_new_device(bluez: FakeBluez) -> None:
    with Watcher(bluez.bus_address, until=2) as watcher:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(2):  # the same advert twice, as the phone repeats it
                sock.sendto(b"\xff\xf9" + ADVERT, ("127.0.0.1", bluez.loopback_port))
    adverts = _device_adverts(watcher.added)
    assert len(adverts) == 2
    assert len({address for _, address, _, _ in adverts}) == 2, "addresses must differ"
    assert all(uuid == FIDO_UUID and data == ADVERT for _, _, uuid, data in adverts)
    assert bluez.devices_from("loopback") == 2


def test_bluez_advertiser_becomes_devices(bluez: FakeBluez) -> None:
    async def advertise() -> None:
        async with BluezAdvertiser(bus_address=bluez.bus_address).advertise(0xFFF9, ADVERT):
            with trio.fail_after(5):
                while bluez.devices_from("bluez") < 2:
                    await trio.sleep(0.02)

    with Watcher(bluez.bus_address, until=2) as watcher:
        trio.run(advertise)
    adverts = _device_adverts(watcher.added)
    assert len(adverts) >= 2
    assert all(uuid == FIDO_UUID and data == ADVERT for _, _, uuid, data in adverts)
    # Read back from the advertisement object, as BlueZ does; gone once unregistered.
    assert bluez.advertisements == {}
    assert "org.bluez.LEAdvertisingManager1.UnregisterAdvertisement" in bluez.chromium_calls()
