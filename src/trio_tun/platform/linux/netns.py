"""Network-namespace plumbing: per-thread ``setns`` without leaking a switch.

Linux binds a network namespace to each *thread*, and every socket (netlink
included) or ``/dev/net/tun`` file is created in the namespace of the thread
that opens it.  Worker threads are pooled and outlive any one call, so code that
must act in a namespace switches the current thread in, does its work, and
switches back before anything else can run on that thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, Final

from ..._errors import TunPermissionError

CLONE_NEWNET: Final = 0x40000000

if sys.platform == "win32":
    # Imported everywhere (through _config), used only on Linux.
    _libc: Any = None
    _O_RDONLY_CLOEXEC: Final = os.O_RDONLY
else:
    # CDLL(None): the already-loaded libc; find_library would run ldconfig,
    # and importing the library must never start a process.
    _libc = ctypes.CDLL(None, use_errno=True)
    _O_RDONLY_CLOEXEC: Final = os.O_RDONLY | os.O_CLOEXEC


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


NEEDS_SYS_ADMIN: Final = (
    "entering another network namespace (setns) needs CAP_SYS_ADMIN as well as "
    "CAP_NET_ADMIN (run as root, or grant both capabilities)"
)


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace open as *fd*."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise TunPermissionError(err, NEEDS_SYS_ADMIN)
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def unshare_net() -> None:
    """Give the calling thread a brand-new, empty network namespace."""
    _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")


def open_current() -> int:
    """Return a new close-on-exec fd referring to this thread's network namespace."""
    return os.open("/proc/thread-self/ns/net", _O_RDONLY_CLOEXEC)


def same_namespace(fd_a: int, fd_b: int) -> bool:
    """Whether two namespace fds refer to the same namespace."""
    a = os.fstat(fd_a)
    b = os.fstat(fd_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_path(path: str) -> int:
    """Open the namespace file at *path* (close-on-exec)."""
    try:
        return os.open(path, _O_RDONLY_CLOEXEC)
    except FileNotFoundError:
        raise ValueError(f"network namespace {path!r} does not exist") from None


def open_target(netns: str | int) -> int:
    """A new fd on the namespace ``open_tun(netns=...)`` names (a path or an fd of the caller's).

    A closed fd is refused here, before any device exists; whether the fd is a
    network namespace at all, and whether we may enter it, :func:`entered` says.
    """
    if isinstance(netns, str):
        return open_path(netns)
    try:
        # os.dup makes the copy close-on-exec (PEP 446); the caller keeps theirs.
        return os.dup(netns)
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise ValueError(
                f"netns={netns} is not an open file descriptor (pass an fd open on a "
                "network namespace, e.g. os.open('/run/netns/NAME', os.O_RDONLY))"
            ) from None
        raise


@contextlib.contextmanager
def entered(fd: int | None, purpose: str = "") -> Iterator[None]:
    """Run the body with this thread inside namespace *fd* (``None``: stay put).

    *purpose* starts the message should entering fail (no privilege, not a
    namespace), so the user learns which of their requests it was.

    The body must not yield to other code that shares this thread (no awaits):
    anything scheduled meanwhile would silently run in the wrong namespace.
    """
    if fd is None:
        yield
        return
    home = open_current()
    if same_namespace(fd, home):
        # setns() needs CAP_SYS_ADMIN even when it would change nothing; an
        # unprivileged owner of a persistent device must not need it.
        os.close(home)
        yield
        return
    try:
        try:
            setns(fd)
        except TunPermissionError as exc:
            if not purpose:
                raise
            raise TunPermissionError(exc.errno, f"{purpose}: {exc.strerror}") from None
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            raise ValueError(
                f"{purpose or 'fd ' + str(fd)}: that is not a network namespace (setns "
                "refused it); netns= takes a name from 'ip netns', a path such as "
                "/proc/PID/ns/net, or an fd open on one"
            ) from None
        try:
            yield
        finally:
            # Failing to get back would leave a pooled thread in a foreign
            # namespace and silently misdirect unrelated later work.
            setns(home)
    finally:
        os.close(home)


def new_namespace() -> int:
    """Create an anonymous network namespace and return an fd that keeps it alive.

    The namespace is made on a short-lived thread so the caller's own thread
    never leaves its namespace; it disappears, with every device in it, when
    the last fd (and the last process inside it) is gone.
    """
    result: list[int] = []
    failure: list[BaseException] = []

    def worker() -> None:
        try:
            unshare_net()
            result.append(open_current())
        except BaseException as exc:  # handed back to the caller below
            failure.append(exc)

    thread = threading.Thread(target=worker, name="trio-tun-netns")
    thread.start()
    thread.join()
    if failure:
        exc = failure[0]
        if isinstance(exc, OSError) and exc.errno == errno.EPERM:
            raise PermissionError(
                errno.EPERM,
                "creating a network namespace needs CAP_SYS_ADMIN (run as root)",
            ) from exc
        raise exc
    return result[0]
