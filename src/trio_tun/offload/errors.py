"""The one exception the offload layer raises for bad bytes."""

from __future__ import annotations

__all__ = ["MalformedPacket"]


class MalformedPacket(ValueError):
    """A packet or virtio header that cannot be what it claims to be.

    Every parser and transformation in :mod:`trio_tun.offload` raises this (and
    only this) for untrusted input, so a caller can drop and count a bad packet
    with a single ``except`` clause and still let programming errors propagate.
    It subclasses :class:`ValueError` because bad bytes are a bad value.
    """
