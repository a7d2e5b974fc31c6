"""The desktop's default BLE scanner: ``default_scanner()``, the one place that picks a medium.

Without a Bluetooth radio (development, tests, the demo) the desktop scans the loopback medium
(``hybrid.ble.loopback``: UDP on 127.0.0.1, port ``ble_port`` or ``$HYBRID_BLE_PORT`` or 47474);
``medium="bleak"`` scans real BLE adverts with bleak instead. Nothing is bound or opened here: the
scanner binds its port or starts the adapter when a session starts scanning, before the QR code is
shown, so a medium that cannot work fails as "No compatible device found".
"""

from __future__ import annotations

from typing import Literal

from hybrid.ble.medium import Scanner

Medium = Literal["loopback", "bleak"]


def default_scanner(
    ble_port: int | None = None, *, medium: Medium = "loopback", adapter: str | None = None
) -> Scanner:
    """A fresh scanner: the loopback medium on ``ble_port`` (default ``$HYBRID_BLE_PORT`` or
    47474), or with ``medium="bleak"`` the system's Bluetooth adapter (``adapter``, e.g.
    ``"hci1"``, picks one on Linux). A bad port raises ``NoAdapterError``; an unknown medium
    ``ValueError``."""
    if medium == "bleak":
        from hybrid.ble.bleak_scanner import BleakAdvertScanner

        return BleakAdvertScanner(adapter)
    if medium == "loopback":
        from hybrid.ble.loopback import LoopbackScanner

        return LoopbackScanner(ble_port)
    raise ValueError(f"unknown BLE medium {medium!r}: use 'loopback' or 'bleak'")


__all__ = ["Medium", "default_scanner"]
