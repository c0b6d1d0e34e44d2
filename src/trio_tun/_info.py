"""``python -m trio_tun info``: which backend runs here and what the driver supports."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import threading

from . import offload as _offload
from . import platform as _dispatch
from ._config import FULL_OFFLOAD, TCP_OFFLOAD


def _probe_offload() -> list[str]:
    """Try each offload mask on a throw-away device in a private namespace."""
    from .platform.linux import netns as _netns
    from .platform.linux import tun as linux

    results: list[str] = []

    def worker() -> None:
        # A fresh namespace for this thread only: the probe device never
        # appears in the caller's namespace.
        _netns.unshare_net()
        fd = linux.open_tun_file()
        try:
            linux.set_iff(fd, "probe%d", linux.IFF_TUN | linux.IFF_NO_PI | linux.IFF_VNET_HDR)
            for label, flags in (
                ("CSUM|TSO4|TSO6", TCP_OFFLOAD),
                ("CSUM|TSO4|TSO6|USO4|USO6", FULL_OFFLOAD),
            ):
                try:
                    linux.set_offload(fd, flags)
                    results.append(f"  TUNSETOFFLOAD {label}: yes")
                except OSError as exc:
                    results.append(f"  TUNSETOFFLOAD {label}: no ({exc.strerror})")
            second = linux.open_tun_file()
            try:
                linux.set_iff(
                    second, "probemq%d", linux.IFF_TUN | linux.IFF_NO_PI | linux.IFF_MULTI_QUEUE
                )
                third = linux.open_tun_file()
                name, _ = linux.get_iff(second)
                try:
                    linux.set_iff(
                        third, name, linux.IFF_TUN | linux.IFF_NO_PI | linux.IFF_MULTI_QUEUE
                    )
                    results.append("  multi-queue: second queue attached")
                finally:
                    os.close(third)
            finally:
                os.close(second)
        finally:
            os.close(fd)

    failure: list[BaseException] = []

    def guarded() -> None:
        try:
            worker()
        except BaseException as exc:  # reported, not raised: info must always print
            failure.append(exc)

    thread = threading.Thread(target=guarded)
    thread.start()
    thread.join()
    if failure:
        results.append(f"  probe failed: {failure[0]}")
    return results


def _probe_other(backend: str) -> list[str]:
    """A harmless check that the platform's driver is there (no device is made)."""
    if backend == "windows":
        from .platform._winapi import load_wintun

        try:
            api = load_wintun()
        except OSError as exc:
            return [f"wintun: unavailable: {exc}"]
        version = api.get_running_driver_version()
        if not version:
            return ["wintun: DLL loaded; no driver running yet (it loads on first adapter)"]
        return [f"wintun: driver {version >> 16}.{version & 0xFFFF} running"]
    if backend == "darwin":
        return [f"utun kernel control: {'yes' if _utun_control_exists() else 'no'}"]
    if backend in ("freebsd", "openbsd", "netbsd"):
        paths = ["/dev/tun", "/dev/tap", "/dev/tun0", "/dev/tap0"]
        present = [path for path in paths if os.path.exists(path)]
        return [f"device nodes: {', '.join(present) if present else 'none found'}"]
    return []


def _utun_control_exists() -> bool:
    if sys.platform == "win32":
        return False
    else:
        from .platform import darwin
        from .platform._posix import PosixSyscalls

        syscalls = PosixSyscalls()
        try:
            fd = syscalls.socket(darwin.PF_SYSTEM, darwin.SOCK_DGRAM, darwin.SYSPROTO_CONTROL)
        except OSError:
            return False
        try:
            syscalls.ioctl(fd, darwin.CTLIOCGINFO, darwin.ctl_info(darwin.UTUN_CONTROL_NAME))
        except OSError:
            return False
        finally:
            syscalls.close(fd)
        return True


def _is_root() -> bool:
    return sys.platform != "win32" and os.geteuid() == 0


def main() -> int:
    lines = [
        f"platform: {platform.system()} {platform.release()} ({platform.machine()})",
        f"python: {platform.python_version()}",
        f"offload implementation: {_offload.implementation}",
    ]
    backend = _dispatch.backend_name()
    if backend != "linux":
        lines.extend(_dispatch.describe())
        try:
            lines.extend(_probe_other(backend))
        except Exception as exc:  # reported, not raised: info must always print
            lines.append(f"probe failed: {exc}")
        print("\n".join(lines))
        return 0
    from .platform.linux import tun as linux

    lines.append(f"backend: linux ({linux.TUN_PATH})")
    lines.extend(_dispatch.describe()[1:])
    try:
        fd = linux.open_tun_file()
    except OSError as exc:
        lines.append(f"{linux.TUN_PATH}: unavailable: {exc}")
        print("\n".join(lines))
        return 1
    with contextlib.closing(os.fdopen(fd, "rb", buffering=0)):
        feats = linux.features(fd)
    for label, flag in (
        ("TUN (IFF_TUN)", linux.IFF_TUN),
        ("TAP (IFF_TAP)", linux.IFF_TAP),
        ("no packet info (IFF_NO_PI)", linux.IFF_NO_PI),
        ("virtio-net header (IFF_VNET_HDR)", linux.IFF_VNET_HDR),
        ("multi-queue (IFF_MULTI_QUEUE)", linux.IFF_MULTI_QUEUE),
    ):
        lines.append(f"{label}: {'yes' if feats & flag else 'no'}")
    if _is_root():
        lines.append("probing on a throw-away device in a private namespace:")
        lines.extend(_probe_offload())
    else:
        lines.append("offload and multi-queue probes need root (CAP_NET_ADMIN); skipped")
    print("\n".join(lines))
    return 0
