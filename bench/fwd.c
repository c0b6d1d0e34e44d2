/*
 * Reference forwarder for bench/forward.py: the fastest simple thing a C
 * program can do between two TUN devices, so the Python numbers have a yardstick.
 *
 * usage: fwd NS_A DEV_A NS_B DEV_B VNET
 *   NS_*   path of a network namespace (e.g. /run/netns/client)
 *   DEV_*  name of a persistent TUN device living in that namespace
 *   VNET   1: attach with IFF_VNET_HDR and offload CSUM|TSO4|TSO6 (frames are
 *          passed through untouched, virtio header included); 0: plain packets
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

#include "bench_tun.h"

/* One read brings at most a 64 KiB super-packet plus the 10-byte virtio header. */
#define BUF_SIZE (65536 + 10)
/* Reads per ready fd per poll() round: drain bursts without starving the other side. */
#define READS_PER_ROUND 64

struct counters {
    unsigned long long reads, read_bytes, writes, write_bytes, write_errors;
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

/* Move up to READS_PER_ROUND frames from src to dst; stop early when src is empty. */
static void pump(int src, int dst, unsigned char *buf, struct counters *c) {
    for (int i = 0; i < READS_PER_ROUND; i++) {
        ssize_t n = read(src, buf, BUF_SIZE);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            die("read");
        }
        c->reads++;
        c->read_bytes += (unsigned long long)n;
        /* A TUN write is one whole packet or an error; a refused packet is a drop. */
        ssize_t w = write(dst, buf, (size_t)n);
        if (w < 0) {
            c->write_errors++;
        } else {
            c->writes++;
            c->write_bytes += (unsigned long long)w;
        }
    }
}

static void print_counters(const char *name, const struct counters *c, const char *sep) {
    printf("\"%s\": {\"reads\": %llu, \"read_bytes\": %llu, \"writes\": %llu, "
           "\"write_bytes\": %llu, \"write_errors\": %llu}%s",
           name, c->reads, c->read_bytes, c->writes, c->write_bytes, c->write_errors, sep);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s NS_A DEV_A NS_B DEV_B VNET\n", argv[0]);
        return 2;
    }
    int vnet = atoi(argv[5]) != 0;

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
        if (fds[0].revents & POLLIN) pump(a, b, buf, &ab);
        if (fds[1].revents & POLLIN) pump(b, a, buf, &ba);
    }

    printf("{\"forwarder\": \"c\", \"vnet_hdr\": %s, ", vnet ? "true" : "false");
    print_counters("a_to_b", &ab, ", ");
    print_counters("b_to_a", &ba, "}\n");
    fflush(stdout);
    close(a);
    close(b);
    return 0;
}
