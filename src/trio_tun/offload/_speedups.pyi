# Types of the optional C extension built from _speedups.c.
from array import array
from collections.abc import Iterable, Sequence, Sized
from typing import Any, final

from trio_tun.offload.gro import Parsed

_Buffer = bytes | bytearray | memoryview

#: Which loop the checksum runs: "avx2" (chosen at import when the CPU has it
#: and TRIO_TUN_NO_AVX2 is unset), "sse2" or "scalar".
CHECKSUM_LOOP: str

@final
class Segment(bytes):
    """A packet split() cut from a super-packet, its TCP/UDP checksum computed
    there: coalesce does not check it again.  Not made from Python; copies and
    pickles are plain bytes."""

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
def split_with_header(buf: _Buffer) -> list[bytes]: ...
def gro_parse(packet: _Buffer, /) -> Parsed: ...
def gro_build(
    first: bytes, ihl: int, hlen: int, gso_size: int, psh: int, payloads: list[_Buffer], /
) -> bytes: ...
def coalesce(
    packets: Iterable[_Buffer],
    *,
    uso: bool = False,
    max_size: int = 65535,
    allow_short_last: bool = True,
) -> list[bytes]: ...

class GroTable:
    def __init__(
        self, *, uso: bool = False, max_size: int = 65535, allow_short_last: bool = True
    ) -> None: ...
    def __len__(self) -> int: ...
    @property
    def pending_packets(self) -> int: ...
    @property
    def pending_buffers(self) -> int: ...
    def add(self, packet: _Buffer, /) -> None: ...
    def flush(self) -> list[bytes]: ...

# Linux only (absent from the module elsewhere): batched UDP syscalls for trio_tun.udp.
def sendmmsg(
    fd: int, messages: Sequence[tuple[Sequence[_Buffer], int, bytes | None]], /
) -> int: ...
def recvmmsg(
    fd: int,
    buffer: bytearray | memoryview,
    bufsize: int,
    max_messages: int,
    ancbufsize: int,
    want_address: bool,
    /,
) -> list[tuple[int, list[tuple[int, int, bytes]], int, Any]]: ...
def read_frames(fd: int, max_frames: int, size: int, /) -> tuple[list[bytes], int]: ...
def read_packed(
    fd: int, pool: bytearray | memoryview, size: int, max_frames: int, /
) -> tuple[list[int], int]: ...
def write_frames(fd: int, frames: Sequence[_Buffer], start: int, /) -> tuple[int, int, int]: ...
def pump_frames(
    src_fd: int,
    dst_fd: int,
    size: int,
    limit: int,
    stop_read_fd: int,
    stop_write_fd: int,
    state: array[int],
    batch: int = 1,
    /,
) -> tuple[int, bool]: ...
def pump_pair(
    a_fd: int,
    b_fd: int,
    size: int,
    limit_ab: int,
    limit_ba: int,
    stop_read_fd: int,
    stop_write_fd: int,
    state_ab: array[int],
    state_ba: array[int],
    batch: int,
    /,
) -> tuple[int, int, bool]: ...
def split_gro(buffer: _Buffer, gso_size: int, /) -> list[bytes]: ...
def gso_runs(
    datagrams: Sequence[_Buffer], max_segments: int, max_bytes: int, /
) -> list[tuple[int, list[_Buffer]]]: ...
def split_frames(buffer: _Buffer, lengths: Sequence[int], /) -> tuple[list[bytes], int]: ...
def frame_segments(frames: Sequence[_Buffer], start: int, end: int, /) -> tuple[int, int]: ...
def batch_sizes(items: Iterable[Sized], /) -> tuple[int, int, int]: ...
