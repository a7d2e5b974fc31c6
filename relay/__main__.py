"""``hybrid-relay`` / ``python -m relay``: run the tunnel relay from the command line.

Every option is a flag and an environment variable (``HYBRID_RELAY_<FLAG>``, flag upper-cased with
dashes as underscores); a flag given on the command line wins over the environment. Logs are JSON
lines on stderr; SIGTERM or SIGINT starts a graceful shutdown.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

import trio

from relay.config import ConfigError, RelayConfig
from relay.fdlimit import raise_fd_limit
from relay.logs import configure, log_event
from relay.server import Relay, serve
from relay.version import __version__

ENV_PREFIX = "HYBRID_RELAY_"
_LOG_LEVELS = ["debug", "info", "warning", "error"]


def _hex_prefix(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected hex digits (0 to 4, e.g. 0A), got {text!r}"
        ) from None


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _str(text: str) -> str:
    return text


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def _origins(text: str) -> tuple[str, ...]:
    return tuple(o.strip() for o in text.split(",") if o.strip())


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _networks(text: str) -> tuple[str, ...]:
    networks = _origins(text)
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{network!r} is not an IP address or network (CIDR)"
            ) from None
    return networks


# (flag, type, config field, help); defaults come from RelayConfig.
_OPTIONS: list[tuple[str, Callable[[str], Any], str, str]] = [
    ("--host", _str, "host", "address to listen on"),
    ("--port", _int, "port", "TCP port; 0 picks a free port (logged in the 'listening' event)"),
    (
        "--node-prefix",
        _hex_prefix,
        "node_prefix",
        "hex, 0-1 byte: fixed first byte of every routing id this node issues "
        "(at least 16 random bits remain)",
    ),
    ("--wait-timeout", _float, "wait_timeout", "seconds a /cable/new socket waits for its peer"),
    (
        "--tunnel-lifetime",
        _float,
        "tunnel_lifetime",
        "seconds a tunnel may live from the authenticator's connect",
    ),
    ("--max-message-size", _int, "max_message_size", "largest message in bytes (over: 1009)"),
    ("--max-messages", _int, "max_messages", "messages each peer may send per tunnel (over: 1008)"),
    (
        "--max-pending-messages",
        _int,
        "max_pending_messages",
        "authenticator messages buffered before the initiator joins (over: 1008)",
    ),
    (
        "--max-pending-bytes",
        _int,
        "max_pending_bytes",
        "bytes one authenticator may buffer before its initiator joins (over: 1008)",
    ),
    (
        "--max-pending-bytes-total",
        _int,
        "max_pending_bytes_total",
        "bytes all waiting authenticators of this node may buffer together (over: 1008)",
    ),
    (
        "--max-tunnels",
        _int,
        "max_tunnels",
        "concurrent tunnels on this node (over: 503); default sized from memory",
    ),
    (
        "--max-waiting-per-address",
        _int,
        "max_waiting_per_address",
        "waiting tunnels one client (IPv4 address, IPv6 /64) may hold (over: 429)",
    ),
    (
        "--max-waiting-per-network",
        _int,
        "max_waiting_per_network",
        "waiting tunnels one IPv4 /24 or IPv6 /64 may hold (over: 429)",
    ),
    (
        "--pressure-wait-timeout",
        _float,
        "pressure_wait_timeout",
        "near --max-tunnels, seconds a tunnel that sent nothing may wait (then 1008)",
    ),
    (
        "--max-connections-per-address",
        _int,
        "max_connections_per_address",
        "concurrent connections from one client IP (over: 429)",
    ),
    (
        "--handshake-timeout",
        _float,
        "handshake_timeout",
        "seconds from accept to a complete request and upgrade (over: 408 and close)",
    ),
    ("--max-request-head", _int, "max_request_head", "largest HTTP request head (over: 431)"),
    (
        "--close-timeout",
        _float,
        "close_timeout",
        "seconds to wait for a peer's close frame after sending ours",
    ),
    (
        "--shutdown-grace",
        _float,
        "shutdown_grace",
        "seconds paired tunnels get to finish once the listener is closed",
    ),
    (
        "--drain-delay",
        _float,
        "drain_delay",
        "seconds after SIGTERM/SIGINT during which /healthz answers 503 and new tunnels are "
        "refused while the listener stays open (for load balancers), before the listener closes",
    ),
    (
        "--allowed-origins",
        _origins,
        "allowed_origins",
        "comma-separated Origin allow-list; requests with another Origin get 403 (empty: off)",
    ),
    (
        "--connect-failure-burst",
        _int,
        "connect_failure_burst",
        "failed /cable/connect attempts one client may make at once (then 429)",
    ),
    (
        "--connect-failure-rate",
        _float,
        "connect_failure_rate",
        "failed /cable/connect attempts per second one client regains",
    ),
    (
        "--ping-interval",
        _float,
        "ping_interval",
        "seconds between WebSocket pings on each tunnel socket; a peer silent for a whole "
        "interval is closed (0: no pings)",
    ),
    (
        "--rate-limit",
        _float,
        "rate_limit",
        "requests per second per client address to /cable/new, and separately to /cable/connect "
        "(token bucket; over: 429 with Retry-After; 0: off)",
    ),
    (
        "--rate-burst",
        _int,
        "rate_burst",
        "requests a client address may make at once (bucket size)",
    ),
    (
        "--trusted-proxies",
        _networks,
        "trusted_proxies",
        "comma-separated addresses or CIDR networks of proxies whose PROXY header and "
        "X-Forwarded-For give the real client address (from anyone else they are refused)",
    ),
    (
        "--proxy-protocol",
        _bool,
        "proxy_protocol",
        "expect a PROXY protocol v1/v2 header on connections from --trusted-proxies",
    ),
    (
        "--admin",
        _address,
        "admin",
        "HOST:PORT for a separate admin listener serving /metrics and /healthz (then /metrics "
        "is not served on the public port)",
    ),
    ("--tls-cert", _str, "tls_cert", "PEM certificate chain; with --tls-key serves wss://"),
    ("--tls-key", _str, "tls_key", "PEM private key for --tls-cert"),
    (
        "--engine",
        _str,
        "engine",
        "auto, reactor or tasks: 'reactor' serves plain-TCP connections from one callback loop "
        "(Linux, no TLS, no --proxy-protocol), 'tasks' runs one trio task per connection; 'auto' "
        "takes the reactor where it applies. Behaviour is the same; the reactor costs less CPU",
    ),
]


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def _default_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex().upper() or "(none)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value) or "(none)"
    return "(none)" if value is None else str(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hybrid-relay",
        description="caBLE v2 / FIDO hybrid tunnel relay (WebSocket rendezvous server).",
        epilog="Every option can also be set with the environment variable shown. Other "
        "commands: 'hybrid-relay lb-config --help' (nginx/HAProxy configuration for several "
        "nodes), 'hybrid-relay cluster --help' (a local cluster behind nginx or HAProxy).",
    )
    config_defaults = {f.name: f.default for f in fields(RelayConfig)}
    for flag, kind, name, text in _OPTIONS:
        # A switch: "--proxy-protocol" alone means true; "--proxy-protocol false" also works.
        switch = {"nargs": "?", "const": True} if kind is _bool else {}
        parser.add_argument(
            flag,
            type=kind,
            dest=name,
            default=None,
            help=f"{text} [env {env_name(flag)}; default {_default_text(config_defaults[name])}]",
            **switch,  # type: ignore[arg-type]
        )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=_LOG_LEVELS,
        help=f"log level [env {env_name('--log-level')}; default info]",
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help='TOML file with the same keys as the flags (e.g. port = 8080, node-prefix = "0A", '
        'trusted-proxies = ["10.0.0.0/8"]); flags and environment variables win over it '
        f"[env {env_name('--config')}]",
    )
    parser.add_argument("--version", action="version", version=f"hybrid-relay {__version__}")
    return parser


def _toml_text(value: Any) -> str | None:
    """A TOML value as the text a flag would carry (lists joined by commas); None if no fit."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ",".join(value)
    return None


def _read_config_file(path: str, parser: argparse.ArgumentParser) -> dict[str, str]:
    """The ``--config`` TOML file as {flag: text}; one-line usage errors for anything wrong."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        parser.error(f"--config {path}: cannot read it: {exc.strerror}")
    except tomllib.TOMLDecodeError as exc:
        parser.error(f"--config {path}: not valid TOML: {exc}")
    known = {flag for flag, *_ in _OPTIONS} | {"--log-level"}
    texts: dict[str, str] = {}
    for key, value in data.items():
        flag = "--" + key.replace("_", "-")
        if flag not in known:
            parser.error(
                f"--config {path}: unknown key {key!r} (keys are the flag names, e.g. port)"
            )
        text = _toml_text(value)
        if text is None:
            parser.error(
                f"--config {path}: key {key!r}: expected a string, number, boolean or list of "
                f"strings, got {type(value).__name__}"
            )
        texts[flag] = text
    return texts


def config_from(
    argv: Sequence[str] | None, environ: dict[str, str] | None = None
) -> tuple[RelayConfig, str]:
    """Flags over environment variables over the --config file over defaults.

    Raises SystemExit(2) with one line naming the option and what it expects on bad input.
    """
    environ = dict(os.environ) if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    config_path = args.config or environ.get(env_name("--config"))
    from_file = _read_config_file(config_path, parser) if config_path else {}
    values: dict[str, Any] = {}
    for flag, kind, name, _ in _OPTIONS:
        value = getattr(args, name)
        if value is None:
            if env_name(flag) in environ:
                source, text = env_name(flag), environ[env_name(flag)]
            elif flag in from_file:
                source, text = f"--config {config_path}: key {flag[2:]!r}", from_file[flag]
            else:
                continue
            try:
                value = kind(text)
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{source}: {exc}")
        values[name] = value
    level = (
        args.log_level
        or environ.get(env_name("--log-level"))
        or from_file.get("--log-level", "info")
    )
    if level not in _LOG_LEVELS:
        parser.error(f"log level: expected one of {', '.join(_LOG_LEVELS)}, got {level!r}")
    try:
        return RelayConfig(**values), level
    except ConfigError as exc:
        parser.error(str(exc))
    raise AssertionError("unreachable")


async def _run(config: RelayConfig) -> None:
    # The receiver is open before the relay logs "listening", so no early signal is lost.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            relay: Relay = await nursery.start(serve, config)
            async for signum in signals:
                log_event("signal", signal=signal.Signals(signum).name)
                break
            nursery.start_soon(_shut_down, relay, nursery.cancel_scope)
            # A second signal during the grace period ends the wait at once.
            async for signum in signals:
                log_event("shutdown_forced", signal=signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


async def _shut_down(relay: Relay, scope: trio.CancelScope) -> None:
    await relay.shutdown()
    scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "lb-config":
        from relay import balancer

        return balancer.main(args[1:])
    if args and args[0] == "cluster":
        from relay import cluster

        return cluster.main(args[1:])
    config, level = config_from(args)
    configure(level)
    raise_fd_limit(config.tunnel_limit)
    failure: OSError | None = None
    try:
        trio.run(_run, config)
    except* OSError as group:
        # Binding the port or loading the TLS files failed; nursery layers wrap it in groups.
        failure = _first(group)
    if failure is not None:
        log_event("fatal", logging.ERROR, error=str(failure))
        print(f"hybrid-relay: error: {failure}", file=sys.stderr)
        return 1
    return 0


def _first(group: BaseException) -> OSError:
    while isinstance(group, BaseExceptionGroup):
        group = group.exceptions[0]
    assert isinstance(group, OSError)
    return group


if __name__ == "__main__":
    sys.exit(main())
