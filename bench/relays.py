"""The relays the suite knows how to start: ours (any command) and the references under bench/.

Reference relays (all on 127.0.0.1, ``--port 0``, one ``{"event": "listening"}`` JSON line):

* ``websockets``: ``bench/reference/ws_relay.py``, a minimal relay on the websockets library;
* ``node``: ``bench/reference/node/relay.js``, a minimal relay on Node.js ``ws`` + bufferutil
  (its node_modules are installed with ``npm ci`` on first use);
* ``tcp``: ``bench/reference/tcp_relay.py``, a raw TCP copy loop: the floor, not a WebSocket relay.
"""

from __future__ import annotations

import io
import shlex
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REFERENCE_DIR = BENCH_DIR / "reference"
NODE_DIR = REFERENCE_DIR / "node"
REFERENCES = ("websockets", "node", "tcp")

#: Our relay with its per-tunnel and per-address limits lifted: the benchmark pushes thousands of
#: messages through one tunnel and thousands of sockets from one address, which the defaults
#: (docs/protocol.md section 14) rightly refuse.
OUR_RELAY_ARGS = (
    "-m relay --host 127.0.0.1 --port 0 --max-messages 100000000 --max-tunnels 100000 "
    "--max-connections-per-address 100000 --shutdown-grace 0"
)


def default_relay_cmd() -> str:
    return f"{shlex.quote(sys.executable)} {OUR_RELAY_ARGS}"


@dataclass(frozen=True)
class RelaySpec:
    name: str
    argv: list[str]
    kind: str  # "ws" or "tcp"
    cwd: str | None = None
    note: str = ""


def ours(cmd: str) -> RelaySpec:
    return RelaySpec("ours", shlex.split(cmd), "ws", note="relay under test")


def before(rev: str, workdir: Path) -> RelaySpec:
    """Our relay as it was at git revision ``rev``: the "before" column of the same run.

    The ``relay`` and ``hybrid`` packages of that revision are extracted with ``git archive`` into
    ``workdir`` and started from there (``python -m`` puts the working directory first on the
    import path, ahead of the installed checkout).
    """
    target = workdir / f"before-{rev}"
    if not (target / "relay").is_dir():
        try:
            archive = subprocess.run(
                [
                    "git",
                    "-C",
                    str(BENCH_DIR.parent),
                    "archive",
                    "--format=tar",
                    rev,
                    "relay",
                    "hybrid",
                ],
                capture_output=True,
                check=True,
                timeout=60,
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            raise ValueError(
                f"cannot extract revision {rev!r} with git archive: "
                f"{detail.decode(errors='replace').strip() or exc}"
            ) from None
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
    argv = [sys.executable, *shlex.split(OUR_RELAY_ARGS)]
    return RelaySpec("before", argv, "ws", cwd=str(target), note=f"our relay at {rev}")


def ensure_node_modules(log: callable = print) -> str | None:  # type: ignore[valid-type]
    """Install the node reference's dependencies if missing; return why it cannot run, or None."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        return "node is not installed"
    modules = NODE_DIR / "node_modules"
    if (modules / "ws").is_dir() and (modules / "bufferutil").is_dir():
        return None
    if npm is None:
        return "npm is not installed (needed once to install ws + bufferutil)"
    log(f"bench: installing the node reference's dependencies (npm ci in {NODE_DIR}) ...")
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"npm ci failed: {exc}"
    if done.returncode != 0:
        return f"npm ci failed: {done.stderr.strip()[-500:]}"
    return None


def reference(name: str) -> RelaySpec:
    host = ["--host", "127.0.0.1", "--port", "0"]
    if name == "websockets":
        argv = [sys.executable, str(REFERENCE_DIR / "ws_relay.py"), *host]
        return RelaySpec(name, argv, "ws", note="minimal relay on websockets (asyncio)")
    if name == "node":
        argv = [shutil.which("node") or "node", str(NODE_DIR / "relay.js"), *host]
        return RelaySpec(name, argv, "ws", cwd=str(NODE_DIR), note="minimal relay on Node.js ws")
    if name == "tcp":
        argv = [sys.executable, str(REFERENCE_DIR / "tcp_relay.py"), *host]
        return RelaySpec(name, argv, "tcp", note="raw TCP copy loop (floor, not WebSocket)")
    raise ValueError(f"unknown reference relay {name!r} (choose from {', '.join(REFERENCES)})")
