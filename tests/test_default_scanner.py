"""``hybrid.desktop.default_scanner``: the loopback medium by default, bleak when asked."""

from __future__ import annotations

import pytest
import trio

from hybrid.ble.bleak_scanner import BleakAdvertScanner
from hybrid.ble.loopback import DEFAULT_PORT, LoopbackMedium, LoopbackScanner
from hybrid.ble.medium import NoAdapterError, ServiceData
from hybrid.desktop import default_scanner
from tests.conftest import free_udp_port


def test_loopback_on_the_given_port_env_or_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HYBRID_BLE_PORT", raising=False)
    scanner = default_scanner()
    assert isinstance(scanner, LoopbackScanner) and scanner.port == DEFAULT_PORT
    monkeypatch.setenv("HYBRID_BLE_PORT", "40123")
    assert default_scanner().port == 40123  # type: ignore[attr-defined]
    assert default_scanner(40124).port == 40124  # type: ignore[attr-defined]


def test_bleak_when_asked() -> None:
    assert isinstance(default_scanner(medium="bleak"), BleakAdvertScanner)


def test_bad_port_and_unknown_medium_are_named() -> None:
    with pytest.raises(NoAdapterError, match="1..65535, got 70000"):
        default_scanner(70000)
    with pytest.raises(ValueError, match="unknown BLE medium 'radio'"):
        default_scanner(medium="radio")  # type: ignore[arg-type]


async def test_the_default_scanner_receives_a_real_loopback_advert() -> None:
    port = free_udp_port()
    advert = bytes(range(20))
    async with default_scanner(port).scan() as adverts:
        async with LoopbackMedium(port).advertiser().advertise(0xFFF9, advert):
            with trio.fail_after(5):
                assert await adverts.receive() == ServiceData(0xFFF9, advert)
