"""The bleak scanner backend: bleak's own advertisement objects through our detection callback.

No radio exists here, so bleak's BlueZ scanner is replaced by a stand-in with bleak's start/stop
interface; everything else (threading bridge, UUID filtering, trio channel) is the real code.
"""

from __future__ import annotations

import pytest
import trio
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData

from hybrid.ble.bleak_scanner import BleakAdvertScanner, hybrid_service_data, uuid16_of
from hybrid.ble.eid import FIDO_SERVICE_UUID, GOOGLE_SERVICE_UUID
from hybrid.ble.medium import NoAdapterError, ServiceData

ADVERT = bytes(range(20))


def advertisement(service_data: dict[str, bytes]) -> AdvertisementData:
    return AdvertisementData(
        local_name=None,
        manufacturer_data={},
        service_data=service_data,
        service_uuids=list(service_data),
        tx_power=None,
        rssi=-60,
        platform_data=(),
    )


def device() -> BLEDevice:
    return BLEDevice("5A:11:22:33:44:55", None, details=None)


class RadioStandIn:
    """Has bleak's ``start``/``stop``; the test plays the radio by calling the callback."""

    def __init__(self, callback) -> None:
        self.callback = callback
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False


def test_uuid16_of_accepts_base_uuids_only() -> None:
    assert uuid16_of(FIDO_SERVICE_UUID) == 0xFFF9
    assert uuid16_of(GOOGLE_SERVICE_UUID.upper()) == 0xFDE2
    assert uuid16_of("fff9") == 0xFFF9
    assert uuid16_of("0000fff9-0000-1000-8000-00805f9b34fc") is None
    assert uuid16_of("not a uuid") is None


def test_only_hybrid_service_data_is_kept() -> None:
    adv = advertisement(
        {
            FIDO_SERVICE_UUID: ADVERT,
            GOOGLE_SERVICE_UUID: ADVERT[::-1],
            "0000180f-0000-1000-8000-00805f9b34fb": b"\x64",
        }
    )
    assert sorted(hybrid_service_data(adv), key=lambda s: s.uuid16) == [
        ServiceData(0xFDE2, ADVERT[::-1]),
        ServiceData(0xFFF9, ADVERT),
    ]


async def test_detections_reach_the_scan_channel_from_bleaks_thread() -> None:
    radios: list[RadioStandIn] = []

    def factory(callback):
        radios.append(RadioStandIn(callback))
        return radios[-1]

    scanner = BleakAdvertScanner(scanner_factory=factory)
    async with scanner.scan() as adverts:
        (radio,) = radios
        assert radio.running
        assert radio.callback == scanner.on_detection
        # detections arrive on bleak's thread in real life; any thread must work
        await trio.to_thread.run_sync(
            radio.callback, device(), advertisement({"0000feaa-0000-1000-8000-00805f9b34fb": b"x"})
        )
        await trio.to_thread.run_sync(
            radio.callback, device(), advertisement({GOOGLE_SERVICE_UUID: ADVERT})
        )
        with trio.fail_after(2):
            assert await adverts.receive() == ServiceData(0xFDE2, ADVERT)
    assert not radio.running


async def test_detections_outside_a_scan_are_dropped() -> None:
    scanner = BleakAdvertScanner(scanner_factory=RadioStandIn)
    scanner.on_detection(device(), advertisement({FIDO_SERVICE_UUID: ADVERT}))  # no error


async def test_adapter_that_fails_to_start_is_no_adapter() -> None:
    class NoRadio(RadioStandIn):
        async def start(self) -> None:
            raise OSError("org.bluez.Error.NotReady")

    with pytest.raises(NoAdapterError, match="no usable Bluetooth adapter"):
        async with BleakAdvertScanner(scanner_factory=NoRadio).scan():
            pass
