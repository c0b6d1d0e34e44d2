/*
 * Reference forwarder for bench/forward.py: the fastest simple thing a C
 * program can do between two TUN devices, so the Python numbers have a yardstick.
 *
 * usage: fwd NS_A DEV_A NS_B DEV_B VNET
 *   NS_*   path of a network namespace (e.g. /run/netns/client)
 *   DEV_*  name of a persistent TUN device living in that namespace
 *   VNET   1: attach with IFF_VNET_HDR and offload CSUM|TSO4|TSO6 (frames are
 *          passed through untouched, virtio header included); 0: plain packets;
 *          2: as 1, but every frame is cut into packets and merged back
 *          (bench_gso.h), the work trio-tun's split + coalesce forwarders do
 *
 * Prints "READY" once both devices are attached, forwards until SIGTERM/SIGINT,
 * then prints one JSON line of counters and exits 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "bench_gso.h"
#include "bench_tun.h"

/* One read brings at most a 64 KiB super-packet plus the 10-byte virtio header. */
#define BUF_SIZE (65536 + 10)
/* Reads per ready fd per poll() round: drain bursts without starving the other side. */
#define READS_PER_ROUND 64

struct counters {
    unsigned long long reads, read_bytes, writes, write_bytes, write_errors;
    /* VNET 2: packets cut out of the frames read, packets in the frames written. */
    unsigned long long rx_packets, tx_packets;
};

/* Open DEV inside namespace NS, then return this (single) thread to HOME. */
static int attach(const char *ns, const char *dev, int vnet, int home) {
    int nsfd = open(ns, O_RDONLY | O_CLOEXEC);
    if (nsfd < 0) die(ns);
    if (setns(nsfd, CLONE_NEWNET) < 0) die("setns(target)");
    close(nsfd);

    int fd = open_tun(dev, vnet);
    if (setns(home, CLONE_NEWNET) < 0) die("setns(home)");
    return fd;
}

static void count_write(ssize_t w, size_t packets, struct counters *c) {
    /* A TUN write is one whole packet or an error; a refused packet is a drop. */
    if (w < 0) {
        c->write_errors++;
    } else {
        c->writes++;
        c->write_bytes += (unsigned long long)w;
        c->tx_packets += packets;
    }
}

/* VNET 2: the frame's packets (a super-packet cut up, or the one packet it
 * holds), merged back where they can be and written. */
static void transform(int dst, unsigned char *frame, size_t n, struct counters *c) {
    static uint8_t headers[MAX_SEGMENTS][MAX_HEADER], head[VNET_HDR + MAX_HEADER];
    static struct seg segs[MAX_SEGMENTS];
    static struct iovec iov[MAX_SEGMENTS + 1];
    size_t nseg = 1;
    if (n < VNET_HDR) return;
    if (frame[1] == 0) {
        segs[0] = gso_single(frame, n);
    } else if ((nseg = gso_split(frame, n, headers, segs)) == 0) {
        /* Not TCP/IPv4: through untouched. */
        count_write(write(dst, frame, n), 1, c);
        return;
    }
    c->rx_packets += nseg;
    for (size_t i = 0; i < nseg;) {
        int niov;
        size_t bytes, count = gro_frame(segs, nseg, i, head, iov, &niov, &bytes);
        count_write(writev(dst, iov, niov), count, c);
        i += count;
    }
}

/* Move up to READS_PER_ROUND frames from src to dst; stop early when src is empty. */
static void pump(int src, int dst, unsigned char *buf, int split, struct counters *c) {
    for (int i = 0; i < READS_PER_ROUND; i++) {
        ssize_t n = read(src, buf, BUF_SIZE);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            die("read");
        }
        c->reads++;
        c->read_bytes += (unsigned long long)n;
        if (split) {
            transform(dst, buf, (size_t)n, c);
        } else {
            count_write(write(dst, buf, (size_t)n), 0, c);
        }
    }
}

static void print_counters(const char *name, const struct counters *c, const char *sep) {
    printf("\"%s\": {\"reads\": %llu, \"read_bytes\": %llu, \"writes\": %llu, "
           "\"write_bytes\": %llu, \"write_errors\": %llu, \"rx_packets\": %llu, "
           "\"tx_packets\": %llu}%s",
           name, c->reads, c->read_bytes, c->writes, c->write_bytes, c->write_errors,
           c->rx_packets, c->tx_packets, sep);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s NS_A DEV_A NS_B DEV_B VNET\n", argv[0]);
        return 2;
    }
    int vnet = atoi(argv[5]) != 0, split = atoi(argv[5]) == 2;

    /* No SA_RESTART: poll() must return EINTR so the loop sees the stop flag. */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int home = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    if (home < 0) die("/proc/self/ns/net");
    int a = attach(argv[1], argv[2], vnet, home);
    int b = attach(argv[3], argv[4], vnet, home);
    close(home);

    static unsigned char buf[BUF_SIZE];
    struct counters ab = {0}, ba = {0};
    struct pollfd fds[2] = {{.fd = a, .events = POLLIN}, {.fd = b, .events = POLLIN}};

    printf("READY\n");
    fflush(stdout);

    while (!stop) {
        int r = poll(fds, 2, 1000);
        if (r < 0) {
            if (errno == EINTR) continue;
            die("poll");
        }
        if (fds[0].revents & (POLLERR | POLLHUP | POLLNVAL)) break;
        if (fds[1].revents & (POLLERR | POLLHUP | POLLNVAL)) break;
        if (fds[0].revents & POLLIN) pump(a, b, buf, split, &ab);
        if (fds[1].revents & POLLIN) pump(b, a, buf, split, &ba);
    }

    printf("{\"forwarder\": \"c\", \"vnet_hdr\": %s, ", vnet ? "true" : "false");
    print_counters("a_to_b", &ab, ", ");
    print_counters("b_to_a", &ba, "}\n");
    fflush(stdout);
    close(a);
    close(b);
    return 0;
}
