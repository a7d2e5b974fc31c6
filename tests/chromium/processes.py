"""The processes a Chromium hybrid test needs, each started on free resources and stopped by pid.

* ``PrivateBus``: a ``dbus-daemon`` with its own config (system-bus type, allow-all policy) on a
  socket in the test's directory; Chromium finds it through ``DBUS_SYSTEM_BUS_ADDRESS``.
* ``Xvfb``: a virtual X display; ``-displayfd`` makes the server pick a free display number.
* ``TlsMaterial``: a throwaway CA and a leaf for ``cable.ua5v.com``/``localhost``/``127.0.0.1``.
* ``Relay``: ``hybrid-relay --port 0`` serving TLS; its port is read from the "listening" log.
* ``Chromium``: the Debian package's browser binary (``/usr/lib/chromium/chromium``) on the X
  display, a fresh profile, the tunnel domain mapped to our relay, its stderr (with the device
  event log) kept in a file.

Everything started here is stopped by the pid (or the process group we created) it was started
with; never by name, since other people's Chromium and relays run on the same machine.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CHROMIUM_BINARY = Path("/usr/lib/chromium/chromium")
TUNNEL_DOMAIN = "cable.ua5v.com"  # domain id 0, the one Chromium's QR codes announce

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
"""


def under_ci() -> bool:
    """True on the CI machine, where a missing tool must fail the tests instead of skipping."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing_tools() -> list[str]:
    """The programs these tests need that this machine lacks."""
    missing = [] if CHROMIUM_BINARY.exists() else [str(CHROMIUM_BINARY)]
    missing += [tool for tool in ("Xvfb", "dbus-daemon", "xdotool") if shutil.which(tool) is None]
    return missing


def stop_process(process: subprocess.Popen, *, group: bool = False, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL; ``group`` also ends the process group this process leads."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    if group:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # helpers Chromium left behind
        except (ProcessLookupError, PermissionError):
            pass


class PrivateBus:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "system_bus_socket"
        self.address = f"unix:path={self.socket}"
        self.process: subprocess.Popen | None = None

    def start(self) -> PrivateBus:
        config = self.directory / "bus.conf"
        config.write_text(_BUS_CONFIG.format(socket=self.socket))
        self.process = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = _read_line(self.process.stdout, 10, "dbus-daemon")
        if "unix:" not in line:
            raise RuntimeError(f"dbus-daemon printed {line!r} instead of its address")
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class Xvfb:
    def __init__(self, width: int = 1280, height: int = 1024) -> None:
        self.size = (width, height)
        self.display = ""
        self.process: subprocess.Popen | None = None

    def start(self) -> Xvfb:
        read_fd, write_fd = os.pipe()
        width, height = self.size
        self.process = subprocess.Popen(
            [
                "Xvfb",
                "-displayfd",
                str(write_fd),
                "-screen",
                "0",
                f"{width}x{height}x24",
                "-nolisten",
                "tcp",
                "-noreset",
            ],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(write_fd)
        with os.fdopen(read_fd) as reader:
            number = _read_line(reader, 10, "Xvfb").strip()
        if not number.isdigit():
            raise RuntimeError(f"Xvfb did not report a display number (got {number!r})")
        self.display = f":{number}"
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class TlsMaterial:
    """A throwaway CA and a relay certificate it signed; ``spki_hash`` is for Chromium's flag."""

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hybrid test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TUNNEL_DOMAIN)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName(TUNNEL_DOMAIN),
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        self.ca_file = directory / "ca.pem"
        self.cert_file = directory / "relay-cert.pem"
        self.key_file = directory / "relay-key.pem"
        self.ca_file.write_bytes(ca.public_bytes(pem))
        self.cert_file.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
        self.key_file.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.spki_hash = base64.b64encode(hashlib.sha256(spki).digest()).decode()


class Relay:
    """``hybrid-relay`` as a separate process; ``url`` is ``wss://localhost:PORT``."""

    def __init__(self, tls: TlsMaterial, log_file: Path, *extra: str) -> None:
        self.tls = tls
        self.log_file = log_file
        self.extra = extra
        self.port = 0
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"wss://localhost:{self.port}"

    def start(self) -> Relay:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "relay",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--tls-cert",
                str(self.tls.cert_file),
                "--tls-key",
                str(self.tls.key_file),
                "--shutdown-grace",
                "0",
                *self.extra,
            ],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + 15
        lines = []
        reader = _Lines(self.process.stderr)
        with open(self.log_file, "w") as log:
            while time.monotonic() < deadline:
                line = reader.read_line(deadline - time.monotonic(), "hybrid-relay")
                log.write(line)
                lines.append(line)
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "listening":
                    self.port = int(event["port"])
                    break
        if not self.port:
            raise RuntimeError(f"hybrid-relay did not log 'listening': {''.join(lines)[-2000:]}")
        # Keep draining its log into the file so the pipe never fills up.
        reader.drain_to(self.log_file)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class Chromium:
    """The browser on ``display``, its system bus at ``bus_address``, tunnels to ``relay_port``."""

    def __init__(
        self,
        directory: Path,
        *,
        display: str,
        bus_address: str,
        relay_port: int,
        spki_hash: str,
        url: str,
        size: tuple[int, int],
    ) -> None:
        self.directory = directory
        self.log_file = directory / "chromium.log"
        self.args = [
            str(CHROMIUM_BINARY),
            "--no-sandbox",  # we are root
            f"--user-data-dir={directory / 'profile'}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-gpu",
            "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
            "--password-store=basic",
            "--lang=en-US",
            f"--host-resolver-rules=MAP {TUNNEL_DOMAIN} 127.0.0.1:{relay_port}",
            f"--ignore-certificate-errors-spki-list={spki_hash}",
            "--enable-logging=stderr",
            "--vmodule=device_event_log*=1",
            "--window-position=0,0",
            f"--window-size={size[0]},{size[1]}",
            url,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DBUS_")}
        env.update(
            DISPLAY=display,
            DBUS_SYSTEM_BUS_ADDRESS=bus_address,
            # No session bus: nothing of a desktop session leaks in (keyring, portals).
            DBUS_SESSION_BUS_ADDRESS="disabled:",
            HOME=str(directory / "home"),
            LANGUAGE="en",
        )
        (directory / "home").mkdir(parents=True, exist_ok=True)
        self.env = env
        self.process: subprocess.Popen | None = None

    def start(self) -> Chromium:
        with open(self.log_file, "wb") as log:
            self.process = subprocess.Popen(
                self.args,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, so its helpers go with it
            )
        return self

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, group=True)


class _Lines:
    """Lines from a child's pipe, each waited for with a deadline.

    ``select`` is asked about the raw descriptor and the lines are split here. Selecting on a
    buffered file object and then calling its ``readline`` loses lines: one ``readline`` may pull
    two lines into the object's buffer, and the next ``select`` then waits on a descriptor that has
    nothing more to give. That is how a relay which had logged "listening" seemed silent for 15 s
    when its two start-up lines arrived together on a loaded machine.
    """

    def __init__(self, stream: Any) -> None:
        self.fd: int = stream.fileno()
        self.buffer = b""

    def read_line(self, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not ready:
                raise RuntimeError(f"{what} printed nothing within {timeout:.0f} s")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                if self.buffer:  # a last line without its newline
                    line, self.buffer = self.buffer, b""
                    return line.decode(errors="replace")
                raise RuntimeError(f"{what} exited before it was ready")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace") + "\n"

    def drain_to(self, path: Path) -> None:
        """Append what is buffered and everything the child writes later to ``path``, from a
        thread, so the pipe never fills up."""
        import threading

        def copy() -> None:
            with open(path, "ab") as log:
                log.write(self.buffer)
                self.buffer = b""
                log.flush()
                while chunk := os.read(self.fd, 65536):
                    log.write(chunk)
                    log.flush()

        threading.Thread(target=copy, name=f"drain {path.name}", daemon=True).start()


def _read_line(stream: Any, timeout: float, what: str) -> str:
    """One line from a child that writes nothing more until it is asked (an address, a number)."""
    return _Lines(stream).read_line(timeout, what)


class Forwarder:
    """A TCP forwarder on 127.0.0.1 that Chromium's tunnel domain is mapped to.

    Chromium's ``--host-resolver-rules`` are fixed at launch, so a test that wants "the relay is
    down" or "another relay answers" switches this instead: ``target`` is the port connections go
    to, and ``down()`` closes the listening socket so connecting is refused, as with a relay that
    is not running; ``up()`` listens on the same port again.
    """

    def __init__(self, target: int) -> None:
        import socket
        import threading

        self.target = target
        self._socket_module = socket
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self.port = 0
        self.connections = 0

    def start(self) -> Forwarder:
        self.up()
        return self

    @property
    def listening(self) -> bool:
        return self._listener is not None

    def up(self) -> None:
        import threading

        socket = self._socket_module
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(self._socket_module.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            for sock in list(self._open):
                sock.close()
            self._open.clear()

    def stop(self) -> None:
        self.down()

    def _accept(self, listener) -> None:
        import threading

        socket = self._socket_module
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            self.connections += 1
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source, sink) -> None:
        socket = self._socket_module
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                for sock in (source, sink):
                    self._open.discard(sock)
                    sock.close()
