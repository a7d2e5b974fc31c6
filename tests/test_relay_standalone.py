"""The relay stands alone: its own wheel, and a run with every client module unimportable.

The relay-only wheel (``deploy/relay-dist/build.py``) holds ``relay/`` plus ``hybrid/wire.py``
and declares none of the client's dependencies. Unpacked, it runs in a subprocess whose
``sys.meta_path`` refuses fido2, qrcode, bleak, zxing-cpp, noiseprotocol, dbus-fast (and the
rest of ``hybrid``, cryptography, trio-websocket, wsproto, websockets): it starts, pairs and
forwards for real WebSocket clients.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import trio
from relay_helpers import new_tunnel_id, open_ws, routing_id_of

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = (
    "fido2",
    "qrcode",
    "bleak",
    "zxingcpp",
    "noise",
    "dbus_fast",
    "cryptography",
    "PIL",
    "cbor2",
    "trio_websocket",
    "wsproto",
    "websockets",
)

BOOT = """
import importlib.abc, json, sys
extracted, blocked = sys.argv[1], set(sys.argv[2].split(","))
attempts = []

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in blocked or (top == "hybrid" and name not in ("hybrid", "hybrid.wire")):
            attempts.append(name)
            raise ModuleNotFoundError(f"{name} is blocked in this test", name=name)
        return None

# No editable-install finder: only the unpacked wheel provides relay and hybrid.wire.
sys.meta_path[:] = [Blocker()] + [
    f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "").lower()
]
sys.path.insert(0, extracted)
import relay, hybrid.wire
assert relay.__file__.startswith(extracted), relay.__file__
assert hybrid.wire.__file__.startswith(extracted), hybrid.wire.__file__
from relay.__main__ import main
code = main(sys.argv[3:])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in blocked or m.startswith("hybrid."))
print(json.dumps({"attempts": attempts, "loaded": loaded}), file=sys.stderr)
sys.exit(code)
"""


def can_compile() -> bool:
    """Whether build.py's ``--native auto`` includes the compiled modules here (its own check)."""
    path = ROOT / "deploy" / "relay-dist" / "build.py"
    spec = importlib.util.spec_from_file_location("relay_dist_build", path)
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return build._why_not_native() is None


def build_wheel(outdir: Path, *options: str) -> Path:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "deploy" / "relay-dist" / "build.py"),
            "--outdir",
            str(outdir),
            *options,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return Path(result.stdout.strip().splitlines()[-1])


async def test_relay_wheel_runs_with_the_client_side_unimportable(tmp_path):
    wheel = build_wheel(tmp_path / "dist")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith("/METADATA"))
        requires = [
            line.split(":", 1)[1].strip()
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
        extracted = tmp_path / "site"
        archive.extractall(extracted)
    assert {n for n in names if n.startswith("hybrid/")} == {"hybrid/__init__.py", "hybrid/wire.py"}
    assert "relay/tunnel.py" in names and "relay/__main__.py" in names
    # With mypyc and a compiler here, the wheel carries the compiled modules, tagged for them.
    compiled = can_compile()
    assert ("relay/_native/manifest.json" in names) is compiled, names
    assert wheel.name.endswith("-py3-none-any.whl") is not compiled, wheel.name
    assert [r.split(">")[0].split("<")[0] for r in requires if "extra ==" not in r] == [
        "trio",
        "h11",
        "prometheus-client",
    ]

    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-I",
            "-c",
            BOOT,
            str(extracted),
            ",".join(BLOCKED),
            "--port",
            "0",
            "--drain-delay",
            "0",
        ],  # fmt: skip
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    lines: list[dict] = []
    buffer = b""

    async def read_until(event: str) -> dict:
        nonlocal buffer
        with trio.fail_after(20):
            while True:
                for line in lines:
                    if line.get("event") == event:
                        return line
                chunk = await process.stderr.receive_some(65536)
                assert chunk, (lines, buffer)
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                lines.extend(json.loads(x) for x in complete if x)

    try:
        listening = await read_until("listening")
        assert listening["native"] is compiled, listening
        port = listening["port"]
        base = f"ws://127.0.0.1:{port}"
        tunnel_id = new_tunnel_id()
        async with open_ws(f"{base}/cable/new/{tunnel_id}") as authenticator:
            routing_id = routing_id_of(authenticator)
            async with open_ws(f"{base}/cable/connect/{routing_id}/{tunnel_id}") as initiator:
                await initiator.send_message(b"from the desktop")
                assert await authenticator.get_message() == b"from the desktop"
                await authenticator.send_message(b"x" * 5000)
                assert await initiator.get_message() == b"x" * 5000
        closed = await read_until("tunnel_closed")
        assert closed["paired"] is True and closed["messages_to_initiator"] == 1
    finally:
        # One SIGTERM, no drain: a second one could land after the relay restored the default
        # handler on its way out and kill it (-15) instead of letting it exit 0.
        process.terminate()
        with trio.fail_after(15):
            code = await process.wait()
    with trio.fail_after(5):
        while chunk := await process.stderr.receive_some(65536):
            buffer += chunk
    report = json.loads(buffer.strip().splitlines()[-1])
    assert code == 0
    # Nothing blocked was loaded; the only attempt allowed is the optional C helper.
    assert report["loaded"] == ["hybrid.wire"], report
    assert set(report["attempts"]) <= {"websockets"}, report


def test_the_plain_wheel_on_request(tmp_path):
    wheel = build_wheel(tmp_path / "dist", "--native", "no")
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        assert not [n for n in archive.namelist() if "_native" in n]
