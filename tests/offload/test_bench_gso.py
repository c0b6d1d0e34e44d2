"""The benchmark's compiled GSO/GRO (bench/bench_gso.h) does trio-tun's work, byte for byte.

``tunnel-c`` and ``c-transform`` are the yardsticks the tunnel and the
split + coalesce forwarders are judged against, so they must do the same
work: the same segments out of a super-packet, the same super-packet out of
the segments, and the same refusals.  The header is compiled into a small
shared library and compared with the offload layer on the same inputs.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import attrs
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from trio_tun import offload

from .packets import ACK, CWR, FIN, PSH, TCP, Flow, expected_segments, flows, super_packet

BENCH = Path(__file__).resolve().parents[2] / "bench"

# ctypes wrappers around bench_gso.h: packets go in and out packed back to
# back, their lengths in a size_t array.
DRIVER = r"""
#include "bench_gso.h"

static size_t pack(const struct seg *s, uint8_t *out) {
    memcpy(out, s->h, s->hlen);
    memcpy(out + s->hlen, s->p, s->plen);
    return s->hlen + s->plen;
}

/* A TUN frame's packets (split, or the one packet completed); 0 if not cut. */
size_t frame_packets(uint8_t *frame, size_t n, uint8_t *out, size_t *lens) {
    static uint8_t headers[MAX_SEGMENTS][MAX_HEADER];
    struct seg segs[MAX_SEGMENTS];
    size_t nseg = 1;
    if (frame[1] == 0) {
        segs[0] = gso_single(frame, n);
    } else if ((nseg = gso_split(frame, n, headers, segs)) == 0) {
        return 0;
    }
    for (size_t i = 0; i < nseg; i++) {
        lens[i] = pack(&segs[i], out);
        out += lens[i];
    }
    return nseg;
}

/* Packets merged as the C endpoints write them: each output a virtio header
 * and a packet.  Returns the number of outputs. */
size_t merge(uint8_t *pkts, const size_t *lens, size_t n, uint8_t *out, size_t *outlens) {
    static uint8_t head[VNET_HDR + MAX_HEADER];
    struct seg segs[MAX_SEGMENTS];
    struct iovec iov[MAX_SEGMENTS + 1];
    size_t nout = 0;
    for (size_t i = 0; i < n; i++) {
        segs[i] = seg_of(pkts, lens[i]);
        pkts += lens[i];
    }
    for (size_t i = 0; i < n;) {
        int niov;
        size_t bytes, count = gro_frame(segs, n, i, head, iov, &niov, &bytes);
        for (int k = 0; k < niov; k++) {
            memcpy(out, iov[k].iov_base, iov[k].iov_len);
            out += iov[k].iov_len;
        }
        outlens[nout++] = bytes;
        i += count;
    }
    return nout;
}
"""

SizeArray = ctypes.c_size_t * 256
#: Each property runs on 60 drawn super-packets (up to 60 segments each).
EXAMPLES = settings(max_examples=60, deadline=None)


@pytest.fixture(scope="module")
def gso(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build bench/bench_gso.h with")
    tmp = tmp_path_factory.mktemp("bench_gso")
    (tmp / "driver.c").write_text(DRIVER)
    lib = tmp / "libbenchgso.so"
    argv = [cc, "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", f"-I{BENCH}"]
    subprocess.run([*argv, "-o", str(lib), str(tmp / "driver.c")], check=True, timeout=120)
    dll = ctypes.CDLL(str(lib))
    for name in ("frame_packets", "merge"):
        getattr(dll, name).restype = ctypes.c_size_t
    return dll


def unpacked(
    out: ctypes.Array[ctypes.c_char], lens: ctypes.Array[ctypes.c_size_t], n: int
) -> list[bytes]:
    """The *n* packets the driver wrote back to back into *out*."""
    packets, at = [], 0
    for length in lens[:n]:
        packets.append(out.raw[at : at + length])
        at += length
    return packets


def c_frame_packets(dll: ctypes.CDLL, frame: bytes) -> list[bytes]:
    buf = ctypes.create_string_buffer(frame, len(frame))
    out = ctypes.create_string_buffer(2 * len(frame) + 128 * 120)
    lens = SizeArray()
    n = dll.frame_packets(buf, ctypes.c_size_t(len(frame)), out, lens)
    return unpacked(out, lens, n)


def c_merge(dll: ctypes.CDLL, packets: list[bytes]) -> list[bytes]:
    assert len(packets) <= 128
    joined = b"".join(packets)
    buf = ctypes.create_string_buffer(joined, len(joined) or 1)
    lens = SizeArray(*map(len, packets))
    out = ctypes.create_string_buffer(len(joined) + 10 * len(packets) + 64)
    outlens = SizeArray()
    n = dll.merge(buf, lens, ctypes.c_size_t(len(packets)), out, outlens)
    return unpacked(out, outlens, n)


def merged_as_coalesce(dll: ctypes.CDLL, segments: list[bytes]) -> list[bytes]:
    """C's merge of *segments*, checked to be the offload layer's coalesce."""
    merged = c_merge(dll, segments)
    assert merged == offload.coalesce(segments)
    return merged


def tcp_payload_length(frame: bytes) -> int:
    """Payload bytes of the TCP/IPv4 packet after a frame's virtio header."""
    ip = frame[10:]
    return len(ip) - 20 - (ip[32] >> 4) * 4


def frame_of(fields: tuple[int, int, int, int, int, int], packet: bytes) -> bytes:
    return offload.VirtioNetHdr(*fields).pack() + packet


ipv4_tcp_flows = flows(TCP).filter(lambda f: f.version == 4)


@attrs.frozen
class TsoFrame:
    """A TCP/IPv4 super-packet as a TUN read returns it, and what it stands for."""

    flow: Flow
    payload: bytes
    gso_size: int
    flags: int
    seq: int
    ident: int

    def wire(self) -> bytes:
        fields, packet = super_packet(
            self.flow,
            self.payload,
            self.gso_size,
            seq=self.seq,
            flags=self.flags,
            ident=self.ident,
        )
        return frame_of(fields, packet)

    def expected(self) -> list[bytes]:
        return expected_segments(
            self.flow,
            self.payload,
            self.gso_size,
            seq=self.seq,
            flags=self.flags,
            ident=self.ident,
        )

    def segments(self, least: int) -> list[bytes]:
        """The offload layer's segments; at least *least* of them (and C's 128 at most)."""
        segments = offload.split_with_header(self.wire())
        assume(least <= len(segments) <= 128)
        return segments


@st.composite
def tso_frames(draw: st.DrawFn) -> TsoFrame:
    flow = draw(ipv4_tcp_flows)
    gso_size = draw(st.sampled_from([1, 7, 536, 1348, 1448]))
    nseg = draw(st.integers(1, 60))
    tail = draw(st.integers(1, gso_size))
    size = min((nseg - 1) * gso_size + tail, 65535 - 20 - 20 - len(flow.options))
    return TsoFrame(
        flow=flow,
        payload=bytes((i * 7 + 3) & 0xFF for i in range(size)),
        gso_size=gso_size,
        flags=draw(st.sampled_from([ACK, ACK | PSH, ACK | CWR, ACK | PSH | FIN])),
        seq=draw(st.integers(0, 0xFFFFFFFF)),
        ident=draw(st.integers(0, 0xFFFF)),
    )


@EXAMPLES
@given(tso_frames())
def test_split_matches_the_offload_layer(gso: ctypes.CDLL, frame: TsoFrame) -> None:
    wire = frame.wire()
    got = c_frame_packets(gso, wire)
    assert got == offload.split_with_header(wire)
    assert got == frame.expected()


@EXAMPLES
@given(tso_frames())
def test_merge_of_a_split_matches_coalesce(gso: ctypes.CDLL, frame: TsoFrame) -> None:
    segments = frame.segments(1)
    merged = merged_as_coalesce(gso, segments)
    if len(segments) > 1 and not frame.flags & (CWR | FIN):
        # One super-packet again, with the kernel's GSO fields.  (A CWR
        # first segment and a FIN last one are not merged, here or there.)
        (out,) = merged
        hdr = offload.VirtioNetHdr.unpack(out)
        assert (hdr.gso_type, hdr.gso_size) == (offload.GSO_TCPV4, frame.gso_size)


@EXAMPLES
@given(tso_frames(), st.data())
def test_a_bad_checksum_is_not_merged(
    gso: ctypes.CDLL, frame: TsoFrame, data: st.DataObject
) -> None:
    segments = frame.segments(2)
    bad = data.draw(st.integers(0, len(segments) - 1), label="bad segment")
    # Past the IP header: a damaged IP header can make the packet malformed,
    # which the offload layer raises for (the stream counts it) and C passes on.
    at = data.draw(st.integers(20, len(segments[bad]) - 1), label="byte")
    corrupted = bytearray(segments[bad])
    corrupted[at] ^= 0x01
    segments[bad] = bytes(corrupted)
    # The damaged packet goes out alone and unchanged, for the kernel to drop.
    assert bytes(10) + segments[bad] in merged_as_coalesce(gso, segments)


def test_a_frame_without_gso_gets_its_checksum(gso: ctypes.CDLL) -> None:
    flow = Flow(version=4, proto=TCP, src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02")
    fields, packet = super_packet(flow, b"hello, tunnel", 1400, flags=ACK | PSH)
    no_gso = (fields[0], offload.GSO_NONE, *fields[2:])
    wire = frame_of(no_gso, packet)
    (got,) = c_frame_packets(gso, wire)
    assert [got] == offload.split_with_header(wire)
    assert got == expected_segments(flow, b"hello, tunnel", 1400, flags=ACK | PSH)[0]


@EXAMPLES
@given(tso_frames(), st.data())
def test_segments_out_of_order_are_not_merged_across_the_gap(
    gso: ctypes.CDLL, frame: TsoFrame, data: st.DataObject
) -> None:
    segments = frame.segments(3)
    i = data.draw(st.integers(0, len(segments) - 2), label="swapped pair")
    segments[i], segments[i + 1] = segments[i + 1], segments[i]
    merged = merged_as_coalesce(gso, segments)
    # Every payload byte still goes out, none twice.
    assert sum(map(tcp_payload_length, merged)) == len(frame.payload)
