"""How the transport's typed errors reach the user: as catalogue entries, the same for both roles.

The desktop and the phone both run a tunnel, a BLE medium and the protocol core; whatever of those
fails, the user must see one entry of the support article's error catalogue (``hybrid.catalogue``),
the one whose cause fits, with a detail saying what actually happened. This module is the one place
that decides which entry each transport error becomes:

* the relay cannot be reached, refuses the upgrade, or its TLS certificate does not verify: "Passkey
  Unavailable" at once (never a timeout), the detail naming the refusal: HTTP 409 on
  ``/cable/new`` means another phone already opened this QR code's tunnel, HTTP 404 on
  ``/cable/connect`` that the phone's tunnel is gone, a certificate error that the relay's
  certificate does not verify (and how to trust a private CA);
* no advert before the deadline: "Passkey Request Timed Out", saying whether no phone was heard at
  all or a phone was nearby but advertised for another QR code;
* a QR code that is stale on the phone: "Session Expired".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hybrid.ble.medium import NoAdapterError
from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.errors import ProtocolError
from hybrid.tunnel.client import RelayUnreachableError, TunnelClosedError
from hybrid.tunnel.relay_url import RelayUrlError, validate_relay_url
from hybrid.wire import CONNECT_PATH_PREFIX, NEW_PATH_PREFIX

# A QR code older than this is probably no longer awaited by its desktop (which gives up after
# 60 s by default); the phone warns, and says "Session Expired" if no desktop then comes.
QR_STALE_AFTER = 180.0

_CERTIFICATE_MARKERS = ("CERTIFICATE_VERIFY_FAILED", "SSLCertVerificationError")


def check_relay_url(relay_url: str | None, operation: Operation) -> str | None:
    """The normalised relay base URL; "Passkey Unavailable" naming the problem if unusable
    (checked before any QR code is shown or any tunnel opened)."""
    if relay_url is None:
        return None
    try:
        return validate_relay_url(relay_url)
    except RelayUrlError as exc:
        raise PasskeyError(Failure.RELAY_UNREACHABLE, operation, str(exc)) from None


def relay_error_detail(exc: RelayUnreachableError) -> str:
    """What a relay failure means, in words, followed by what the tunnel client reported."""
    text = str(exc)
    status = getattr(exc, "status_code", None)
    if status == 409 and NEW_PATH_PREFIX in text:
        return (
            "this QR code is already being used by another phone (the relay answered HTTP 409 "
            f"Conflict: {text})"
        )
    if status == 404 and CONNECT_PATH_PREFIX in text:
        return f"the phone's tunnel no longer exists on the relay (HTTP 404: {text})"
    if any(marker in text for marker in _CERTIFICATE_MARKERS):
        # The tunnel client keeps the TLS error's text; say plainly what it means and the fix.
        return (
            "the relay's TLS certificate does not verify; if the relay uses a private CA, pass "
            f"--ca-file PEM or set HYBRID_CA_FILE ({text})"
        )
    return text


def advert_timeout_error(operation: Operation, deadline: float, other_adverts: int) -> PasskeyError:
    """The desktop heard no advert for its QR code in time: say whether it heard any at all."""
    if other_adverts:
        detail = (
            f"a phone is nearby, but it scanned another code: {other_adverts} advert(s) seen "
            f"within {deadline:g} s, none for this QR code"
        )
    else:
        detail = f"no phone advert at all within {deadline:g} s"
    return PasskeyError(Failure.TIMEOUT, operation, detail)


def stale_qr_warning(age: float) -> str | None:
    """A warning for a QR code ``age`` seconds old, or ``None`` while it is fresh."""
    if age <= QR_STALE_AFTER:
        return None
    minutes = age / 60
    return (
        f"this QR code was made {minutes:.0f} minutes ago; its desktop has probably stopped "
        "waiting (scan a fresh one)"
    )


@contextmanager
def catalogue_errors(operation: Operation, *, closed_early: str) -> Iterator[None]:
    """Re-raise transport errors from the block as ``PasskeyError`` for ``operation``.

    ``closed_early`` says, from this role's point of view, what a tunnel that closed before the
    transaction finished means (for example "the desktop went away").
    """
    try:
        yield
    except PasskeyError:
        raise
    except RelayUnreachableError as exc:
        raise PasskeyError(Failure.RELAY_UNREACHABLE, operation, relay_error_detail(exc)) from None
    except NoAdapterError as exc:
        raise PasskeyError(Failure.NO_BLE_ADAPTER, operation, str(exc)) from None
    except ProtocolError as exc:
        raise PasskeyError(Failure.PROTOCOL_ERROR, operation, str(exc)) from None
    except TunnelClosedError as exc:
        raise PasskeyError(Failure.PROTOCOL_ERROR, operation, f"{closed_early}: {exc}") from None
