"""The Linux backend: a :class:`~trio_tun.TunConfig` in, a configured device's parts out."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from typing import Final

import anyio.to_thread

from ..._config import NO_OFFLOAD, TCP_OFFLOAD, Layer, OffloadFlags, TunConfig, validate_name
from ..._errors import DeviceBusyError, OffloadUnavailableError, TunPermissionError
from ..._framing import Framing, PlainFraming, VirtioFraming
from ..._malloc import adapt_malloc
from ..._ports import FdPort, Port
from .. import Device, FdSpec, plain_fd_device
from . import netns, tun
from .netlink import NetlinkControl


def _want_vnet_hdr(config: TunConfig, fd: int) -> bool:
    if config.offload is False:
        return False
    problem = None
    if config.layer is Layer.L2:
        problem = "offload is only implemented for TUN devices"
    elif config.packet_info:
        problem = "offload can't be combined with packet_info=True"
    elif not tun.features(fd) & tun.IFF_VNET_HDR:
        problem = "this kernel's TUN driver has no IFF_VNET_HDR"
    if problem is None:
        return True
    if config.offload is True:
        raise OffloadUnavailableError(errno.EOPNOTSUPP, f"offload=True: {problem}")
    return False


def _iff_flags(config: TunConfig, vnet_hdr: bool) -> int:
    flags = tun.IFF_TAP if config.layer is Layer.L2 else tun.IFF_TUN
    if not config.packet_info:
        flags |= tun.IFF_NO_PI
    if vnet_hdr:
        flags |= tun.IFF_VNET_HDR
    if config.queues > 1:
        flags |= tun.IFF_MULTI_QUEUE
    return flags


def _framing(vnet_hdr: bool, offload: OffloadFlags) -> Framing:
    if vnet_hdr:
        # Super-packets are split and coalesced: batches of large, short-lived
        # buffers that glibc would otherwise hand back to the kernel each time.
        adapt_malloc()
        return VirtioFraming(coalescing=offload.enabled, uso=offload.uso)
    return PlainFraming()


def _queue_control(fd: int, attach: bool) -> None:
    tun.set_queue(fd, attach)


class LinuxBackend:
    """``/dev/net/tun`` queues configured through netlink."""

    name = "linux"

    def check(self, config: TunConfig) -> None:
        validate_name(config.name)

    async def open(self, config: TunConfig) -> Device:
        fds: list[int] = []
        control: NetlinkControl | None = None
        # netns=: a closed fd, a file that is no namespace, a namespace we may
        # not enter (no CAP_SYS_ADMIN) or a name taken there is refused here,
        # before any device exists.
        target = None if config.netns is None else netns.open_target(config.netns)
        try:
            if target is not None:
                with netns.entered(target, f"netns={config.netns!r}"):
                    taken = _exists(config.name)
                if taken:
                    raise DeviceBusyError(
                        errno.EEXIST,
                        f"netns={config.netns!r}: the target namespace already has a device "
                        f"named {config.name!r}; pick a name free there",
                    )
            existed = _exists(config.name)
            try:
                name, vnet_hdr, offload, was_persistent = self._create_queues(config, fds)
            except DeviceBusyError as exc:
                if not existed or exc.errno != errno.EINVAL:
                    raise
                # The kernel only said "invalid argument": ask netlink why.
                here = netns.open_current()
                try:
                    why = await anyio.to_thread.run_sync(_why_incompatible, config, here)
                finally:
                    os.close(here)
                raise DeviceBusyError(errno.EINVAL, why) from None
            # The device was born in this thread's namespace: remember it, since
            # netlink work happens on pooled threads that may be elsewhere.
            here = netns.open_current()
            try:
                index = socket.if_nametoindex(name)
            except OSError:
                os.close(here)
                raise
            control = NetlinkControl(name=name, index=index, netns_fd=here)
            if target is not None:
                fd, target = target, None
                await self._move(control, fd)
            try:
                await anyio.to_thread.run_sync(
                    lambda: control.configure(
                        mtu=config.mtu,
                        mac=config.mac,
                        addresses=config.addresses,
                        up=config.up,
                        ipv6_link_local=config.ipv6_link_local,
                    )
                )
            except TunPermissionError as exc:
                if not existed:
                    raise
                raise TunPermissionError(
                    errno.EPERM,
                    f"{exc.strerror}; open_tun attached to the existing device {name!r} and "
                    "then tried to configure it: to use a device set up by an administrator "
                    "without that privilege, pass up=False and no addresses=, mtu= or mac=",
                ) from None
            if was_persistent and not config.persist:
                # We attached to a persistent device but were not asked to keep
                # it: it goes when our last queue closes.  Only now, once the
                # open succeeded: a failed open must never delete somebody
                # else's device.
                tun.set_persist(fds[0], False)
            ports: list[Port] = [FdPort(fd, queue_control=_queue_control) for fd in fds]
        except BaseException:
            for fd in fds:
                os.close(fd)
            if control is not None:
                control.close()
            if target is not None:
                os.close(target)
            raise
        return Device(
            layer=config.layer,
            ports=ports,
            framings=[_framing(vnet_hdr, offload) for _ in ports],
            control=control,
            offload=offload,
            packet_info=config.packet_info,
        )

    @staticmethod
    async def _move(control: NetlinkControl, fd: int) -> None:
        """Move the device into namespace *fd*, which the control takes over once there."""
        try:
            await anyio.to_thread.run_sync(control.move_to, fd)
        except BaseException as exc:
            # Cancelled on the way into the thread, or the move failed: the
            # control took the fd over only if the device got there.
            if control.netns_fd != fd:
                os.close(fd)
            if isinstance(exc, FileExistsError):
                # A kernel-chosen name (name=None or a pattern) was free here
                # but is taken in the target.
                raise DeviceBusyError(
                    errno.EEXIST,
                    f"the device got the name {control.name!r} here, which the netns= "
                    "namespace already has: pass a name free there (e.g. name='vpn7')",
                ) from None
            raise

    @staticmethod
    def _create_queues(config: TunConfig, fds: list[int]) -> tuple[str, bool, OffloadFlags, bool]:
        """The synchronous part: open the queue fds in the calling thread's namespace.

        Returns the device's name, whether reads carry a virtio header, the
        offload agreed and whether the device was persistent.
        """
        first = tun.open_tun_file()
        fds.append(first)
        vnet_hdr = _want_vnet_hdr(config, first)
        flags = _iff_flags(config, vnet_hdr)
        name = tun.set_iff(first, config.name, flags)
        _, actual = tun.get_iff(first)
        was_persistent = bool(actual & tun.IFF_PERSIST)
        if config.persist and not was_persistent:
            tun.set_persist(first, True)
        if config.owner is not None:
            tun.set_owner(first, config.owner)
        if config.group is not None:
            tun.set_group(first, config.group)
        offload = NO_OFFLOAD
        if vnet_hdr:
            offload = tun.negotiate_offload(first, required=config.offload is True)
        else:
            # A persistent device remembers its offload mask; without a virtio
            # header the kernel would then hand us unsplit super-packets.
            with contextlib.suppress(OSError):
                tun.set_offload(first, NO_OFFLOAD)
        for _ in range(config.queues - 1):
            fd = tun.open_tun_file()
            fds.append(fd)
            tun.set_iff(fd, name, flags)
        return name, vnet_hdr, offload, was_persistent

    def wrap_fd(self, spec: FdSpec) -> Device:
        if spec.af_header:
            return plain_fd_device(spec)
        layer, vnet_hdr, packet_info = spec.layer, spec.vnet_hdr, spec.packet_info
        control: NetlinkControl | None = None
        try:
            name, flags = tun.get_iff(spec.fd)
        except OSError:
            name, flags = "", 0
        if name:
            layer = Layer.L2 if flags & tun.IFF_TAP else Layer.L3
            if vnet_hdr is None:
                vnet_hdr = bool(flags & tun.IFF_VNET_HDR)
            if packet_info is None:
                packet_info = not flags & tun.IFF_NO_PI
            control = _control_here(name)
        offload = spec.offload
        if offload is None:
            # The kernel can't tell us the mask; TCP-only is the safe guess, since
            # received segments are split whatever the mask says.
            offload = TCP_OFFLOAD if vnet_hdr else NO_OFFLOAD
        return Device(
            layer=layer,
            ports=[FdPort(spec.fd, owned=spec.owned)],
            framings=[_framing(bool(vnet_hdr), offload)],
            control=control,
            offload=offload,
            packet_info=bool(packet_info),
        )


def _exists(name: str | None) -> bool:
    """Whether *name* (a plain name, not a pattern) is taken in this thread's namespace."""
    if name is None or "%" in name:
        return False
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


_TUN_TYPES: Final = {tun.IFF_TUN: ("TUN", "open_tun"), tun.IFF_TAP: ("TAP", "open_tap")}


def _why_incompatible(config: TunConfig, ns_fd: int) -> str:
    """Why the kernel refused to attach to the existing device ``config.name`` (``EINVAL``).

    Asked of netlink (the device's link info) in namespace *ns_fd*; the kernel
    itself only says "invalid argument".  Runs in a worker thread: pyroute2's
    synchronous API refuses a thread running an event loop.
    """
    name = config.name
    generic = (
        f"device {name!r} exists but can't be attached to with these settings "
        "(name taken by another kind of interface, or a different TUN/TAP mode?)"
    )
    try:
        from pyroute2 import IPRoute

        with netns.entered(ns_fd), IPRoute() as ipr:
            links = ipr.get_links(ifname=name)
    except Exception:  # the diagnosis is a courtesy: never hide the real error
        return generic
    if not links:
        return generic
    info = links[0].get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    if kind != "tun":
        what = f"a {kind} interface" if kind else "an interface of another kind"
        return f"the name {name!r} is taken by {what}, not a TUN/TAP device: pick another name"
    data = info.get_attr("IFLA_INFO_DATA")
    if data is None:
        return generic
    wanted = tun.IFF_TAP if config.layer is Layer.L2 else tun.IFF_TUN
    have = int(data.get_attr("IFLA_TUN_TYPE") or 0)
    if have in _TUN_TYPES and have != wanted:
        kind_name, opener = _TUN_TYPES[have]
        return f"{name!r} is a {kind_name} device: open it with {opener}()"
    multi = bool(data.get_attr("IFLA_TUN_MULTI_QUEUE"))
    if multi != (config.queues > 1):
        if multi:
            return (
                f"{name!r} is a multi-queue device: attach with queues=2 or more "
                "(whether a device is multi-queue is fixed when it is created)"
            )
        return (
            f"{name!r} is a single-queue device: attach with queues=1 "
            "(whether a device is multi-queue is fixed when it is created)"
        )
    return generic


def _control_here(name: str) -> NetlinkControl | None:
    """Control of device *name* in the calling thread's namespace, if it is there."""
    here = netns.open_current()
    try:
        return NetlinkControl(name=name, index=socket.if_nametoindex(name), netns_fd=here)
    except OSError:
        os.close(here)
        return None
