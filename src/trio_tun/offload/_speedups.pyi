# Types of the optional C extension built from _speedups.c.
from trio_tun.offload.gro import Parsed

_Buffer = bytes | bytearray | memoryview

def ones_complement_sum(data: _Buffer, initial: int = 0) -> int: ...
def checksum(data: _Buffer, initial: int = 0) -> int: ...
def split(
    flags: int,
    gso_type: int,
    hdr_len: int,
    gso_size: int,
    csum_start: int,
    csum_offset: int,
    packet: _Buffer,
    /,
) -> list[bytes]: ...
def gro_parse(packet: _Buffer, /) -> Parsed: ...
def gro_build(
    first: bytes, ihl: int, hlen: int, gso_size: int, psh: int, payloads: list[_Buffer], /
) -> bytes: ...
