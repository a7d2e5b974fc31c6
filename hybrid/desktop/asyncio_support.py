"""Using the trio-native desktop from an asyncio application: ``await run_trio(fn, *args)``.

The hybrid sessions run on trio; an asyncio program (a web server, a GUI loop) cannot await them
directly. ``run_trio`` runs ``trio.run(fn, *args)`` in a worker thread and awaits its result, so the
asyncio loop keeps serving while the phone is found and the user approves::

    result = await run_trio(sign_in, rp, "alice", DesktopSession(Operation.SIGN_IN, scanner))

Cancelling the awaiting asyncio task cancels the trio run (the desktop then sends its shutdown
message to the phone, as for any other cancellation) and waits for it to unwind before the
``CancelledError`` propagates, so no session outlives the task that started it. ``on_event`` /
``on_url`` callbacks run on the worker thread: hand them to the loop with
``loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


async def run_trio(async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Await ``async_fn(*args)`` run by ``trio.run`` in a worker thread; its result or exception.

    Cancelling the caller cancels the trio run and waits for it to finish first.
    """
    loop = asyncio.get_running_loop()
    cancel_requested = threading.Event()
    handle: dict[str, tuple[trio.lowlevel.TrioToken, trio.CancelScope]] = {}

    async def guarded() -> T:
        with trio.CancelScope() as scope:
            # Publish the scope, then look at the flag: whichever side comes second sees the other.
            handle["run"] = (trio.lowlevel.current_trio_token(), scope)
            if cancel_requested.is_set():
                scope.cancel()
            return await async_fn(*args)
        raise asyncio.CancelledError  # only reached when the scope was cancelled

    future = loop.run_in_executor(None, trio.run, guarded)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel_requested.set()
        if "run" in handle:
            token, scope = handle["run"]
            try:
                token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass
        # Wait for the trio side to unwind (shutdown sent, sockets closed) before propagating.
        await asyncio.wait([future])
        if not future.cancelled():
            future.exception()  # retrieved: its outcome no longer matters to anyone
        raise


__all__ = ["run_trio"]
