"""A fake BlueZ (``org.bluez``) on a private D-Bus bus: just enough adapter for Chromium's hybrid.

There is no radio here. Chromium offers hybrid only when BlueZ shows a powered adapter, and it
learns about phones from ``org.bluez.Device1`` objects whose ``ServiceData`` carries the 20-byte
advert under ``0000fff9-...``. This module plays that part over a real ``dbus-daemon``:

* ``/`` answers ``ObjectManager.GetManagedObjects``; ``InterfacesAdded``/``InterfacesRemoved``
  are emitted from ``/`` (Chromium's object-manager proxy listens there only);
* ``/org/bluez`` is an ``AgentManager1``; ``/org/bluez/hci0`` an ``Adapter1`` (powered,
  discovery methods) and an ``LEAdvertisingManager1``;
* every advert becomes a **new** device with a fresh address (Chromium ignores repeated data from
  a device it already knows), removed again a few seconds later so the tree stays small.

Adverts come from two sources, the two ways our phone advertises: the loopback medium (each UDP
datagram on ``loopback_port`` is one advert) and ``RegisterAdvertisement`` from our BlueZ
advertiser (the advertisement object's properties are read back from its owner, then published
as a device about every 100 ms until it is unregistered, like a radio repeating it).

The service runs its own asyncio loop in a thread; ``calls`` records every method call it got
(interface, member, sender) so a test can report what Chromium asked for.
"""

# No ``from __future__ import annotations``: nothing here needs it and the module mirrors
# hybrid/ble/bluez_advertiser.py, where dbus-fast reads annotations.

import asyncio
import itertools
import socket
import threading
import time
from typing import Any

BLUEZ = "org.bluez"
ADAPTER_PATH = "/org/bluez/hci0"
ADAPTER = "org.bluez.Adapter1"
DEVICE = "org.bluez.Device1"
AGENT_MANAGER = "org.bluez.AgentManager1"
ADVERTISING_MANAGER = "org.bluez.LEAdvertisingManager1"
ADVERTISEMENT = "org.bluez.LEAdvertisement1"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
PROPERTIES = "org.freedesktop.DBus.Properties"
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
DEVICE_LIFETIME = 5.0  # seconds a published device stays in the tree
REPEAT_INTERVAL = 0.1  # how often a registered advertisement is "received" again


def uuid128(uuid16: int) -> str:
    return f"0000{uuid16:04x}-0000-1000-8000-00805f9b34fb"


class FakeBluez:
    """``org.bluez`` on the bus at ``bus_address``; also reads loopback adverts from UDP."""

    def __init__(self, bus_address: str, loopback_port: int | None = None) -> None:
        self.bus_address = bus_address
        self.loopback_port = loopback_port
        self.calls: list[tuple[str, str, str]] = []
        self.published: list[tuple[str, str, bytes]] = []  # (source, address, service data)
        self.advertisements: dict[str, dict[str, Any]] = {}  # "sender path" -> properties
        self.errors: list[str] = []
        self._objects: dict[str, dict[str, dict[str, Any]]] = {}
        self._addresses = itertools.count(1)
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._bus: Any = None
        self._thread = threading.Thread(target=self._thread_main, name="fake-bluez", daemon=True)

    # -- lifecycle (called from the test's thread) --------------------------------------------

    def start(self) -> "FakeBluez":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"fake BlueZ did not start: {self.errors}")
        if self.errors:
            raise RuntimeError(f"fake BlueZ failed to start: {self.errors}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def devices_from(self, source: str) -> int:
        return sum(1 for s, _, _ in self.published if s == source)

    def chromium_calls(self) -> list[str]:
        """Distinct ``interface.member`` calls made to us, in first-seen order."""
        seen: dict[str, None] = {}
        for interface, member, _ in self.calls:
            seen.setdefault(f"{interface}.{member}", None)
        return list(seen)

    # -- the service (its own thread and loop) ------------------------------------------------

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported through start() or the test's checks
            self.errors.append(repr(exc))
            self._ready.set()

    async def _main(self) -> None:
        from dbus_fast import Variant
        from dbus_fast.aio import MessageBus

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._bus = await MessageBus(bus_address=self.bus_address).connect()
        await self._bus.request_name(BLUEZ)
        self._objects = {
            "/org/bluez": {AGENT_MANAGER: {}},
            ADAPTER_PATH: {
                ADAPTER: {
                    "Address": Variant("s", "00:1A:7D:DA:71:13"),
                    "AddressType": Variant("s", "public"),
                    "Name": Variant("s", "hybrid-test"),
                    "Alias": Variant("s", "hybrid-test"),
                    "Class": Variant("u", 0x6C010C),
                    "Powered": Variant("b", True),
                    "PowerState": Variant("s", "on"),
                    "Discoverable": Variant("b", False),
                    "DiscoverableTimeout": Variant("u", 180),
                    "Pairable": Variant("b", True),
                    "PairableTimeout": Variant("u", 0),
                    "Discovering": Variant("b", False),
                    "UUIDs": Variant("as", []),
                    "Modalias": Variant("s", "usb:v1D6Bp0246d0540"),
                    "Roles": Variant("as", ["central", "peripheral"]),
                },
                ADVERTISING_MANAGER: {
                    "ActiveInstances": Variant("y", 0),
                    "SupportedInstances": Variant("y", 5),
                    "SupportedIncludes": Variant("as", ["tx-power", "appearance", "local-name"]),
                },
            },
        }
        self._bus.add_message_handler(self._handle)
        tasks = []
        if self.loopback_port is not None:
            tasks.append(asyncio.create_task(self._read_loopback()))
        tasks.append(asyncio.create_task(self._expire_devices()))
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            self._bus.disconnect()

    async def _read_loopback(self) -> None:
        """Each UDP datagram (UUID16 big-endian + service data) becomes one new device."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", self.loopback_port))
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            while True:
                datagram = await loop.sock_recv(sock, 2048)
                if len(datagram) < 2:
                    continue
                uuid16 = int.from_bytes(datagram[:2], "big")
                self._publish("loopback", uuid128(uuid16), datagram[2:])
        finally:
            sock.close()

    async def _expire_devices(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for path, interfaces in list(self._objects.items()):
                born = interfaces.get(DEVICE, {}).get("_born")
                if born is not None and now - born > DEVICE_LIFETIME:
                    self._remove(path)

    def _publish(self, source: str, uuid: str, data: bytes) -> None:
        from dbus_fast import Variant

        n = next(self._addresses)
        # A random static address (top bits 11), different for every advert.
        address = "C0:" + ":".join(f"{(n >> s) & 0xFF:02X}" for s in (32, 24, 16, 8, 0))
        path = f"{ADAPTER_PATH}/dev_{address.replace(':', '_')}"
        props = {
            "Address": Variant("s", address),
            "AddressType": Variant("s", "random"),
            "Alias": Variant("s", address.replace(":", "-")),
            "Paired": Variant("b", False),
            "Bonded": Variant("b", False),
            "Trusted": Variant("b", False),
            "Blocked": Variant("b", False),
            "LegacyPairing": Variant("b", False),
            "Connected": Variant("b", False),
            "ServicesResolved": Variant("b", False),
            "RSSI": Variant("n", -45),
            "Adapter": Variant("o", ADAPTER_PATH),
            "UUIDs": Variant("as", [uuid]),
            "ServiceData": Variant("a{sv}", {uuid: Variant("ay", bytes(data))}),
        }
        self._objects[path] = {DEVICE: dict(props, _born=time.monotonic())}
        self.published.append((source, address, bytes(data)))
        self._signal("/", OBJECT_MANAGER, "InterfacesAdded", "oa{sa{sv}}", [path, {DEVICE: props}])

    def _remove(self, path: str) -> None:
        interfaces = self._objects.pop(path, None)
        if interfaces is not None:
            self._signal("/", OBJECT_MANAGER, "InterfacesRemoved", "oas", [path, list(interfaces)])

    def _signal(self, path: str, interface: str, member: str, signature: str, body: list) -> None:
        from dbus_fast import Message

        self._bus.send(Message.new_signal(path, interface, member, signature, body))

    def _set(self, path: str, interface: str, name: str, value: Any) -> None:
        self._objects[path][interface][name] = value
        self._signal(
            path, PROPERTIES, "PropertiesChanged", "sa{sv}as", [interface, {name: value}, []]
        )

    @staticmethod
    def _public(props: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in props.items() if not k.startswith("_")}

    def _managed_objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {
            path: {iface: self._public(props) for iface, props in interfaces.items()}
            for path, interfaces in self._objects.items()
        }

    def _handle(self, message: Any) -> Any:
        from dbus_fast import Message, MessageType, Variant

        if message.message_type != MessageType.METHOD_CALL:
            return None
        interface, member, path = message.interface or "", message.member, message.path
        self.calls.append((interface, member, message.sender or ""))
        error = Message.new_error

        if interface == OBJECT_MANAGER and member == "GetManagedObjects":
            if path != "/":
                return Message.new_method_return(message, "a{oa{sa{sv}}}", [{}])
            return Message.new_method_return(message, "a{oa{sa{sv}}}", [self._managed_objects()])
        if interface == INTROSPECTABLE:
            return Message.new_method_return(message, "s", [self._introspect(path)])
        if interface == PROPERTIES:
            interfaces = self._objects.get(path)
            if interfaces is None:
                return error(message, "org.freedesktop.DBus.Error.UnknownObject", path)
            wanted = message.body[0]
            props = interfaces.get(wanted)
            if props is None:
                return error(message, "org.freedesktop.DBus.Error.UnknownInterface", wanted)
            if member == "GetAll":
                return Message.new_method_return(message, "a{sv}", [self._public(props)])
            if member == "Get":
                name = message.body[1]
                if name not in props or name.startswith("_"):
                    return error(message, "org.freedesktop.DBus.Error.UnknownProperty", name)
                return Message.new_method_return(message, "v", [props[name]])
            if member == "Set":
                name, value = message.body[1], message.body[2]
                self._set(path, wanted, name, value)
                return Message.new_method_return(message)
        if path == ADAPTER_PATH and interface == ADAPTER:
            if member == "StartDiscovery":
                self._set(ADAPTER_PATH, ADAPTER, "Discovering", Variant("b", True))
            elif member == "StopDiscovery":
                self._set(ADAPTER_PATH, ADAPTER, "Discovering", Variant("b", False))
            elif member == "RemoveDevice":
                self._remove(message.body[0])
            elif member == "GetDiscoveryFilters":
                return Message.new_method_return(
                    message, "as", [["UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData"]]
                )
            return Message.new_method_return(message)
        if path == ADAPTER_PATH and interface == ADVERTISING_MANAGER:
            if member == "RegisterAdvertisement":
                key = f"{message.sender} {message.body[0]}"
                self.advertisements[key] = {}
                asyncio.get_running_loop().create_task(
                    self._follow_advertisement(message.sender, message.body[0], key)
                )
            elif member == "UnregisterAdvertisement":
                self.advertisements.pop(f"{message.sender} {message.body[0]}", None)
            return Message.new_method_return(message)
        if path == "/org/bluez" and interface == AGENT_MANAGER:
            return Message.new_method_return(message)
        if interface.startswith("org.bluez."):
            # Anything else BlueZ offers (GATT, battery, ...): succeed quietly, but record it.
            return Message.new_method_return(message)
        return None

    async def _follow_advertisement(self, owner: str, path: str, key: str) -> None:
        """Read the advertisement back from its owner, as BlueZ does, and 'receive' it."""
        from dbus_fast import Message, MessageType

        reply = await self._bus.call(
            Message(
                destination=owner,
                path=path,
                interface=PROPERTIES,
                member="GetAll",
                signature="s",
                body=[ADVERTISEMENT],
            )
        )
        if reply.message_type == MessageType.ERROR:
            self.errors.append(f"GetAll on {owner} {path}: {reply.error_name} {reply.body}")
            return
        props = {name: variant.value for name, variant in reply.body[0].items()}
        if key not in self.advertisements:
            return  # unregistered meanwhile
        self.advertisements[key] = props
        service_data = {
            uuid: variant.value for uuid, variant in props.get("ServiceData", {}).items()
        }
        while key in self.advertisements:
            for uuid, data in service_data.items():
                self._publish("bluez", uuid, bytes(data))
            await asyncio.sleep(REPEAT_INTERVAL)

    def _introspect(self, path: str) -> str:
        children = sorted(
            {
                other[len(path.rstrip("/")) + 1 :].split("/")[0]
                for other in self._objects
                if other.startswith(path.rstrip("/") + "/")
            }
        )
        interfaces = "".join(f'<interface name="{i}"/>' for i in self._objects.get(path, {}))
        if path == "/":
            interfaces += f'<interface name="{OBJECT_MANAGER}"/>'
        nodes = "".join(f'<node name="{c}"/>' for c in children)
        return f"<node>{interfaces}{nodes}</node>"
