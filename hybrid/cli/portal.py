"""`hybrid portal`: the sign-in web portal (relying party + desktop side), and its accounts.

``hybrid portal [--host H] [--port P] [--db URL] [--relay URL] [--ble-port N]`` serves the pages
until Ctrl-C; its first stdout line is ``portal: http://localhost:PORT/``. ``--demo`` also starts a
relay on 127.0.0.1 (unless ``--relay`` names one), creates an administrator ``alice`` with a
printed password if the database has no users, and prints how to approve with ``hybrid phone``.

``hybrid portal user add NAME --password-file F [--role admin]`` creates an account in the same
database (``--db`` / ``--data-dir`` as for serving); the person enrols a second factor at the first
sign-in.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from hybrid.portal.app import Portal
    from hybrid.portal.config import PortalConfig

from hybrid.cli.args import seconds_arg
from hybrid.cli.desktop import DEFAULT_TIMEOUT, add_ble_port, default_data_dir


def _add_db_options(parser: argparse.ArgumentParser, *, inherit: bool = False) -> None:
    # On `user add`, SUPPRESS keeps a --db given before the sub-command (argparse would otherwise
    # overwrite it with the sub-parser's default).
    extra: dict[str, object] = {"default": argparse.SUPPRESS} if inherit else {}
    parser.add_argument(
        "--db",
        **extra,  # type: ignore[arg-type]
        metavar="URL",
        help="database: sqlite:///PATH or postgresql://USER@HOST:PORT/DB "
        "(default: SQLite file portal.sqlite3 in --data-dir)",
    )
    parser.add_argument(
        "--data-dir",
        **extra,  # type: ignore[arg-type]
        type=Path,
        metavar="DIR",
        help="where the default SQLite database lives (default: $HYBRID_DATA_DIR/portal or "
        "~/.local/share/hybrid/portal)",
    )


# Kept here rather than imported: every `hybrid` command builds this parser, and the portal's
# modules (web framework, database drivers) must not slow their start-up.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "portal",
        help="serve the sign-in portal: passwords, 2FA and passkeys on a phone over hybrid",
        description="Serve the sign-in portal: a relying party with the support article's "
        "passkey policies and its web pages. The portal process is the desktop: when a page "
        "shows a QR code it scans for the phone (loopback BLE medium or bleak) and runs the "
        "tunnel through the relay.",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"listen address (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"listen port, 0 for any (default {DEFAULT_PORT})",
    )
    _add_db_options(parser)
    parser.add_argument(
        "--relay",
        metavar="URL",
        help="relay base URL (ws://host:port) for every phone tunnel "
        "(default: the relay the phone's advert names)",
    )
    add_ble_port(parser)
    parser.add_argument(
        "--ble",
        choices=("loopback", "bleak"),
        default="loopback",
        help="BLE backend: the loopback medium (default) or a real adapter through bleak",
    )
    parser.add_argument(
        "--timeout",
        type=seconds_arg,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help="seconds to wait for the phone and for its user (default 60)",
    )
    parser.add_argument(
        "--session-timeout",
        type=float,
        default=10.0,
        metavar="MIN",
        help="idle minutes before a session expires, 5 to 15 (default 10)",
    )
    parser.add_argument(
        "--public-host",
        default="localhost",
        metavar="NAME",
        help="host name the pages are served under and the WebAuthn RP ID (default localhost; "
        "WebAuthn does not accept IP addresses)",
    )
    parser.add_argument(
        "--tls-cert", metavar="F", help="PEM certificate (chain): serve HTTPS (default: plain HTTP)"
    )
    parser.add_argument(
        "--tls-key", metavar="F", help="PEM private key for --tls-cert (default: none)"
    )
    parser.add_argument(
        "--behind-tls-proxy",
        action="store_true",
        help="a TLS-terminating proxy serves the pages: https origin and Secure cookies "
        "(default: off)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="also start a relay on 127.0.0.1, create user alice if there is none, and print "
        "how to approve with `hybrid phone` (default: off)",
    )
    parser.set_defaults(func=run)
    actions = parser.add_subparsers(dest="portal_command", metavar="COMMAND")
    user = actions.add_parser("user", help="manage accounts").add_subparsers(
        dest="user_command", metavar="ACTION"
    )
    user.required = True
    add = user.add_parser(
        "add",
        help="create an account",
        description="Create an account; its owner enrols a second factor at the first sign-in.",
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument(
        "--password-file",
        required=True,
        metavar="F",
        help="file holding the initial password (one line; - reads standard input)",
    )
    add.add_argument(
        "--role",
        default="user",
        choices=("user", "support", "admin", "superuser"),
        help="user (default), support (sees the admin pages, cannot remove passkeys), admin, "
        "superuser",
    )
    _add_db_options(add, inherit=True)
    add.set_defaults(func=run_user_add)


def _db_url(args: argparse.Namespace) -> str:
    from hybrid.portal.config import default_db_url

    if args.db:
        return args.db
    data_dir = args.data_dir or default_data_dir("portal")
    return default_db_url(data_dir)


def _read_password(path: str) -> str:
    from hybrid.portal.accounts import AccountError

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise AccountError(f"cannot read the password file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise AccountError(f"the password file {path} is not UTF-8 text") from None
    return text.rstrip("\r\n")


def run_user_add(args: argparse.Namespace) -> int:
    import time

    from hybrid.portal.accounts import create_account
    from hybrid.portal.store import open_store

    password = _read_password(args.password_file)
    store = open_store(_db_url(args))
    try:
        create_account(store, args.name, password, args.role, time.time())
        store.add_audit(time.time(), "command line", "user added", args.name, args.role)
    finally:
        store.close()
    print(f"portal: added user {args.name} ({args.role})", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    if getattr(args, "portal_command", None):  # pragma: no cover - argparse routes sub-commands
        return 2
    from hybrid.portal.phone_flow import PhoneSettings

    if not 0 <= args.port <= 65535:
        print(f"hybrid portal: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    if not 5 <= args.session_timeout <= 15:
        print("hybrid portal: --session-timeout must be 5 to 15 minutes", file=sys.stderr)
        return 2
    if args.timeout <= 0:
        print("hybrid portal: --timeout must be positive", file=sys.stderr)
        return 2
    if args.ble_port is not None and not 1 <= args.ble_port <= 65535:
        print("hybrid portal: --ble-port must be 1..65535", file=sys.stderr)
        return 2
    if (args.tls_cert is None) != (args.tls_key is None):
        print("hybrid portal: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    for path in (args.tls_cert, args.tls_key):
        if path is not None and not Path(path).is_file():
            print(f"hybrid portal: {path}: no such file", file=sys.stderr)
            return 2
    from hybrid.portal.config import PortalConfig

    if args.demo and not args.db and args.data_dir is None:
        import tempfile

        # Like `hybrid demo`: a fresh database each time, so the printed password always works.
        args.data_dir = Path(tempfile.mkdtemp(prefix="hybrid-portal-demo-"))
    config = PortalConfig(
        db_url=_db_url(args),
        host=args.host,
        port=args.port,
        phone=PhoneSettings(
            relay_url=args.relay, ble=args.ble, ble_port=args.ble_port, timeout=args.timeout
        ),
        idle_timeout=args.session_timeout * 60,
        public_host=args.public_host,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        behind_tls_proxy=args.behind_tls_proxy,
    )
    import logging

    # Operators see each failed ceremony (catalogue title and technical detail) on stderr.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    logging.getLogger("hybrid.portal").setLevel(logging.INFO)
    trio.run(_serve, config, args.demo)
    return 0


async def _serve(config: PortalConfig, demo: bool) -> None:
    from hybrid.trio_util import single_exceptions

    # A start-up failure (port taken, database down) leaves as its own one-line error.
    with single_exceptions():
        await _serve_in_nursery(config, demo)


async def _serve_in_nursery(config: PortalConfig, demo: bool) -> None:
    from dataclasses import replace

    from hybrid.ble.loopback import resolve_port
    from hybrid.portal.server import serve_portal

    async with trio.open_nursery() as nursery:
        if demo and not config.phone.relay_url:
            from relay.server import RelayConfig
            from relay.server import serve as serve_relay

            relay = await nursery.start(serve_relay, RelayConfig(host="127.0.0.1", port=0))
            config = replace(config, phone=replace(config.phone, relay_url=relay.base_url))
        running = await nursery.start(serve_portal, config)
        print(f"portal: {running.url}", flush=True)
        if demo:
            account = await trio.to_thread.run_sync(_demo_account, running.portal)
            ble_port = resolve_port(config.phone.ble_port)
            print(
                f"portal: relay {config.phone.relay_url}, loopback BLE port {ble_port}, database "
                f"{running.portal.store.description}\n"
                + (
                    f"portal: sign in as {account[0]} with password {account[1]}\n"
                    if account
                    else "portal: the database already has users: sign in with one of them\n"
                )
                + "portal: when a page shows a QR code, approve with a phone in another terminal:\n"
                f"  hybrid phone --approve --relay {config.phone.relay_url} --ble-port {ble_port} "
                "--data-dir /tmp/portal-phone 'FIDO:/...'\n"
                '  (the link is under "Cannot scan?" below the code; or pass --qr-image with a '
                "screenshot)",
                flush=True,
            )


def _demo_account(portal: Portal) -> tuple[str, str] | None:
    import time

    from hybrid.portal.accounts import create_account

    if portal.store.list_users():
        return None
    password = secrets.token_urlsafe(9)
    create_account(portal.store, "alice", password, "admin", time.time())
    return "alice", password
