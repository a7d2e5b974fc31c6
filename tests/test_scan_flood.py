"""A scanning desktop under a flood of distinct datagrams keeps a steady memory (issue 12, point 4).

Any local process can send datagrams to the loopback medium's port. A real ``hybrid desktop``
process scans while this test floods its port with distinct 2 KiB datagrams (never a valid advert)
and distinct plausible 60-byte ones (valid length, wrong tag), for a bounded time. The desktop's
resident memory, read from ``/proc``, must stay flat; before the fix it grew with every datagram.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import trio

from hybrid.ble.eid import ADVERT_LEN
from hybrid.ble.loopback import decode_datagram, encode_datagram
from hybrid.ble.medium import ServiceData
from hybrid.ble.seen import MAX_SERVICE_DATA_LEN, SeenAdverts

HYBRID = [sys.executable, "-m", "hybrid"]
FLOOD_SECONDS = 3.0
# Growth allowed over the measured window (allocator noise, lazily imported modules).
MAX_GROWTH_MB = 8.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def flood(port: int, seconds: float) -> int:
    """Send distinct datagrams to 127.0.0.1:port for ``seconds``; how many were sent."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    big = bytearray(b"\xff\xf9" + os.urandom(2046))
    small = bytearray(b"\xff\xf9" + os.urandom(58))
    sent = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            for _ in range(200):
                big[2:10] = sent.to_bytes(8, "big")
                small[2:10] = sent.to_bytes(8, "big")
                for datagram in (big, small):
                    try:
                        sock.sendto(datagram, ("127.0.0.1", port))
                    except OSError:
                        pass  # nobody bound yet, or the receive buffer is full
                sent += 1
    finally:
        sock.close()
    return sent


async def test_desktop_memory_stays_flat_under_a_datagram_flood(ble_port, tmp_path) -> None:
    desktop = await trio.lowlevel.open_process(
        [*HYBRID, "desktop", "login", "--relay", "ws://127.0.0.1:9", "--rp-id", "example.com",
         "--data-dir", str(tmp_path), "--ble-port", str(ble_port), "--timeout",
         str(FLOOD_SECONDS + 4), "--no-qr"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with trio.fail_after(30):
            await desktop.stdout.receive_some(4096)  # the URL: the desktop is about to scan
            samples: list[tuple[float, float]] = []
            async with trio.open_nursery() as nursery:
                sent: list[int] = []

                async def run_flood() -> None:
                    sent.append(await trio.to_thread.run_sync(flood, ble_port, FLOOD_SECONDS))

                nursery.start_soon(run_flood)
                start = trio.current_time()
                while trio.current_time() - start < FLOOD_SECONDS:
                    samples.append((trio.current_time() - start, rss_mb(desktop.pid)))
                    await trio.sleep(0.25)
    finally:
        desktop.kill()
        await desktop.wait()
    # Skip the first second (start-up, first imports); compare the rest.
    steady = [mb for t, mb in samples if t >= 1.0]
    growth = max(steady) - min(steady)
    window = samples[-1][0] - 1.0
    print(
        f"\nflood: {sent[0] * 2} datagrams in {FLOOD_SECONDS:g} s; desktop RSS "
        f"{min(steady):.1f}..{max(steady):.1f} MB, {growth / window:.2f} MB/s"
    )
    assert growth < MAX_GROWTH_MB, samples


def test_datagrams_longer_than_any_advert_are_not_adverts() -> None:
    suffix = b"\xa1\x01\x19\x00\x80"  # CTAP 2.3 {1: PSM}
    assert decode_datagram(encode_datagram(0xFFF9, b"a" * ADVERT_LEN + suffix)) is not None
    assert decode_datagram(encode_datagram(0xFFF9, b"a" * MAX_SERVICE_DATA_LEN)) is not None
    assert decode_datagram(encode_datagram(0xFFF9, b"a" * (MAX_SERVICE_DATA_LEN + 1))) is None
    assert decode_datagram(encode_datagram(0xFDE2, b"a" * 2046)) is None


def test_seen_adverts_are_bounded_in_count_and_size() -> None:
    seen = SeenAdverts(max_entries=100)
    for n in range(10_000):
        data = n.to_bytes(4, "big") + b"\x00" * 200
        assert seen.first_time(ServiceData(0xFFF9, data))
    assert len(seen) == 100
    assert seen.remembered_bytes() <= 100 * ADVERT_LEN
    recent = ServiceData(0xFFF9, (9_999).to_bytes(4, "big") + b"\x00" * 200)
    assert not seen.first_time(recent)  # still remembered: tried once only
    assert seen.first_time(ServiceData(0xFFF9, (0).to_bytes(4, "big") + b"\x00" * 200))  # forgotten
    assert not seen.first_time(ServiceData(0xFFF9, b"x" * (MAX_SERVICE_DATA_LEN + 1)))
