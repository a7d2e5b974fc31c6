"""`hybrid desktop` sub-command (placeholder until its issue lands)."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("desktop", help="(not implemented yet)")
    parser.set_defaults(func=lambda args: print("not implemented yet") or 2)
