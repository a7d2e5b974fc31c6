"""The desktop (initiator): show a ``FIDO:/`` QR code, find the phone, run one CTAP2 request.

``DesktopSession`` runs the hybrid transaction on trio; ``register`` and ``sign_in`` wrap it in a
whole WebAuthn ceremony verified by a relying party; ``hybrid.desktop.ctap`` builds the CTAP2
requests and the python-fido2 response objects; ``hybrid.desktop.webauthn_client`` is the
python-fido2 ``WebAuthnClient`` façade over all of it. ``default_scanner()`` is the BLE medium a
desktop scans by default (the loopback medium, or bleak when asked); ``run_trio`` (in
``hybrid.desktop.asyncio_support``) awaits a trio session from an asyncio application.
"""

from hybrid.desktop.asyncio_support import run_trio
from hybrid.desktop.scanners import default_scanner
from hybrid.desktop.session import (
    CeremonyResult,
    Deadlines,
    DesktopSession,
    Progress,
    Transcript,
    client_data_for,
    register,
    sign_in,
)

__all__ = [
    "CeremonyResult",
    "Deadlines",
    "DesktopSession",
    "Progress",
    "Transcript",
    "client_data_for",
    "default_scanner",
    "register",
    "run_trio",
    "sign_in",
]
