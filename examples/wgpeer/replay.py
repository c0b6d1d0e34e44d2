"""The sliding-window filter that stops a captured transport message being replayed.

A counter is accepted once, and only if it is below the message limit and not more
than :data:`WINDOW_SIZE` - 1 behind the highest counter accepted so far.  The window
is a ring of 8192 bits in a bytearray (RFC 6479): bits are set and tested in place
and whole bytes are cleared as the window moves, so in-order traffic costs a few
byte operations per packet.  Since the ring is larger than the window by a byte
block, the answers are exact, not block-granular.

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

_RING_BYTES: Final = 1024
_RING_MASK: Final = _RING_BYTES - 1
assert WINDOW_SIZE <= 8 * (_RING_BYTES - 1)


@attrs.define
class ReplayFilter:
    """Which counters of one receiving key have been accepted."""

    limit: int = REJECT_AFTER_MESSAGES
    #: The highest accepted counter, -1 before the first.
    highest: int = -1
    _ring: bytearray = attrs.field(factory=lambda: bytearray(_RING_BYTES), repr=False)

    def check(self, counter: int) -> bool:
        """Whether *counter* would be accepted (no state change)."""
        if counter >= self.limit or counter < 0:
            return False
        if counter > self.highest:
            return True
        if self.highest - counter >= WINDOW_SIZE:
            return False
        return not self._ring[(counter >> 3) & _RING_MASK] & (1 << (counter & 7))

    def update(self, counter: int) -> bool:
        """Accept *counter* (after authentication); ``False`` if it is a replay after all."""
        if counter >= self.limit or counter < 0:
            return False
        ring = self._ring
        highest = self.highest
        if counter > highest:
            current, new = highest >> 3, counter >> 3
            if new - current >= _RING_BYTES:
                ring[:] = bytes(_RING_BYTES)
            else:
                for block in range(current + 1, new + 1):
                    ring[block & _RING_MASK] = 0
            self.highest = counter
        elif highest - counter >= WINDOW_SIZE:
            return False
        index = (counter >> 3) & _RING_MASK
        bit = 1 << (counter & 7)
        old = ring[index]
        if old & bit:
            return False
        ring[index] = old | bit
        return True
