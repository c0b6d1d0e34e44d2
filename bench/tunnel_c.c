/*
 * C tunnel endpoints for bench/forward.py's tunnel-floor and tunnel-c modes:
 * what a TUN <-> UDP tunnel endpoint costs when no Python runs in it.
 *
 * MODE "whole" (tunnel-floor): the kernel's share of trio-tun's batched
 * tunnel.  The same system calls per super-packet (one TUN read, one
 * UDP_SEGMENT sendmsg; one UDP_GRO recvmsg, one TUN write) with no work in
 * user space between them.  It is not a tunnel protocol: a TUN frame (virtio
 * header + super-packet) is sent whole as one UDP_SEGMENT run of
 * SEGMENT-byte datagrams, and the peer writes back whatever one UDP_GRO read
 * returns.  That is the original frame only because the veth underlay hands
 * the GSO datagram to the peer's socket unsegmented and the frame fits in one
 * UDP send (the harness caps the TUN devices' gso_max_size for this mode).
 *
 * MODE "split" (tunnel-c): a real IP-in-UDP tunnel, the work trio-tun's
 * batched tunnel does, compiled.  A TCP/IPv4 super-packet is cut into valid
 * packets (each segment's IP and TCP headers and both checksums), which go
 * out as UDP_SEGMENT runs straight from the frame (an iovec for each
 * segment's header and one for its payload: no copy in user space).  A
 * UDP_GRO read is cut by its gso_size, each packet's checksums are checked,
 * and in-order segments of one flow are merged back into one super-packet,
 * written with writev (header, then the payloads in place).  Anything else
 * goes through one packet at a time.  This is the distance between the floor
 * and a tunnel that must hand the network real packets, with no interpreter.
 *
 * usage: tunnel_c MODE NS DEV LOCAL REMOTE PORT MAX_SECONDS
 *   MODE         whole | split
 *   NS           path of the network namespace holding DEV and LOCAL
 *   DEV          persistent TUN device to attach (IFF_VNET_HDR, CSUM|TSO4|TSO6)
 *   LOCAL/REMOTE IPv4 underlay addresses; the UDP socket is bound to
 *                LOCAL:PORT and connected to REMOTE:PORT
 *   MAX_SECONDS  stop on our own after this long
 *
 * Prints "READY {...}" once attached, runs until SIGTERM/SIGINT (or the time
 * bound), then prints one JSON line of counters in fwd_tunnel.py's shape.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "bench_tun.h"

#ifndef SOL_UDP
#define SOL_UDP 17
#endif
#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

/* Datagram size of a run: fits the 1500-byte underlay with IPv4 + UDP headers. */
#define SEGMENT 1400
/* The most one IPv4 UDP send carries. */
#define MAX_UDP_PAYLOAD 65507
/* Frames per ready fd per poll() round, as bench/fwd.c. */
#define READS_PER_ROUND 64
/* SO_SNDBUF/SO_RCVBUF, as fwd_tunnel.py asks for. */
#define SOCKET_BUFFER (7 << 20)

static int open_udp(const char *local, const char *remote, int port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1, size = SOCKET_BUFFER;
    /* FORCE: root may pass rmem_max/wmem_max, as the Python endpoints do. */
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size) < 0) die("SO_SNDBUFFORCE");
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size) < 0) die("SO_RCVBUFFORCE");
    if (setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) < 0) die("UDP_GRO");
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, local, &sa.sin_addr) != 1) die("LOCAL");
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (inet_pton(AF_INET, remote, &sa.sin_addr) != 1) die("REMOTE");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    return fd;
}

struct counters {
    unsigned long long tun_reads, tun_read_bytes, tun_writes, tun_write_bytes, tun_write_errors;
    unsigned long long oversize, unsplit, rx_packets, tx_packets;
    unsigned long long udp_sends, udp_datagrams_out, udp_send_errors;
    unsigned long long udp_recvs, udp_datagrams_in, udp_soft_errors;
};

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
    return fold((uint64_t)rd16(p + 12) + rd16(p + 14) + rd16(p + 16) + rd16(p + 18) + p[9] + l4len);
}

static void ip4_checksum(uint8_t *p, size_t ihl) {
    p[10] = p[11] = 0;
    wr16(p + 10, ~sum16(p, ihl) & 0xFFFF);
}

/* One sendmsg of niov iovecs: nseg datagrams of seg bytes (the last may be
 * shorter) as a UDP_SEGMENT run, or one datagram. */
static void send_run(int udp, struct iovec *iov, size_t niov, unsigned seg, unsigned nseg,
                     struct counters *c) {
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = niov};
    if (nseg > 1) {
        uint16_t size = (uint16_t)seg;
        msg.msg_control = control.buf;
        msg.msg_controllen = sizeof control.buf;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof size);
        memcpy(CMSG_DATA(cm), &size, sizeof size);
    }
    if (sendmsg(udp, &msg, 0) < 0) {
        c->udp_send_errors++;
        return;
    }
    c->udp_sends++;
    c->udp_datagrams_out += nseg;
}

/* "whole": one TUN frame out as one UDP_SEGMENT run. */
static void send_whole(int udp, uint8_t *frame, size_t n, struct counters *c) {
    if (n > MAX_UDP_PAYLOAD) {
        c->oversize++;
        return;
    }
    struct iovec iov = {frame, n};
    send_run(udp, &iov, 1, SEGMENT, (unsigned)((n + SEGMENT - 1) / SEGMENT), c);
}

/* "split": a TUN frame out as valid IPv4 packets, super-packets cut up. */
static void send_split(int udp, uint8_t *frame, size_t n, struct counters *c) {
    static uint8_t headers[MAX_SEGMENTS][MAX_HEADER];
    static struct iovec iov[2 * MAX_SEGMENTS];
    uint16_t vh[4];
    if (n < VNET_HDR) return;
    memcpy(vh, frame + 2, 8);
    uint8_t *d = frame + VNET_HDR;
    size_t len = n - VNET_HDR, gso_size = vh[1], csum_start = vh[2], csum_offset = vh[3];
    if (frame[1] == 0) {
        if ((frame[0] & VNET_NEEDS_CSUM) && csum_start + csum_offset + 2 <= len) {
            /* The field holds the pseudo-header sum: sum the rest over it. */
            uint32_t v = ~sum16(d + csum_start, len - csum_start) & 0xFFFF;
            wr16(d + csum_start + csum_offset, v ? v : 0xFFFF);
        }
        c->rx_packets++;
        struct iovec one = {d, len};
        send_run(udp, &one, 1, 0, 1, c);
        return;
    }
    size_t ihl = len >= 20 ? (size_t)(d[0] & 15) * 4 : 0;
    size_t hlen = ihl && len >= ihl + 20 ? ihl + (size_t)(d[ihl + 12] >> 4) * 4 : 0;
    if (frame[1] != GSO_TCPV4 || (d[0] >> 4) != 4 || ihl < 20 || hlen < ihl + 20 ||
        hlen > MAX_HEADER || hlen >= len || gso_size == 0 ||
        (len - hlen + gso_size - 1) / gso_size > MAX_SEGMENTS) {
        /* Only the TCP/IPv4 super-packets this bench's tunnel carries. */
        c->unsplit++;
        return;
    }
    size_t nseg = (len - hlen + gso_size - 1) / gso_size;
    /* A send carries at most MAX_UDP_PAYLOAD bytes: the runs share the
     * segments evenly (48 as 24 + 24, not 46 + 2), one system call each. */
    size_t seg = hlen + gso_size, most = MAX_UDP_PAYLOAD / seg;
    size_t runs = (nseg + most - 1) / most, per = (nseg + runs - 1) / runs;
    uint32_t ip_id = rd16(d + 4), seq = rd32(d + ihl + 4), flags = d[ihl + 13];
    for (size_t i = 0; i < nseg;) {
        size_t k = 0;
        for (; k < per && i < nseg; k++, i++) {
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
            iov[2 * k] = (struct iovec){h, hlen};
            iov[2 * k + 1] = (struct iovec){d + at, plen};
        }
        send_run(udp, iov, 2 * k, (unsigned)seg, (unsigned)k, c);
    }
    c->rx_packets += nseg;
}

/* Header length of a TCP/IPv4 data segment whose both checksums hold and
 * which may be merged (ACK, maybe PSH, no options in the IP header); 0 if not. */
static size_t mergeable(const uint8_t *p, size_t n) {
    if (n < 40 || p[0] != 0x45 || p[9] != 6 || rd16(p + 2) != n || (p[6] & 0x3F) || p[7])
        return 0;
    size_t hlen = 20 + (size_t)(p[32] >> 4) * 4;
    if (hlen < 40 || hlen >= n || (p[33] != TCP_ACK && p[33] != (TCP_ACK | TCP_PSH))) return 0;
    if (sum16(p, 20) != 0xFFFF) return 0;
    if (fold((uint64_t)pseudo4(p, n - 20) + sum16(p + 20, n - 20)) != 0xFFFF) return 0;
    return hlen;
}

static void write_frame(int tun, struct iovec *iov, int niov, size_t bytes, size_t packets,
                        struct counters *c) {
    if (writev(tun, iov, niov) < 0) {
        c->tun_write_errors++;
        return;
    }
    c->tun_writes++;
    c->tun_write_bytes += bytes;
    c->tx_packets += packets;
}

/* "split": a UDP_GRO read of gso-byte packets written back, runs of in-order
 * segments of one flow merged into super-packets. */
static void write_merged(int tun, uint8_t *buf, size_t n, size_t gso, struct counters *c) {
    static uint8_t head[VNET_HDR + MAX_HEADER];
    static uint8_t plain[VNET_HDR];
    static struct iovec iov[MAX_SEGMENTS + 1];
    size_t at = 0;
    while (at < n) {
        uint8_t *h = buf + at;
        size_t len = at + gso < n ? gso : n - at, hlen = mergeable(h, len);
        at += len;
        size_t mss = len - hlen, total = len;
        int niov = 1;
        if (hlen) {
            uint32_t next = rd32(h + 24) + (uint32_t)mss;
            unsigned psh = h[33] & TCP_PSH;
            iov[niov++] = (struct iovec){h + hlen, mss};
            /* The next segment joins if it is the flow's next bytes, with the
             * same headers otherwise (TOS, DF, TTL; addresses and ports; ACK
             * number, data offset, window, urgent pointer and options), and no
             * longer than the first. */
            while (!psh && at < n && niov <= MAX_SEGMENTS) {
                uint8_t *p = buf + at;
                size_t plen = at + gso < n ? gso : n - at;
                if (mergeable(p, plen) != hlen || plen - hlen > mss ||
                    total + plen - hlen > 65535 || rd32(p + 24) != next ||
                    p[1] != h[1] || p[6] != h[6] || p[8] != h[8] || memcmp(p + 12, h + 12, 12) ||
                    memcmp(p + 28, h + 28, 5) || p[34] != h[34] || p[35] != h[35] ||
                    memcmp(p + 38, h + 38, hlen - 38))
                    break;
                iov[niov++] = (struct iovec){p + hlen, plen - hlen};
                total += plen - hlen;
                next += (uint32_t)(plen - hlen);
                psh = p[33] & TCP_PSH;
                at += plen;
                if (plen - hlen < mss) break;
            }
            if (niov > 2) {
                uint8_t *o = head + VNET_HDR;
                memcpy(o, h, hlen);
                o[33] |= (uint8_t)psh;
                wr16(o + 2, (uint32_t)total);
                ip4_checksum(o, 20);
                /* NEEDS_CSUM: the field holds the pseudo-header sum. */
                wr16(o + 36, pseudo4(o, total - 20));
                uint16_t vh[4] = {(uint16_t)hlen, (uint16_t)mss, 20, 16};
                head[0] = VNET_NEEDS_CSUM;
                head[1] = GSO_TCPV4;
                memcpy(head + 2, vh, 8);
                iov[0] = (struct iovec){head, VNET_HDR + hlen};
                write_frame(tun, iov, niov, VNET_HDR + total, (size_t)niov - 1, c);
                continue;
            }
        }
        /* As it came: a virtio header of zeros (the kernel checks it). */
        iov[0] = (struct iovec){plain, VNET_HDR};
        iov[1] = (struct iovec){h, len};
        write_frame(tun, iov, 2, VNET_HDR + len, 1, c);
    }
}

int main(int argc, char **argv) {
    if (argc != 8 || (strcmp(argv[1], "whole") != 0 && strcmp(argv[1], "split") != 0)) {
        fprintf(stderr, "usage: %s whole|split NS DEV LOCAL REMOTE PORT MAX_SECONDS\n", argv[0]);
        return 2;
    }
    int split = strcmp(argv[1], "split") == 0;
    int nsfd = open(argv[2], O_RDONLY | O_CLOEXEC);
    if (nsfd < 0) die(argv[2]);
    if (setns(nsfd, CLONE_NEWNET) < 0) die("setns");
    close(nsfd);
    int tun = open_tun(argv[3], 1);
    int udp = open_udp(argv[4], argv[5], atoi(argv[6]));

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGALRM, &sa, NULL);
    alarm((unsigned)atoi(argv[7]));
    printf("READY {\"implementation\": \"C\", \"offload\": \"csum+tso4+tso6\"}\n");
    fflush(stdout);

    /* A frame is at most a 64 KiB super-packet and its 10-byte virtio header. */
    static uint8_t frame[65536 + 64], datagrams[65536 + 64];
    struct counters c;
    memset(&c, 0, sizeof c);
    while (!stop) {
        struct pollfd p[2] = {{tun, POLLIN, 0}, {udp, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        for (int i = 0; i < READS_PER_ROUND; i++) {
            ssize_t n = read(tun, frame, sizeof frame);
            if (n <= 0) break;
            c.tun_reads++;
            c.tun_read_bytes += (unsigned long long)n;
            (split ? send_split : send_whole)(udp, frame, (size_t)n, &c);
        }
        for (int i = 0; i < READS_PER_ROUND; i++) {
            union {
                char buf[CMSG_SPACE(sizeof(int))];
                struct cmsghdr align;
            } control;
            struct iovec iov = {datagrams, sizeof datagrams};
            struct msghdr msg = {.msg_iov = &iov,
                                 .msg_iovlen = 1,
                                 .msg_control = control.buf,
                                 .msg_controllen = sizeof control.buf};
            ssize_t n = recvmsg(udp, &msg, 0);
            if (n < 0) {
                /* ICMP errors on a connected socket: the peer may not be up yet. */
                if (errno == ECONNREFUSED || errno == EHOSTUNREACH) {
                    c.udp_soft_errors++;
                    continue;
                }
                break;
            }
            size_t gso = n > 0 ? (size_t)n : 1;
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
                if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO) {
                    int size;
                    memcpy(&size, CMSG_DATA(cm), sizeof size);
                    if (size > 0) gso = (size_t)size;
                }
            }
            c.udp_recvs++;
            c.udp_datagrams_in += ((unsigned long long)n + gso - 1) / gso;
            if (split) {
                write_merged(tun, datagrams, (size_t)n, gso, &c);
                continue;
            }
            struct iovec out = {datagrams, (size_t)n};
            write_frame(tun, &out, 1, (size_t)n, 0, &c);
        }
    }
    /* "whole" counts frames only (rx_packets/tx_packets 0): a frame is a whole
     * super-packet.  "split" counts the packets it cut and merged too. */
    printf("{\"tun\": {\"reads\": %llu, \"read_bytes\": %llu, \"rx_packets\": %llu, "
           "\"writes\": %llu, \"write_bytes\": %llu, \"tx_packets\": %llu, \"tx_dropped\": %llu, "
           "\"oversize\": %llu, \"unsplit\": %llu}, "
           "\"udp\": {\"writes\": %llu, \"tx_messages\": %llu, \"tx_datagrams\": %llu, "
           "\"tx_dropped\": %llu, \"reads\": %llu, \"rx_messages\": %llu, \"rx_datagrams\": %llu, "
           "\"soft_errors\": %llu}}\n",
           c.tun_reads, c.tun_read_bytes, c.rx_packets, c.tun_writes, c.tun_write_bytes,
           c.tx_packets, c.tun_write_errors, c.oversize, c.unsplit, c.udp_sends, c.udp_sends,
           c.udp_datagrams_out, c.udp_send_errors, c.udp_recvs, c.udp_recvs, c.udp_datagrams_in,
           c.udp_soft_errors);
    return 0;
}
