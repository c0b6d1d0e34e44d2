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

#include "bench_gso.h"
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
    static struct seg segs[MAX_SEGMENTS];
    static struct iovec iov[2 * MAX_SEGMENTS];
    if (n < VNET_HDR) return;
    if (frame[1] == 0) {
        c->rx_packets++;
        struct seg one = gso_single(frame, n);
        struct iovec two[2] = {{one.h, one.hlen}, {one.p, one.plen}};
        send_run(udp, two, 2, 0, 1, c);
        return;
    }
    size_t nseg = gso_split(frame, n, headers, segs);
    if (nseg == 0) {
        /* Only the TCP/IPv4 super-packets this bench's tunnel carries. */
        c->unsplit++;
        return;
    }
    c->rx_packets += nseg;
    /* A send carries at most MAX_UDP_PAYLOAD bytes: the runs share the
     * segments evenly (48 as 24 + 24, not 46 + 2), one system call each. */
    size_t seg = segs[0].hlen + segs[0].plen, most = MAX_UDP_PAYLOAD / seg;
    size_t runs = (nseg + most - 1) / most, per = (nseg + runs - 1) / runs;
    for (size_t i = 0; i < nseg;) {
        size_t k = 0;
        for (; k < per && i < nseg; k++, i++) {
            iov[2 * k] = (struct iovec){segs[i].h, segs[i].hlen};
            iov[2 * k + 1] = (struct iovec){segs[i].p, segs[i].plen};
        }
        send_run(udp, iov, 2 * k, (unsigned)seg, (unsigned)k, c);
    }
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
    static struct seg segs[MAX_SEGMENTS];
    static struct iovec iov[MAX_SEGMENTS + 1];
    size_t nseg = 0;
    for (size_t at = 0; at < n && nseg < MAX_SEGMENTS; at += gso) {
        segs[nseg++] = seg_of(buf + at, at + gso < n ? gso : n - at);
    }
    for (size_t i = 0; i < nseg;) {
        int niov;
        size_t bytes, count = gro_frame(segs, nseg, i, head, iov, &niov, &bytes);
        write_frame(tun, iov, niov, bytes, count, c);
        i += count;
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
