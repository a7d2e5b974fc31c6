"""A relay and our phone on trio in a background thread, for tests of synchronous clients.

``PhoneThread`` starts a real relay on 127.0.0.1 (port 0) and answers every ``FIDO:/`` URL put in
``urls`` with one ``PhoneSession`` over the loopback BLE medium: the phone "scans" the QR code by
reading the URL the client shows. ``approver`` and ``can_verify_user`` may be changed between
ceremonies; ``results`` collects each session's ``PhoneResult`` or ``PasskeyError``.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import trio

from hybrid.ble.loopback import LoopbackMedium
from hybrid.catalogue import PasskeyError
from hybrid.desktop import Deadlines
from hybrid.desktop.webauthn_client import HybridWebAuthnClient
from hybrid.phone import (
    CredentialStore,
    PhoneDeadlines,
    PhoneSession,
    SoftwareAuthenticator,
    StoredCredential,
    auto_approver,
)


class PhoneThread:
    """A relay and a phone that answers every URL put in ``urls``, on trio in a thread."""

    def __init__(self, medium: LoopbackMedium, data_dir: Path) -> None:
        self.medium = medium
        self.data_dir = data_dir
        self.urls: queue.Queue[str | None] = queue.Queue()
        self.approver = auto_approver()
        self.results: list[object] = []
        self._relay_url: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    def __enter__(self) -> PhoneThread:
        self._thread.start()
        self.relay_url = self._relay_url.get(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.urls.put(None)
        self._thread.join(timeout=10)
        assert not self._thread.is_alive()

    def store_snapshot(self) -> list[StoredCredential]:
        """Every credential the phone holds now (read through a second connection)."""
        with CredentialStore(self.data_dir) as store:
            return store.all()

    async def _main(self) -> None:
        from relay.server import RelayConfig, serve

        async with trio.open_nursery() as nursery:
            relay = await nursery.start(serve, RelayConfig(host="127.0.0.1", port=0))
            self._relay_url.put(relay.base_url)
            with CredentialStore(self.data_dir) as store:
                while (url := await trio.to_thread.run_sync(self.urls.get)) is not None:
                    authenticator = SoftwareAuthenticator(store, self.approver)
                    phone = PhoneSession(
                        url,
                        authenticator,
                        self.medium.advertiser(),
                        relay_url=relay.base_url,
                        deadlines=PhoneDeadlines(desktop=5, request=3, user=5, linger=0.5),
                    )
                    try:
                        self.results.append(await phone.run())
                    except PasskeyError as exc:
                        self.results.append(exc)
            nursery.cancel_scope.cancel()


def hybrid_client(phone: PhoneThread, origin: str = "https://example.com") -> HybridWebAuthnClient:
    return HybridWebAuthnClient(
        origin,
        phone.medium.scanner,
        relay_url=phone.relay_url,
        on_url=phone.urls.put,  # the "camera": the phone reads the QR the client shows
        deadlines=Deadlines(advert=5, tunnel=3, handshake=3, user=5, linger=0.5),
    )
