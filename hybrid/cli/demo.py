"""`hybrid demo`: the README's first command (see ``hybrid.demo``).

Starts a relay on 127.0.0.1, then a desktop and a phone as two processes that meet over the
loopback BLE medium and the relay; registers a passkey and signs in; prints the QR code and every
step with its duration, and ends by saying whether the relying party verified the assertion.
Exit status 0 only if it did. ``--json FILE`` also writes both responses in the standard WebAuthn
JSON serialization for re-verification by any WebAuthn server library.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import trio

from hybrid.cli.desktop import DEFAULT_TIMEOUT, add_ble_port


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        help="run relay, desktop and phone locally: register a passkey, then sign in",
        description="Start a relay on 127.0.0.1, then a desktop and a phone as two processes "
        "that find each other over the loopback BLE medium; register a passkey and sign in.",
    )
    parser.add_argument("--rp-id", default="example.com", metavar="ID", help="relying party ID")
    parser.add_argument("--user", default="alice", metavar="NAME", help="account name")
    parser.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="keep desktop and phone state here (default: a fresh temporary directory)",
    )
    add_ble_port(parser)
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S", help="per-wait deadline"
    )
    parser.add_argument(
        "--json", type=Path, metavar="FILE", help="write both verified responses as JSON"
    )
    parser.add_argument("--no-qr", action="store_true", help="do not draw the QR code")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hybrid.demo import DemoConfig, conclusion, run_demo

    config = DemoConfig(
        rp_id=args.rp_id,
        user=args.user,
        data_dir=args.data_dir,
        ble_port=args.ble_port,
        timeout=args.timeout,
        json_path=args.json,
        show_qr=not args.no_qr,
    )
    report = trio.run(run_demo, config)
    print()
    print(conclusion(report, config), flush=True)
    if args.json is not None and report.verified:
        document = report.to_json(config.rp_id, config.origin)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote both responses to {args.json}", flush=True)
    if report.verified:
        return 0
    failed = next(c for c in report.ceremonies if not c.verified)
    return failed.desktop_code if failed.desktop_code > 0 else 1
