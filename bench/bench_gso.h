/*
 * GSO and GRO in C for the benchmark's compiled references (bench/tunnel_c.c
 * split, bench/fwd.c transform): what trio-tun's split and coalesce do, for
 * TCP/IPv4 only, with no copies.  A packet is a `struct seg`, a header and a
 * payload that may live apart: split writes each segment's header into a
 * scratch row and points at its payload inside the super-packet; merge
 * checks each segment's checksums and writes runs of one flow's in-order
 * segments as one super-packet (a fresh header, then the payloads in place).
 *
 * Header-only, so each program still builds with one `cc file.c`.
 */
#ifndef TRIO_TUN_BENCH_GSO_H
#define TRIO_TUN_BENCH_GSO_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

/* virtio_net_hdr: flags, gso_type, then hdr_len, gso_size, csum_start,
 * csum_offset in host order (a little-endian TUN device). */
#define VNET_HDR 10
#define VNET_NEEDS_CSUM 1
#define GSO_TCPV4 1
#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_CWR 0x80
/* Segments of one super-packet: 64 KiB of the smallest MSS a 1400 MTU leaves. */
#define MAX_SEGMENTS 128
#define MAX_HEADER 120
/* The largest IPv4 packet, so the largest merged super-packet. */
#define MAX_MERGED 65535

/* A packet: hlen header bytes at h, then plen payload bytes at p. */
struct seg {
    uint8_t *h, *p;
    size_t hlen, plen;
};

static inline uint32_t rd16(const uint8_t *p) { return (uint32_t)p[0] << 8 | p[1]; }
static inline uint32_t rd32(const uint8_t *p) { return rd16(p) << 16 | rd16(p + 2); }
static inline void wr16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}
static inline void wr32(uint8_t *p, uint32_t v) {
    wr16(p, v >> 16);
    wr16(p + 2, v);
}
static uint32_t fold(uint64_t s) {
    while (s >> 16) s = (s & 0xFFFF) + (s >> 16);
    return (uint32_t)s;
}

/* The ones' complement sum of p as big-endian 16-bit words, folded.  Summed
 * in native 32-bit halves of 64-bit loads and byte-swapped at the end, which
 * gives the same sum (RFC 1071's byte-order independence); x86 only. */
static uint32_t sum16(const uint8_t *p, size_t n) {
    uint64_t s = 0;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        s += (w & 0xFFFFFFFFu) + (w >> 32);
    }
    for (; n >= 2; p += 2, n -= 2) {
        uint16_t w;
        memcpy(&w, p, 2);
        s += w;
    }
    if (n) s += *p; /* the odd last byte is the high half of a big-endian word */
    uint32_t v = fold(s);
    return (v >> 8 | v << 8) & 0xFFFF;
}

/* The IPv4 pseudo-header sum of p (addresses and protocol) for an L4 length. */
static uint32_t pseudo4(const uint8_t *p, size_t l4len) {
    return fold((uint64_t)rd16(p + 12) + rd16(p + 14) + rd16(p + 16) + rd16(p + 18) + p[9] +
                l4len);
}

static void ip4_checksum(uint8_t *p, size_t ihl) {
    p[10] = p[11] = 0;
    wr16(p + 10, ~sum16(p, ihl) & 0xFFFF);
}

/* A packet read whole (d, len) as a seg: its TCP/IPv4 headers apart from the
 * payload when it has them, else all of it as the "header". */
static struct seg seg_of(uint8_t *d, size_t len) {
    struct seg s = {d, d + len, len, 0};
    if (len >= 40 && d[0] == 0x45 && d[9] == 6) {
        size_t hlen = 20 + (size_t)(d[32] >> 4) * 4;
        if (hlen >= 40 && hlen <= len) {
            s.hlen = hlen;
            s.p = d + hlen;
            s.plen = len - hlen;
        }
    }
    return s;
}

/* A frame without GSO as a seg, its checksum completed first if the kernel
 * left it to us (NEEDS_CSUM: the field holds the pseudo-header sum). */
static struct seg gso_single(uint8_t *frame, size_t n) {
    uint16_t vh[4];
    memcpy(vh, frame + 2, 8);
    uint8_t *d = frame + VNET_HDR;
    size_t len = n - VNET_HDR, csum_start = vh[2], csum_offset = vh[3];
    if ((frame[0] & VNET_NEEDS_CSUM) && csum_start + csum_offset + 2 <= len) {
        uint32_t v = ~sum16(d + csum_start, len - csum_start) & 0xFFFF;
        wr16(d + csum_start + csum_offset, v ? v : 0xFFFF);
    }
    return seg_of(d, len);
}

/* Cut a TCP/IPv4 super-packet frame (virtio header first) into valid
 * packets: headers into rows of `headers`, payloads left in place.  Returns
 * the number of segments, 0 if the frame is not one this can cut. */
static size_t gso_split(uint8_t *frame, size_t n, uint8_t (*headers)[MAX_HEADER],
                        struct seg *out) {
    uint16_t vh[4];
    if (n < VNET_HDR + 40 || frame[1] != GSO_TCPV4) return 0;
    memcpy(vh, frame + 2, 8);
    uint8_t *d = frame + VNET_HDR;
    size_t len = n - VNET_HDR, gso_size = vh[1];
    size_t ihl = (size_t)(d[0] & 15) * 4;
    if ((d[0] >> 4) != 4 || ihl < 20 || len < ihl + 20 || gso_size == 0) return 0;
    size_t hlen = ihl + (size_t)(d[ihl + 12] >> 4) * 4;
    if (hlen < ihl + 20 || hlen > MAX_HEADER || hlen >= len) return 0;
    size_t nseg = (len - hlen + gso_size - 1) / gso_size;
    if (nseg > MAX_SEGMENTS) return 0;
    uint32_t ip_id = rd16(d + 4), seq = rd32(d + ihl + 4), flags = d[ihl + 13];
    for (size_t i = 0; i < nseg; i++) {
        size_t at = hlen + i * gso_size, plen = at + gso_size < len ? gso_size : len - at;
        size_t l4len = hlen - ihl + plen;
        uint8_t *h = headers[i];
        memcpy(h, d, hlen);
        wr16(h + 2, (uint32_t)(hlen + plen));
        wr16(h + 4, (ip_id + (uint32_t)i) & 0xFFFF);
        ip4_checksum(h, ihl);
        wr32(h + ihl + 4, seq + (uint32_t)(i * gso_size));
        uint32_t f = flags;
        if (i != nseg - 1) f &= ~(uint32_t)(TCP_FIN | TCP_PSH);
        if (i) f &= ~(uint32_t)TCP_CWR;
        h[ihl + 13] = (uint8_t)f;
        h[ihl + 16] = h[ihl + 17] = 0;
        uint64_t sum = (uint64_t)pseudo4(h, l4len) + sum16(h + ihl, hlen - ihl) +
                       sum16(d + at, plen);
        wr16(h + ihl + 16, ~fold(sum) & 0xFFFF);
        out[i] = (struct seg){h, d + at, hlen, plen};
    }
    return nseg;
}

/* Whether s is a TCP/IPv4 data segment that may be merged: no IP options,
 * not a fragment, ACK (maybe PSH) only, some payload, both checksums good. */
static int mergeable(const struct seg *s) {
    const uint8_t *h = s->h;
    size_t total = s->hlen + s->plen;
    if (s->hlen < 40 || s->plen == 0 || h[0] != 0x45 || h[9] != 6 || rd16(h + 2) != total ||
        (h[6] & 0x3F) || h[7] || 20 + (size_t)(h[32] >> 4) * 4 != s->hlen ||
        (h[33] != TCP_ACK && h[33] != (TCP_ACK | TCP_PSH)))
        return 0;
    if (sum16(h, 20) != 0xFFFF) return 0;
    uint64_t sum = (uint64_t)pseudo4(h, total - 20) + sum16(h + 20, s->hlen - 20) +
                   sum16(s->p, s->plen);
    return fold(sum) == 0xFFFF;
}

/* Whether b continues a's flow with the same headers otherwise (TOS, DF,
 * TTL; addresses and ports; ACK number, data offset, window, urgent pointer
 * and options); both mergeable. */
static int same_flow(const struct seg *a, const struct seg *b) {
    const uint8_t *x = a->h, *y = b->h;
    return a->hlen == b->hlen && x[1] == y[1] && x[6] == y[6] && x[8] == y[8] &&
           memcmp(x + 12, y + 12, 12) == 0 && memcmp(x + 28, y + 28, 5) == 0 &&
           x[34] == y[34] && x[35] == y[35] && memcmp(x + 38, y + 38, a->hlen - 38) == 0;
}

/* GRO over segs[i..n): how many segments from segs[i] on go out as one
 * packet.  When more than one, head (VNET_HDR + MAX_HEADER bytes) gets the
 * virtio header and the merged IP/TCP header, and iov[1..count] the payloads;
 * gro_frame below fills in the rest. */
static size_t gro_run(const struct seg *segs, size_t n, size_t i, uint8_t *head,
                      struct iovec *iov, size_t *bytes) {
    const struct seg *first = &segs[i];
    if (!mergeable(first)) return 1;
    size_t mss = first->plen, total = first->hlen + mss, count = 1;
    uint32_t next = rd32(first->h + 24) + (uint32_t)mss;
    unsigned psh = first->h[33] & TCP_PSH;
    iov[1] = (struct iovec){first->p, mss};
    /* PSH or a short segment ends a sender's burst. */
    while (!psh && i + count < n && count < MAX_SEGMENTS) {
        const struct seg *s = &segs[i + count];
        if (!mergeable(s) || !same_flow(first, s) || s->plen > mss ||
            total + s->plen > MAX_MERGED || rd32(s->h + 24) != next)
            break;
        iov[++count] = (struct iovec){s->p, s->plen};
        total += s->plen;
        next += (uint32_t)s->plen;
        psh = s->h[33] & TCP_PSH;
        if (s->plen < mss) break;
    }
    if (count == 1) return 1;
    uint8_t *o = head + VNET_HDR;
    memcpy(o, first->h, first->hlen);
    o[33] |= (uint8_t)psh;
    wr16(o + 2, (uint32_t)total);
    ip4_checksum(o, 20);
    /* NEEDS_CSUM: the field holds the pseudo-header sum, the kernel the rest. */
    wr16(o + 36, pseudo4(o, total - 20));
    uint16_t vh[4] = {(uint16_t)first->hlen, (uint16_t)mss, 20, 16};
    head[0] = VNET_NEEDS_CSUM;
    head[1] = GSO_TCPV4;
    memcpy(head + 2, vh, 8);
    *bytes = VNET_HDR + total;
    return count;
}

/* The next frame to write from segs[i..n), as *niov iovecs of *bytes bytes in
 * all; returns how many segments it carries.  Merged: head (filled in here),
 * then the payloads in place.  Alone: a virtio header of zeros (the kernel
 * checks the packet), then the packet as it came.  iov needs MAX_SEGMENTS + 1
 * entries. */
static size_t gro_frame(const struct seg *segs, size_t n, size_t i, uint8_t *head,
                        struct iovec *iov, int *niov, size_t *bytes) {
    static const uint8_t plain[VNET_HDR];
    const struct seg *s = &segs[i];
    size_t count = gro_run(segs, n, i, head, iov, bytes);
    if (count > 1) {
        iov[0] = (struct iovec){head, VNET_HDR + s->hlen};
        *niov = (int)count + 1;
    } else {
        iov[0] = (struct iovec){(void *)plain, VNET_HDR};
        iov[1] = (struct iovec){s->h, s->hlen};
        iov[2] = (struct iovec){s->p, s->plen};
        *niov = 3;
        *bytes = VNET_HDR + s->hlen + s->plen;
    }
    return count;
}

#endif
