"""The relays the suite knows how to start: ours (any command) and the references under bench/.

Reference relays (all on 127.0.0.1, ``--port 0``, one ``{"event": "listening"}`` JSON line):

* ``websockets``: ``bench/reference/ws_relay.py``, a minimal relay on the websockets library;
* ``node``: ``bench/reference/node/relay.js``, a minimal relay on Node.js ``ws`` + bufferutil
  (its node_modules are installed with ``npm ci`` on first use);
* ``go``: ``bench/reference/go/relay.go``, a minimal relay on Go's net/http + gorilla/websocket,
  one goroutine reading each side; built offline on first use from Debian's ``golang-go`` and
  ``golang-github-gorilla-websocket-dev`` (GOPATH mode, nothing downloaded) into the cache dir;
* ``tcp``: ``bench/reference/tcp_relay.py``, a raw TCP copy loop: the floor, not a WebSocket relay.

Built and extracted artefacts (the Go binary, ``--before`` trees) live in :func:`cache_dir`,
outside the git tree.
"""

from __future__ import annotations

import hashlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REFERENCE_DIR = BENCH_DIR / "reference"
NODE_DIR = REFERENCE_DIR / "node"
GO_SOURCE = REFERENCE_DIR / "go" / "relay.go"
#: Where Debian's golang-github-gorilla-websocket-dev puts the library's source (GOPATH layout).
GO_PATH = Path("/usr/share/gocode")
GORILLA_DIR = GO_PATH / "src/github.com/gorilla/websocket"
REFERENCES = ("websockets", "node", "go", "tcp")

#: Our relay with its per-tunnel and per-address limits lifted: the benchmark pushes thousands of
#: messages through one tunnel and thousands of sockets from one address, which the defaults
#: (docs/protocol.md section 14) rightly refuse.
OUR_RELAY_ARGS = (
    "-m relay --host 127.0.0.1 --port 0 --max-messages 100000000 --max-tunnels 100000 "
    "--max-connections-per-address 100000 --shutdown-grace 0"
)


def cache_dir() -> Path:
    """Build cache outside git: $HYBRID_BENCH_CACHE, else $XDG_CACHE_HOME/hybrid-bench."""
    explicit = os.environ.get("HYBRID_BENCH_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hybrid-bench"


def default_relay_cmd() -> str:
    return f"{shlex.quote(sys.executable)} {OUR_RELAY_ARGS}"


@dataclass(frozen=True)
class RelaySpec:
    name: str
    argv: list[str]
    kind: str  # "ws" or "tcp"
    cwd: str | None = None
    note: str = ""
    env: dict[str, str] = field(default_factory=dict)


def ours(cmd: str) -> RelaySpec:
    return RelaySpec("ours", shlex.split(cmd), "ws", note="relay under test")


def before(rev: str, workdir: Path) -> RelaySpec:
    """Our relay as it was at git revision ``rev``: the "before" column of the same run.

    The ``relay`` and ``hybrid`` packages of that revision are extracted with ``git archive`` into
    ``workdir`` and started from there (``python -m`` puts the working directory first on the
    import path, ahead of the installed checkout).
    """
    target = workdir / f"before-{rev.replace('/', '_')}"
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


def ensure_node_modules(log: Callable[[str], object] = print) -> str | None:
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


def ensure_go_relay(log: Callable[[str], object] = print) -> tuple[Path | None, str | None]:
    """Build the Go reference if its binary is not cached yet; (binary, None) or (None, why).

    The build is offline: GOPATH mode against Debian's gorilla/websocket source, GOPROXY=off,
    cgo off (no C compiler needed). The binary is keyed by the source and the Go version, so an
    edited relay.go or a new toolchain rebuilds it.
    """
    go = shutil.which("go")
    if go is None:
        return None, "go is not installed (Debian: apt-get install golang-go)"
    if not (GORILLA_DIR / "server.go").is_file():
        return None, (
            f"gorilla/websocket is not in {GORILLA_DIR} "
            "(Debian: apt-get install golang-github-gorilla-websocket-dev)"
        )
    try:
        version = subprocess.run(
            [go, "version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"go version failed: {exc}"
    digest = hashlib.sha256(GO_SOURCE.read_bytes() + version.encode()).hexdigest()[:16]
    build_dir = cache_dir() / "go"
    binary = build_dir / f"relay-{digest}"
    if binary.is_file():
        return binary, None
    build_dir.mkdir(parents=True, exist_ok=True)
    log(f"bench: building the Go reference relay ({version}) into {binary} ...")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GO_PATH),
        "GOCACHE": str(build_dir / "gocache"),
        "GOPROXY": "off",
        "GOFLAGS": "",
        "CGO_ENABLED": "0",
    }
    partial = build_dir / f".relay-{digest}.{os.getpid()}"
    try:
        done = subprocess.run(
            [go, "build", "-trimpath", "-o", str(partial), str(GO_SOURCE)],
            cwd=GO_SOURCE.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"go build failed: {exc}"
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        return None, f"go build failed: {(done.stderr or done.stdout).strip()[-800:]}"
    partial.replace(binary)  # atomic: a concurrent run never starts a half-written binary
    for old in build_dir.glob("relay-*"):  # binaries of earlier sources
        if old != binary:
            old.unlink(missing_ok=True)
    return binary, None


def reference(name: str, go_binary: Path | None = None) -> RelaySpec:
    host = ["--host", "127.0.0.1", "--port", "0"]
    if name == "websockets":
        argv = [sys.executable, str(REFERENCE_DIR / "ws_relay.py"), *host]
        return RelaySpec(name, argv, "ws", note="minimal relay on websockets (asyncio)")
    if name == "node":
        argv = [shutil.which("node") or "node", str(NODE_DIR / "relay.js"), *host]
        return RelaySpec(name, argv, "ws", cwd=str(NODE_DIR), note="minimal relay on Node.js ws")
    if name == "go":
        if go_binary is None:
            go_binary, why = ensure_go_relay()
            if go_binary is None:
                raise ValueError(f"cannot build the go reference: {why}")
        argv = [str(go_binary), *host]
        return RelaySpec(name, argv, "ws", note="minimal relay on Go gorilla/websocket")
    if name == "tcp":
        argv = [sys.executable, str(REFERENCE_DIR / "tcp_relay.py"), *host]
        return RelaySpec(name, argv, "tcp", note="raw TCP copy loop (floor, not WebSocket)")
    raise ValueError(f"unknown reference relay {name!r} (choose from {', '.join(REFERENCES)})")
