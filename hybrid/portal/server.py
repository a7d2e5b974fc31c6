"""Running the portal: the store, the listening socket and hypercorn's trio worker in one nursery.

``serve_portal(config)`` opens (and migrates) the database, binds the listening socket itself so
that port 0 works and the origin is known before the first request, builds the ``Portal`` and
serves it with hypercorn on trio until cancelled. Background phone ceremonies run in the same
nursery, so stopping the portal stops them too. ``RunningPortal`` (what ``nursery.start`` returns)
tells the URL.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from hybrid.portal.app import Portal
from hybrid.portal.config import PortalConfig
from hybrid.portal.store import StorageError, open_store

logger = logging.getLogger(__name__)


class PortalStartError(StorageError):
    """The portal could not start (database or listening socket)."""


@dataclass
class RunningPortal:
    portal: Portal
    port: int

    @property
    def url(self) -> str:
        return self.portal.origin + "/"


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PortalStartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _check_tls_files(cert: str, key: str | None) -> None:
    """Load the certificate and key once, so a bad file is one clear error, not a traceback."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise PortalStartError(f"cannot use the TLS certificate {cert}: {exc}") from None


async def serve_portal(
    config: PortalConfig, *, task_status: trio.TaskStatus[RunningPortal] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the portal until cancelled; ``task_status`` gets the ``RunningPortal``."""
    if config.tls_cert is not None:
        _check_tls_files(config.tls_cert, config.tls_key)
    store = await trio.to_thread.run_sync(open_store, config.db_url)
    sock = None
    try:
        sock = bind_socket(config.host, config.port)
        port = sock.getsockname()[1]
        scheme = "https" if config.tls else "http"
        origin = f"{scheme}://{config.public_host}:{port}"
        portal = Portal(config, store, origin)
        hconfig = HypercornConfig()
        # hypercorn adopts the descriptor (and closes it): hand it over.
        hconfig.bind = [f"fd://{sock.detach()}"]
        sock = None
        if config.tls_cert is not None:
            hconfig.certfile, hconfig.keyfile = config.tls_cert, config.tls_key
        hconfig.accesslog = None
        # hypercorn's own "Running on http://127.0.0.1:..." would contradict the localhost URL.
        http_log = logging.getLogger("hybrid.portal.http")
        http_log.setLevel(logging.WARNING)
        hconfig.errorlog = http_log
        hconfig.graceful_timeout = 1.0
        async with trio.open_nursery() as nursery:
            portal.flows.nursery = nursery
            await nursery.start(hypercorn_serve, portal.app, hconfig)
            task_status.started(RunningPortal(portal, port))
    finally:
        if sock is not None:
            sock.close()
        store.close()
