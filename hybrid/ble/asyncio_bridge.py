"""Running an asyncio-only BLE library (bleak, dbus-fast) for the lifetime of a trio context.

The flow runs on trio; bleak and dbus-fast need an asyncio event loop. ``asyncio_service`` starts
a private asyncio loop in a worker thread, runs ``start()`` there, keeps the loop alive while the
trio context is open (so the library's callbacks keep firing), then runs ``stop(value)`` and lets
the thread end. A failure or a timeout while starting becomes ``NoAdapterError``: to the user, a
BLE stack that cannot start is "No compatible device found".
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from hybrid.ble.medium import NoAdapterError

T = TypeVar("T")
STOP_TIMEOUT = 2.0


@asynccontextmanager
async def asyncio_service(
    start: Callable[[], Awaitable[T]],
    stop: Callable[[T], Awaitable[None]],
    *,
    what: str,
    start_timeout: float,
) -> AsyncIterator[T]:
    """Yield ``start()``'s result, computed on a private asyncio loop; ``stop`` it on exit."""
    token = trio.lowlevel.current_trio_token()
    started = trio.Event()
    finished = trio.Event()
    box: dict[str, Any] = {}
    stop_requested = threading.Event()

    def report(key: str, value: Any) -> None:
        box[key] = value
        started.set()

    async def service() -> None:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()
        box["wake"] = lambda: loop.call_soon_threadsafe(wake.set)
        try:
            value = await start()
        except BaseException as exc:  # noqa: BLE001 - any failure to start means "no adapter"
            token.run_sync_soon(report, "error", exc)
            return
        token.run_sync_soon(report, "value", value)
        try:
            if not stop_requested.is_set():
                await wake.wait()
        finally:
            await stop(value)

    def request_stop() -> None:
        stop_requested.set()
        wake = box.get("wake")
        if wake is not None:
            try:
                wake()
            except RuntimeError:  # the loop is already closed
                pass

    def deliver(_outcome: object) -> None:
        try:
            token.run_sync_soon(finished.set)
        except trio.RunFinishedError:
            pass

    trio.lowlevel.start_thread_soon(lambda: asyncio.run(service()), deliver)
    try:
        with trio.move_on_after(start_timeout):
            await started.wait()
        if not started.is_set():
            raise NoAdapterError(f"{what}: the Bluetooth stack did not start in time")
        if "error" in box:
            raise NoAdapterError(f"{what}: no usable Bluetooth adapter ({box['error']!r})")
        yield box["value"]
    finally:
        request_stop()
        # Let the worker release the radio; never wait forever on a wedged backend.
        with trio.move_on_after(STOP_TIMEOUT) as scope:
            scope.shield = True
            await finished.wait()
