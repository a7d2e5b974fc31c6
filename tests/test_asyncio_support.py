"""``hybrid.desktop.run_trio``: asyncio awaits a trio run in a worker thread; cancelling the
asyncio task cancels the trio side and waits for it to unwind."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import trio

from hybrid.catalogue import Failure, Operation, PasskeyError
from hybrid.desktop import Deadlines, DesktopSession, default_scanner, run_trio
from tests.conftest import free_udp_port


async def double_on_trio(value: int) -> tuple[int, bool]:
    await trio.sleep(0.01)
    return value * 2, threading.current_thread() is threading.main_thread()


def test_returns_the_trio_result_from_a_worker_thread() -> None:
    assert asyncio.run(run_trio(double_on_trio, 21)) == (42, False)


def test_the_asyncio_loop_keeps_running_meanwhile() -> None:
    async def main() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        await run_trio(trio.sleep, 0.3)
        ticker.cancel()
        return ticks

    assert asyncio.run(main()) >= 5


def test_a_session_error_reaches_the_asyncio_caller() -> None:
    # A real session with nothing advertising: the advert deadline gives the catalogue error.
    session = DesktopSession(
        Operation.REGISTER,
        default_scanner(free_udp_port()),
        relay_url="ws://127.0.0.1:9",
        deadlines=Deadlines(advert=0.3),
    )

    with pytest.raises(PasskeyError) as caught:
        asyncio.run(run_trio(session.transact, b"\x04"))
    assert caught.value.failure is Failure.TIMEOUT


def test_cancelling_the_task_cancels_the_trio_run_first() -> None:
    seen: list[str] = []

    async def forever() -> None:
        try:
            await trio.sleep_forever()
        finally:
            seen.append("trio cancelled")

    async def main() -> float:
        task = asyncio.create_task(run_trio(forever))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The trio side had finished unwinding before the CancelledError arrived.
        assert seen == ["trio cancelled"]
        return time.monotonic() - started

    assert asyncio.run(main()) < 1.0


def test_cancelled_before_trio_started_still_stops() -> None:
    async def main() -> None:
        task = asyncio.create_task(run_trio(trio.sleep_forever))
        await asyncio.sleep(0)  # the worker may not have entered trio yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)

    asyncio.run(main())
