"""``python -m trio_tun info``: which backend runs here and what the driver supports."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import sys
import threading
from typing import Any, Final

import attrs

from . import offload as _offload
from . import platform as _dispatch
from ._config import FULL_OFFLOAD, TCP_OFFLOAD

#: How the probes read in the text output (the keys are the JSON's).
PROBE_LABELS: Final = {
    "offload_tcp": "TCP offload (TUNSETOFFLOAD CSUM|TSO4|TSO6)",
    "offload_tcp_udp": "TCP and UDP offload (TUNSETOFFLOAD CSUM|TSO4|TSO6|USO4|USO6)",
    "multi_queue": "multi-queue (a second queue attaches)",
    "probe": "probe",
}


def _probe_offload() -> dict[str, bool | str]:
    """Try each offload mask on a throw-away device in a private namespace.

    Each probe maps to True, or to the reason it failed.
    """
    from .platform.linux import netns as _netns
    from .platform.linux import tun as linux

    results: dict[str, bool | str] = {}

    def worker() -> None:
        # A fresh namespace for this thread only: the probe device never
        # appears in the caller's namespace.
        _netns.unshare_net()
        fd = linux.open_tun_file()
        try:
            linux.set_iff(fd, "probe%d", linux.IFF_TUN | linux.IFF_NO_PI | linux.IFF_VNET_HDR)
            for label, flags in (
                ("offload_tcp", TCP_OFFLOAD),
                ("offload_tcp_udp", FULL_OFFLOAD),
            ):
                try:
                    linux.set_offload(fd, flags)
                    results[label] = True
                except OSError as exc:
                    results[label] = str(exc.strerror)
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
                    results["multi_queue"] = True
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
        results["probe"] = f"failed: {failure[0]}"
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


def _version() -> str:
    try:
        return importlib.metadata.version("trio-tun")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        from . import __version__

        return __version__


def gather() -> tuple[dict[str, Any], bool]:
    """What ``info`` reports, as plain data; and whether the driver could be opened."""
    report: dict[str, Any] = {
        "trio_tun": _version(),
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
        },
        "python": platform.python_version(),
        "offload_implementation": _offload.implementation,
    }
    backend = _dispatch.backend_name()
    caps = _dispatch.CAPABILITIES.get(backend)
    report["backend"] = {"name": backend} | (
        {"available": False}
        if caps is None
        else {"available": True, **attrs.asdict(caps, filter=lambda a, _: a.name != "backend")}
    )
    if caps is None:
        report["backend"]["note"] = _dispatch.describe()[0]
    if backend != "linux":
        try:
            report["driver"] = {"notes": _probe_other(backend)}
        except Exception as exc:  # reported, not raised: info must always print
            report["driver"] = {"notes": [f"probe failed: {exc}"]}
        return report, True
    from .platform.linux import tun as linux

    try:
        fd = linux.open_tun_file()
    except OSError as exc:
        report["driver"] = {"path": linux.TUN_PATH, "error": str(exc)}
        return report, False
    with contextlib.closing(os.fdopen(fd, "rb", buffering=0)):
        feats = linux.features(fd)
    report["driver"] = {
        "path": linux.TUN_PATH,
        "features": {name: bool(feats & flag) for name, flag, _ in _linux_flags(linux)},
    }
    if _is_root():
        report["probes"] = _probe_offload()
    else:
        report["probes"] = None
    return report, True


def _linux_flags(linux: Any) -> list[tuple[str, int, str]]:
    return [
        ("IFF_TUN", linux.IFF_TUN, "TUN"),
        ("IFF_TAP", linux.IFF_TAP, "TAP"),
        ("IFF_NO_PI", linux.IFF_NO_PI, "no packet info"),
        ("IFF_VNET_HDR", linux.IFF_VNET_HDR, "virtio-net header, for offload"),
        ("IFF_MULTI_QUEUE", linux.IFF_MULTI_QUEUE, "multi-queue"),
    ]


def render(report: dict[str, Any]) -> str:
    """The human-readable form of :func:`gather`'s report."""
    system = report["platform"]
    lines = [
        f"trio-tun {report['trio_tun']} on {system['system']} {system['release']} "
        f"({system['machine']}), Python {report['python']}",
        f"offload code: {report['offload_implementation']}"
        + (
            " (compiled)"
            if report["offload_implementation"] == "speedups"
            else " (pure Python; a C compiler at install time builds the speedups)"
        ),
    ]
    backend = report["backend"]
    if not backend["available"]:
        lines.append(backend["note"])
    else:
        lines.append(f"backend: {backend['name']} ({backend['mechanism']})")
        lines.append(f"tested: {backend['tested']}")
    driver = report.get("driver", {})
    if backend["name"] != "linux":
        if backend["available"]:
            # No driver query on these systems: what the backend can do at all.
            lines.append(
                "supports: "
                + ", ".join(
                    f"{label} {'yes' if backend[key] else 'no'}"
                    for key, label in (
                        ("tun", "TUN"),
                        ("tap", "TAP"),
                        ("offload", "offload"),
                        ("multi_queue", "multi-queue"),
                        ("persist", "persist"),
                    )
                )
            )
        lines.extend(driver.get("notes", []))
        return "\n".join(lines)
    if "error" in driver:
        lines.append(f"{driver['path']}: unavailable: {driver['error']}")
        return "\n".join(lines)
    from .platform.linux import tun as linux

    lines.append(f"kernel driver ({driver['path']}, TUNGETFEATURES):")
    for name, _, label in _linux_flags(linux):
        lines.append(f"  {label} ({name}): {'yes' if driver['features'][name] else 'no'}")
    probes = report["probes"]
    if probes is None:
        lines.append("offload and multi-queue probes need root (CAP_NET_ADMIN): skipped")
    else:
        lines.append("probed on a throw-away device in a private namespace:")
        for key, outcome in probes.items():
            label = PROBE_LABELS.get(key, key)
            lines.append(f"  {label}: {'yes' if outcome is True else f'no ({outcome})'}")
    return "\n".join(lines)


def main(*, as_json: bool = False) -> int:
    """Entry point of ``python -m trio_tun info``; returns the exit status."""
    report, ok = gather()
    print(json.dumps(report, indent=2) if as_json else render(report))
    return 0 if ok else 1
