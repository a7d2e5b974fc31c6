"""The file descriptor limit: raised to the hard limit at start, checked against --max-tunnels.

Each tunnel holds two sockets, and every connection in its opening handshake one more; the soft
RLIMIT_NOFILE of a service is often 1024, far below what ``--max-tunnels 10000`` needs. Raising
the soft limit to the hard one is always allowed; raising the hard limit needs the service manager
(systemd ``LimitNOFILE=``, ``ulimit -Hn``), so below the need the relay says so in its log.
"""

from __future__ import annotations

import logging

from relay.logs import log_event

#: Descriptors beyond two per tunnel: listeners, handshakes in progress, logs, the event loop.
HEADROOM = 256


def needed(max_tunnels: int) -> int:
    return 2 * max_tunnels + HEADROOM


def raise_fd_limit(max_tunnels: int) -> tuple[int, int]:
    """Raise the soft limit to the hard one; log a warning if it is below what is needed.

    Returns (soft, hard) after the change; (-1, -1) where the platform has no such limit.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return -1, -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, needed(max_tunnels))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    want = needed(max_tunnels)
    if soft < want:
        log_event(
            "fd_limit_low",
            logging.WARNING,
            fd_limit=soft,
            needed=want,
            max_tunnels=max_tunnels,
            hint="raise the hard limit (systemd LimitNOFILE=, ulimit -Hn) or lower --max-tunnels",
        )
    return soft, hard
