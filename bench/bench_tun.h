/*
 * What bench/fwd.c and bench/tunnel_floor.c share: the stop flag their signal
 * handler sets, dying with a message, and attaching a persistent TUN device.
 * Header-only, so each program still builds with one `cc file.c`.
 */
#ifndef TRIO_TUN_BENCH_TUN_H
#define TRIO_TUN_BENCH_TUN_H

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) {
    (void)sig;
    stop = 1;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

/* Attach DEV (in this thread's namespace), non-blocking; VNET: with virtio
 * headers and CSUM|TSO4|TSO6 offload, else plain packets. */
static int open_tun(const char *dev, int vnet) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) die("/dev/net/tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", dev);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) die("TUNSETIFF");
    /* The mask is device-wide and survives reopening: set it either way. */
    unsigned long mask = vnet ? (TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) : 0;
    if (ioctl(fd, TUNSETOFFLOAD, mask) < 0) die("TUNSETOFFLOAD");
    return fd;
}

#endif
