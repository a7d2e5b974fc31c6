"""The BlueZ advertiser on a private D-Bus daemon, against a stand-in for BlueZ's adapter object.

No radio (and no BlueZ) exists here, so ``org.bluez`` is played by a small D-Bus service that does
what BlueZ does with an advert: list the adapter in ``GetManagedObjects``, accept
``RegisterAdvertisement`` and read the advertisement object's properties back from its owner.
The D-Bus daemon, the wire protocol and our exported object are real.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from collections.abc import Iterator

import pytest
import trio

from hybrid.ble.bluez_advertiser import ADVERTISEMENT, BluezAdvertiser, uuid128
from hybrid.ble.medium import NoAdapterError
from tests.conftest import skip_unless_ci_must_have

ADAPTER = "/org/bluez/hci0"
ADVERT = bytes(range(20))


@pytest.fixture
def bus_address() -> Iterator[str]:
    # .ci/apt.d/ble.txt installs dbus-daemon in CI.
    skip_unless_ci_must_have(shutil.which("dbus-daemon") is not None, "dbus-daemon")
    daemon = subprocess.Popen(
        ["dbus-daemon", "--session", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield daemon.stdout.readline().strip()
    finally:
        daemon.terminate()
        daemon.wait(timeout=5)


class FakeBluez:
    """Plays ``org.bluez`` on the private bus, in its own thread and asyncio loop."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.events: list[tuple[str, object]] = []
        self.ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def __enter__(self) -> FakeBluez:
        self._thread.start()
        assert self.ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)

    async def _main(self) -> None:
        from dbus_fast import Message, MessageType, Variant
        from dbus_fast.aio import MessageBus

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        bus = await MessageBus(bus_address=self.address).connect()
        await bus.request_name("org.bluez")

        async def read_back(owner: str, path: str) -> None:
            reply = await bus.call(
                Message(
                    destination=owner,
                    path=path,
                    interface="org.freedesktop.DBus.Properties",
                    member="GetAll",
                    signature="s",
                    body=[ADVERTISEMENT],
                )
            )
            props = {k: v.value for k, v in reply.body[0].items()}
            self.events.append(("properties", props))

        def handle(message: Message):
            if message.message_type != MessageType.METHOD_CALL:
                return None
            if message.member == "GetManagedObjects":
                objects = {
                    ADAPTER: {
                        "org.bluez.Adapter1": {"Address": Variant("s", "00:00:00:00:00:00")},
                        "org.bluez.LEAdvertisingManager1": {},
                    }
                }
                return Message.new_method_return(message, "a{oa{sa{sv}}}", [objects])
            if message.member == "RegisterAdvertisement" and message.path == ADAPTER:
                self.events.append(("register", message.body[0]))
                asyncio.get_running_loop().create_task(read_back(message.sender, message.body[0]))
                return Message.new_method_return(message)
            if message.member == "UnregisterAdvertisement" and message.path == ADAPTER:
                self.events.append(("unregister", message.body[0]))
                return Message.new_method_return(message)
            return None

        bus.add_message_handler(handle)
        self.ready.set()
        await self._stop.wait()
        bus.disconnect()


async def test_advert_is_registered_with_bluez_and_removed_afterwards(bus_address: str) -> None:
    with FakeBluez(bus_address) as bluez:
        advertiser = BluezAdvertiser(bus_address=bus_address)
        async with advertiser.advertise(0xFFF9, ADVERT):
            with trio.fail_after(5):
                while not any(kind == "properties" for kind, _ in bluez.events):
                    await trio.sleep(0.02)
        with trio.fail_after(5):
            while not any(kind == "unregister" for kind, _ in bluez.events):
                await trio.sleep(0.02)
    events = dict(bluez.events)
    assert events["register"] == events["unregister"]
    props = events["properties"]
    assert props["Type"] == "broadcast"  # non-connectable, like the deployed phone's advert
    assert props["ServiceUUIDs"] == [uuid128(0xFFF9)]
    (value,) = props["ServiceData"].values()
    assert list(props["ServiceData"]) == ["0000fff9-0000-1000-8000-00805f9b34fb"]
    assert value.signature == "ay" and value.value == ADVERT


async def test_no_bluez_on_the_bus_is_no_adapter(bus_address: str) -> None:
    with pytest.raises(NoAdapterError, match="BlueZ"):
        async with BluezAdvertiser(bus_address=bus_address, start_timeout=5).advertise(
            0xFFF9, ADVERT
        ):
            pass
