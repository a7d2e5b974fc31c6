"""How the transport's typed errors reach the user: as catalogue entries, the same for both roles.

The desktop and the phone both run a tunnel, a BLE medium and the protocol core; whatever of those
fails, the user must see one entry of the support article's error catalogue (``hybrid.catalogue``).
This module is the one place that decides which entry each transport error becomes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from hybrid.ble.medium import NoAdapterError
from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.errors import ProtocolError
from hybrid.tunnel.client import RelayUnreachableError, TunnelClosedError


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
        raise PasskeyError(Failure.RELAY_UNREACHABLE, operation, str(exc)) from None
    except NoAdapterError as exc:
        raise PasskeyError(Failure.NO_BLE_ADAPTER, operation, str(exc)) from None
    except ProtocolError as exc:
        raise PasskeyError(Failure.PROTOCOL_ERROR, operation, str(exc)) from None
    except TunnelClosedError as exc:
        raise PasskeyError(Failure.PROTOCOL_ERROR, operation, f"{closed_early}: {exc}") from None
