"""Kept for existing imports: the client now lives in ``hybrid.desktop.webauthn_client``."""

from hybrid.desktop.webauthn_client import HybridWebAuthnClient

__all__ = ["HybridWebAuthnClient"]
