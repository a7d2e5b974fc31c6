"""What a portal process is configured with (the ``hybrid portal`` options, as one object)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from hybrid.cli.portal import DEFAULT_HOST, DEFAULT_PORT
from hybrid.portal.phone_flow import PhoneSettings
from hybrid.portal.security import Clock
from hybrid.portal.sessions import DEFAULT_IDLE_TIMEOUT

DB_FILENAME = "portal.sqlite3"
PRODUCT_NAME = "Hybrid Portal"


@dataclass
class PortalConfig:
    """Everything ``serve_portal`` needs; tests build one directly with a ``ManualClock``."""

    db_url: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    phone: PhoneSettings = field(default_factory=PhoneSettings)
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    public_host: str = "localhost"  # WebAuthn needs a domain, not an IP: pages use this name
    rp_id: str | None = None  # default: public_host
    name: str = PRODUCT_NAME
    clock: Clock = time.time
    tls_cert: str | None = None  # PEM certificate chain: serve HTTPS (cookies get Secure)
    tls_key: str | None = None
    behind_tls_proxy: bool = False  # a TLS proxy in front: https origin, Secure cookies

    @property
    def tls(self) -> bool:
        return self.behind_tls_proxy or self.tls_cert is not None

    @property
    def effective_rp_id(self) -> str:
        return self.rp_id or self.public_host


def default_db_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / DB_FILENAME}"
