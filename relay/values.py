"""``Value``: the base of the small immutable results made per request or frame (routes,
upgrades, close events), compared, hashed and shown by their fields.

Why not frozen dataclasses: compiled (relay/native.py), a class with its own ``__init__`` is built
in C, where a dataclass's generated ``__init__`` is a Python function; two or three of these per
request or close frame cost more that way than the decision or the parse that made them
(bench/PROFILE.md, round four). Treated as immutable; nothing assigns their fields after
``__init__``.
"""

from __future__ import annotations

from typing import ClassVar


class Value:
    """Subclasses name their fields in ``_FIELDS`` and set them in ``__init__`` (compiled, a
    class's fields are C struct members whatever ``__slots__`` says, so they declare none)."""

    _FIELDS: ClassVar[tuple[str, ...]] = ()

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self) or not isinstance(other, Value):
            return False
        return other._key() == self._key()

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._key()))

    def __repr__(self) -> str:
        pairs = zip(self._FIELDS, self._key(), strict=True)
        fields = ", ".join(f"{name}={value!r}" for name, value in pairs)
        return f"{type(self).__name__}({fields})"
