/*
 * The kernel's share of a TUN <-> UDP tunnel endpoint, for bench/forward.py's
 * tunnel-floor mode: the same system calls as trio-tun's batched tunnel (one
 * TUN read, one UDP_SEGMENT sendmsg; one UDP_GRO recvmsg, one TUN write per
 * super-packet), with no work in user space between them.
 *
 * It is not a tunnel protocol.  A TUN frame (virtio header + super-packet) is
 * sent whole as one UDP_SEGMENT run of SEGMENT-byte datagrams, and the peer
 * writes back whatever one UDP_GRO read returns.  That is the original frame
 * only because the veth underlay hands the GSO datagram to the peer's socket
 * unsegmented and the frame fits in one UDP send (the harness caps the TUN
 * devices' gso_max_size for this mode).  A real tunnel must cut the
 * super-packet into valid packets (GSO) and merge them again (GRO); what that
 * costs is the distance between this mode and tunnel-batched.
 *
 * usage: tunnel_floor NS DEV LOCAL REMOTE PORT MAX_SECONDS
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
    unsigned long long oversize, udp_sends, udp_datagrams_out, udp_send_errors;
    unsigned long long udp_recvs, udp_datagrams_in, udp_soft_errors;
};

/* One TUN frame out as one UDP_SEGMENT run. */
static void send_frame(int udp, const uint8_t *frame, size_t n, struct counters *c) {
    union {
        char buf[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {(void *)frame, n};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (n > SEGMENT) {
        uint16_t size = SEGMENT;
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
    c->udp_datagrams_out += (n + SEGMENT - 1) / SEGMENT;
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s NS DEV LOCAL REMOTE PORT MAX_SECONDS\n", argv[0]);
        return 2;
    }
    int nsfd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (nsfd < 0) die(argv[1]);
    if (setns(nsfd, CLONE_NEWNET) < 0) die("setns");
    close(nsfd);
    int tun = open_tun(argv[2], 1);
    int udp = open_udp(argv[3], argv[4], atoi(argv[5]));

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGALRM, &sa, NULL);
    alarm((unsigned)atoi(argv[6]));
    printf("READY {\"implementation\": \"C\", \"offload\": \"csum+tso4+tso6\"}\n");
    fflush(stdout);

    /* A frame is at most a 64 KiB super-packet and its 10-byte virtio header. */
    static uint8_t buf[65536 + 64];
    struct counters c;
    memset(&c, 0, sizeof c);
    while (!stop) {
        struct pollfd p[2] = {{tun, POLLIN, 0}, {udp, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        for (int i = 0; i < READS_PER_ROUND; i++) {
            ssize_t n = read(tun, buf, sizeof buf);
            if (n <= 0) break;
            c.tun_reads++;
            c.tun_read_bytes += (unsigned long long)n;
            if (n > MAX_UDP_PAYLOAD) {
                c.oversize++;
                continue;
            }
            send_frame(udp, buf, (size_t)n, &c);
        }
        for (int i = 0; i < READS_PER_ROUND; i++) {
            ssize_t n = recv(udp, buf, sizeof buf, 0);
            if (n < 0) {
                /* ICMP errors on a connected socket: the peer may not be up yet. */
                if (errno == ECONNREFUSED || errno == EHOSTUNREACH) {
                    c.udp_soft_errors++;
                    continue;
                }
                break;
            }
            c.udp_recvs++;
            c.udp_datagrams_in += ((unsigned long long)n + SEGMENT - 1) / SEGMENT;
            if (write(tun, buf, (size_t)n) < 0) {
                c.tun_write_errors++;
            } else {
                c.tun_writes++;
                c.tun_write_bytes += (unsigned long long)n;
            }
        }
    }
    /* No rx_packets/tx_packets: a frame here is a whole super-packet. */
    printf("{\"tun\": {\"reads\": %llu, \"read_bytes\": %llu, "
           "\"writes\": %llu, \"write_bytes\": %llu, \"tx_dropped\": %llu, "
           "\"oversize\": %llu}, "
           "\"udp\": {\"writes\": %llu, \"tx_messages\": %llu, \"tx_datagrams\": %llu, "
           "\"tx_dropped\": %llu, \"reads\": %llu, \"rx_messages\": %llu, \"rx_datagrams\": %llu, "
           "\"soft_errors\": %llu}}\n",
           c.tun_reads, c.tun_read_bytes, c.tun_writes, c.tun_write_bytes, c.tun_write_errors, c.oversize, c.udp_sends, c.udp_sends,
           c.udp_datagrams_out, c.udp_send_errors, c.udp_recvs, c.udp_recvs, c.udp_datagrams_in,
           c.udp_soft_errors);
    return 0;
}
