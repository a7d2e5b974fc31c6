"""What a scanning desktop remembers of the adverts it has seen: bounded in size and in count.

Phones repeat their advert about ten times a second, so the desktop trial-decrypts each distinct
value once (protocol notes 6.3). Everything nearby can send adverts, though, and on the loopback
medium any local process can send datagrams: remembering every distinct value let a flood of
distinct 2 KiB datagrams grow the desktop by ~96 MB/s (issue 12, point 4). So:

* service data longer than ``MAX_SERVICE_DATA_LEN`` is not an advert at all (``is_plausible``);
* only the part trial decryption reads (the first ``ADVERT_LEN`` bytes) is remembered;
* at most ``max_entries`` values are remembered, the oldest forgotten first. Forgetting costs one
  more trial decryption if a forgotten advert comes back, never a missed phone.
"""

from __future__ import annotations

from collections import OrderedDict

from hybrid.ble.eid import ADVERT_LEN
from hybrid.ble.medium import ServiceData

# The most service data one BLE AD structure can carry: its length byte counts at most 255 bytes,
# one of them the AD type and two the 16-bit UUID. A 20-byte advert plus any CTAP 2.3 suffix (a
# small CBOR map, ``{1: PSM}`` takes 4 bytes) fits; anything longer cannot have come from a phone.
MAX_SERVICE_DATA_LEN = 255 - 1 - 2
# A room full of phones shows a few dozen distinct adverts per QR lifetime; this is plenty.
DEFAULT_MAX_ENTRIES = 1024


def is_plausible(observed: ServiceData) -> bool:
    """Whether ``observed`` could be a hybrid advert (length-wise) and so is worth a look."""
    return len(observed.data) <= MAX_SERVICE_DATA_LEN


class SeenAdverts:
    """A bounded "already tried" set of adverts, least recently seen forgotten first."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, bytes], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def first_time(self, observed: ServiceData) -> bool:
        """True if ``observed`` should be tried now: plausible and not seen recently."""
        if not is_plausible(observed):
            return False
        key = (observed.uuid16, bytes(observed.data[:ADVERT_LEN]))
        if key in self._entries:
            self._entries.move_to_end(key)
            return False
        self._entries[key] = None
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return True

    def remembered_bytes(self) -> int:
        """Payload bytes held (for tests and measurements): at most ``max_entries * 20``."""
        return sum(len(data) for _, data in self._entries)
