"""The sliding-window filter that stops a captured transport message being replayed.

A counter is accepted once, and only if it is below the message limit and not more
than :data:`WINDOW_SIZE` behind the highest counter accepted so far.  The window is
a Python int used as a bitmap (bit ``i`` set: counter ``highest - i`` was seen), which
is exact rather than the block-granular ring of RFC 6479 and still cheap: shifting a
few-kilobit int is one C call.

The caller must :meth:`~ReplayFilter.check` before decrypting (cheap rejection) and
:meth:`~ReplayFilter.update` only after the message authenticated, or a forged
packet with a huge counter would slide the window past every real one.
"""

from __future__ import annotations

from typing import Final

import attrs

#: Same size as wireguard-go's (127 blocks of 64 bits): reordering by up to 8128
#: messages, enough for a GSO batch arriving out of order across queues.
WINDOW_SIZE: Final = 8128
#: 2**64 - 2**13 - 1: a keypair is useless before its 64-bit nonce could wrap.
REJECT_AFTER_MESSAGES: Final = (1 << 64) - (1 << 13) - 1

_WINDOW_MASK: Final = (1 << WINDOW_SIZE) - 1


@attrs.define
class ReplayFilter:
    """Which counters of one receiving key have been accepted."""

    limit: int = REJECT_AFTER_MESSAGES
    #: The highest accepted counter, -1 before the first.
    highest: int = -1
    _seen: int = attrs.field(default=0, repr=False)

    def check(self, counter: int) -> bool:
        """Whether *counter* would be accepted (no state change)."""
        if counter >= self.limit or counter < 0:
            return False
        if counter > self.highest:
            return True
        behind = self.highest - counter
        return behind < WINDOW_SIZE and not (self._seen >> behind) & 1

    def update(self, counter: int) -> bool:
        """Accept *counter* (after authentication); ``False`` if it is a replay after all."""
        if not self.check(counter):
            return False
        if counter > self.highest:
            shift = counter - self.highest
            self._seen = ((self._seen << shift) | 1) & _WINDOW_MASK if shift < WINDOW_SIZE else 1
            self.highest = counter
        else:
            self._seen |= 1 << (self.highest - counter)
        return True
