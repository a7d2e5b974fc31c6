"""Advertising the phone's EID from Linux through BlueZ's D-Bus API (``LEAdvertisingManager1``).

The phone role on a Linux machine advertises like the deployed Android authenticator
(docs/protocol.md section 6.3): a non-connectable ("broadcast") advert carrying the 20-byte service
data under the 16-bit UUID ``FFF9``, which is also listed in the service-UUID list. BlueZ reads the
advert from an ``org.bluez.LEAdvertisement1`` object we export on the system bus, then we ask the
adapter's ``LEAdvertisingManager1`` to register it; leaving the context unregisters it.

dbus-fast (already a bleak dependency) is asyncio-only, so this runs through
``hybrid.ble.asyncio_bridge``. No BlueZ, no adapter or no permission becomes ``NoAdapterError``.
"""

# No ``from __future__ import annotations`` here: dbus-fast reads the D-Bus type signatures from
# the annotations of the exported methods and properties.

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from hybrid.ble.asyncio_bridge import asyncio_service
from hybrid.ble.medium import Advertiser

BLUEZ = "org.bluez"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
ADVERTISING_MANAGER = "org.bluez.LEAdvertisingManager1"
ADVERTISEMENT = "org.bluez.LEAdvertisement1"
ADVERT_PATH_PREFIX = "/org/hybrid/advertisement"
START_TIMEOUT = 10.0


def uuid128(uuid16: int) -> str:
    return f"0000{uuid16:04x}-0000-1000-8000-00805f9b34fb"


def _advertisement_interface(uuid16: int, data: bytes) -> Any:
    from dbus_fast import PropertyAccess, Variant
    from dbus_fast.service import ServiceInterface, dbus_property, method

    uuid = uuid128(uuid16)

    class Advertisement(ServiceInterface):
        """The object BlueZ reads the advert from (``org.bluez.LEAdvertisement1``)."""

        def __init__(self) -> None:
            super().__init__(ADVERTISEMENT)
            self.released = False

        @method()
        def Release(self):  # noqa: N802 - D-Bus member names are CamelCase
            self.released = True

        @dbus_property(access=PropertyAccess.READ)
        def Type(self) -> "s":  # type: ignore[name-defined]  # noqa: F821, N802
            return "broadcast"

        @dbus_property(access=PropertyAccess.READ)
        def ServiceUUIDs(self) -> "as":  # type: ignore[valid-type]  # noqa: F821, F722, N802
            return [uuid]

        @dbus_property(access=PropertyAccess.READ)
        def ServiceData(self) -> "a{sv}":  # type: ignore[valid-type]  # noqa: F821, F722, N802
            return {uuid: Variant("ay", bytes(data))}

    return Advertisement()


async def _call(bus: Any, path: str, interface: str, member: str, signature: str = "",
                body: list | None = None) -> Any:  # fmt: skip
    from dbus_fast import Message, MessageType

    reply = await bus.call(
        Message(
            destination=BLUEZ,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=body or [],
        )
    )
    if reply.message_type == MessageType.ERROR:
        raise OSError(f"{interface}.{member}: {reply.error_name}: {reply.body}")
    return reply.body


class BluezAdvertiser(Advertiser):
    """``Advertiser`` backed by BlueZ over D-Bus (Linux)."""

    def __init__(
        self,
        adapter: str | None = None,
        *,
        bus_address: str | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.adapter = adapter
        self.bus_address = bus_address
        self.start_timeout = start_timeout
        self.bus_name: str | None = None  # our unique bus name while advertising
        self._count = 0

    async def _adapter_path(self, bus: Any) -> str:
        (objects,) = await _call(bus, "/", OBJECT_MANAGER, "GetManagedObjects")
        for path, interfaces in sorted(objects.items()):
            if ADVERTISING_MANAGER not in interfaces:
                continue
            if self.adapter is None or path.rsplit("/", 1)[-1] == self.adapter:
                return path
        wanted = f"adapter {self.adapter}" if self.adapter else "an adapter"
        raise OSError(f"BlueZ has no {wanted} that can advertise")

    @asynccontextmanager
    async def advertise(self, uuid16: int, data: bytes) -> AsyncIterator[None]:
        self._count += 1
        advert_path = f"{ADVERT_PATH_PREFIX}{self._count}"

        async def start() -> tuple[Any, str]:
            from dbus_fast import BusType
            from dbus_fast.aio import MessageBus

            if self.bus_address is not None:
                bus = MessageBus(bus_address=self.bus_address)
            else:
                bus = MessageBus(bus_type=BusType.SYSTEM)
            await bus.connect()
            try:
                adapter_path = await self._adapter_path(bus)
                bus.export(advert_path, _advertisement_interface(uuid16, data))
                await _call(
                    bus, adapter_path, ADVERTISING_MANAGER, "RegisterAdvertisement",
                    "oa{sv}", [advert_path, {}],
                )  # fmt: skip
            except BaseException:
                bus.disconnect()
                raise
            self.bus_name = bus.unique_name
            return bus, adapter_path

        async def stop(state: tuple[Any, str]) -> None:
            bus, adapter_path = state
            try:
                await _call(
                    bus, adapter_path, ADVERTISING_MANAGER, "UnregisterAdvertisement", "o",
                    [advert_path],
                )  # fmt: skip
            except OSError:
                pass  # BlueZ may have released it already (adapter gone); nothing to undo
            finally:
                bus.unexport(advert_path)
                bus.disconnect()

        async with asyncio_service(start, stop, what="BlueZ", start_timeout=self.start_timeout):
            yield
        self.bus_name = None
