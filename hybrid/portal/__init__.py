"""The sign-in portal: the support article's product on top of the hybrid transport.

``hybrid portal`` serves server-rendered pages (Starlette on hypercorn's trio worker, Jinja2
templates, one small script for live status) for a relying party with the article's passkey
policies. The portal process is also the desktop: when a page shows a hybrid QR code it scans for
the phone and runs the tunnel itself (``hybrid.portal.phone_flow`` is its only door to
``hybrid.desktop``).

Modules: ``store`` (SQLite/PostgreSQL data access, versioned schema), ``security`` (clock,
argon2, TOTP, attempt limits), ``sessions``, ``accounts``, ``relying_party`` (python-fido2's
server over the store), ``phone_flow``, ``flows`` (background ceremonies), ``app`` (the pages),
``server`` (hypercorn), ``config``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hybrid.portal.config import PortalConfig
    from hybrid.portal.security import ManualClock
    from hybrid.portal.server import RunningPortal, serve_portal

_EXPORTS = {
    "PortalConfig": "hybrid.portal.config",
    "ManualClock": "hybrid.portal.security",
    "RunningPortal": "hybrid.portal.server",
    "serve_portal": "hybrid.portal.server",
}


def __getattr__(name: str) -> Any:
    # Lazy, so importing one small module of the package does not load the web stack.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hybrid.portal' has no attribute {name!r}")


__all__ = ["ManualClock", "PortalConfig", "RunningPortal", "serve_portal"]
