"""The real ``Syscalls`` of the macOS/BSD backends, exercised where Linux can.

Linux shares the calls but not the BSD sockaddr layout (no ``sa_len``), so
these tests check the ctypes bindings themselves — prototypes, buffers,
error reporting, walking and freeing the ``getifaddrs`` list — not what the
BSD code makes of the answers.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX calls")


def test_sockets_ioctl_getsockopt_connect(tmp_path: os.PathLike[str]) -> None:
    from trio_tun.platform._posix import PosixSyscalls

    calls = PosixSyscalls()
    fd = calls.socket(socket.AF_INET, socket.SOCK_DGRAM, 0)
    try:
        assert not os.get_inheritable(fd)  # close-on-exec, like every Python socket
        raw = calls.getsockopt(fd, socket.SOL_SOCKET, socket.SO_TYPE, 4)
        assert struct.unpack("=i", raw)[0] == socket.SOCK_DGRAM
        if sys.platform == "linux":
            # Linux's SIOCGIFMTU on lo: the ioctl binding hands the buffer back.
            answer = calls.ioctl(fd, 0x8921, b"lo".ljust(16, b"\0") + bytes(24))
            assert struct.unpack_from("=i", answer, 16)[0] > 0
    finally:
        calls.close(fd)
    with pytest.raises(OSError):
        calls.getsockopt(fd, socket.SOL_SOCKET, socket.SO_TYPE, 4)  # closed: EBADF

    path = os.path.join(os.fspath(tmp_path), "s")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    with server:
        client = calls.socket(socket.AF_UNIX, socket.SOCK_DGRAM, 0)
        try:
            if sys.platform == "linux":
                address = struct.pack("=H", socket.AF_UNIX) + path.encode() + b"\0"
            else:
                encoded = path.encode() + b"\0"
                address = bytes([2 + len(encoded), socket.AF_UNIX]) + encoded
            calls.connect(client, address)
            assert calls.write(client, b"hello") == 5
            assert server.recv(10) == b"hello"
            with pytest.raises(OSError) as info:
                calls.connect(client, address[:2] + b"/nonexistent\0")
            assert info.value.errno in (errno.ENOENT, errno.EISCONN, errno.EINVAL)
        finally:
            calls.close(client)


def test_getifaddrs_walks_and_frees_the_list() -> None:
    from trio_tun.platform._posix import PosixSyscalls

    calls = PosixSyscalls()
    names = {entry.name for entry in calls.getifaddrs()}
    assert "lo" in names or "lo0" in names
    assert calls.if_nametoindex("lo" if "lo" in names else "lo0") > 0
    assert calls.getpid() == os.getpid()


def test_open_device() -> None:
    from trio_tun.platform._posix import PosixSyscalls

    calls = PosixSyscalls()
    fd = calls.open_device(os.devnull)
    try:
        assert not os.get_blocking(fd) and not os.get_inheritable(fd)
    finally:
        calls.close(fd)
    with pytest.raises(FileNotFoundError):
        calls.open_device("/nonexistent/tun")


@pytest.mark.skipif(sys.platform != "linux", reason="glibc has no sysctl()")
def test_sysctl_missing_from_glibc_is_an_error_not_a_crash() -> None:
    from trio_tun.platform._posix import PosixSyscalls

    with pytest.raises((OSError, AttributeError)):
        PosixSyscalls().sysctl((4, 17, 0, 0, 1, 0))
