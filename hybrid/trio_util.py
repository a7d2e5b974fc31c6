"""Generic trio helpers that belong to no protocol layer.

``single_exceptions`` unwraps the ``ExceptionGroup`` a nursery raises when only one real error is
inside, so callers can keep ``except PasskeyError`` and friends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


@contextmanager
def single_exceptions() -> Iterator[None]:
    """Re-raise a lone exception out of a trio ``ExceptionGroup`` as itself.

    Trio nurseries always wrap errors in groups; the flow code keeps one background task per
    nursery, so at most one real error can come out, and callers (and ``except PasskeyError``)
    should see that error, not a group around it.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        real = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
        if len(real) == 1:
            raise real[0] from None
        if not real and leaves:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out
