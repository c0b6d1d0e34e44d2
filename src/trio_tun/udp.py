"""open_udp: a UDP socket as a batched datagram stream, the other half of a VPN data path.

The stream follows the same contracts as :class:`~trio_tun.TunStream`:

* the socket is non-blocking and ours to close; ``aclose()`` wakes any task
  blocked on it with ``ClosedResourceError``;
* every read happens only after readiness, with no checkpoint between the
  read and the return, so a cancelled receive loses nothing: datagrams a read
  brought beyond what the call returns stay queued for the next call;
* a send only waits between system calls, so a cancelled ``send_batch`` has
  written a prefix of whole datagrams;
* one task at a time per direction (``BusyResourceError``);
* every call checks for cancellation but yields to the scheduler only every
  ``SCHEDULE_EVERY`` calls or when it had to wait.

Throughput comes from moving many datagrams per system call.  On Linux a run
of equal-sized datagrams to one destination goes out as one ``sendmsg`` with a
``UDP_SEGMENT`` control message (the kernel, or the NIC, cuts it up), and with
``UDP_GRO`` one ``recvmsg`` brings up to 64 datagrams of a flow glued
together.  Where segmentation can't merge (different sizes or destinations),
the compiled ``sendmmsg``/``recvmmsg`` still batch the system calls; without
the compiled module a loop of ``sendmsg``/``recvmsg_into`` does the same job.

ICMP errors that the kernel reports on a later call (``ECONNREFUSED`` while
the peer isn't listening yet, unreachable hosts and networks) are soft: they
are counted, the datagrams of a failed send are counted as dropped, and the
stream carries on, as a tunnel whose peer starts a second later must.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import ModuleType
from typing import Any, ClassVar, Final, Generic, Literal, TypeVar, overload

import anyio
import attrs
import sniffio
import trio
from anyio.abc import SocketAttribute, UnreliableObjectStream

from ._config import resolve_netns
from ._errors import BrokenResourceError, ClosedResourceError
from ._malloc import adapt_malloc
from ._stream import ConflictGuard as _Guard
from ._wait import Backend, YieldBudget, current_backend
from .offload import batch_sizes, gso_runs, split_gro
from .offload import udp as _gso
from .platform.linux import netns as _netns

# A plain bool, not a sys.platform check, so every platform's type check
# sees the code behind it.
_LINUX: Final[bool] = sys.platform.startswith("linux")


def _load_speedups() -> ModuleType | None:
    if not _LINUX:
        return None  # sendmmsg/recvmmsg are Linux's
    try:
        from .offload import _speedups
    except ImportError:  # built without the extension: the Python loop below
        return None
    return _speedups if hasattr(_speedups, "sendmmsg") else None


_speedups = _load_speedups()

__all__ = [
    "MAX_DATAGRAM",
    "Address",
    "Syscalls",
    "UdpStatistics",
    "UdpStream",
    "UnconnectedUdpStream",
    "open_udp",
]

#: Messages one receive round asks the kernel for (each up to 64 datagrams with GRO).
RECV_MESSAGES: Final = 8
#: Room per received message: the largest UDP payload, or one GRO read.
RECV_BUFFER: Final = 65536
#: Room for a message's ancillary data (the GRO cmsg needs 20 bytes; more shows intruders).
ANC_BUFFER: Final = 64
#: Messages one sendmmsg takes at most (the kernel's UIO_MAXIOV).
SEND_MESSAGES: Final = 1024
#: The largest UDP payload one datagram can carry (IPv6 without jumbograms).
MAX_DATAGRAM: Final = 65535 - 8
_DESTINATION_CACHE: Final = 1024

#: A host and port, as anyio's UDP sockets report them (IPv6 scope as ``"addr%scope"``).
Address = tuple[str, int]
_Buffer = bytes | bytearray | memoryview
#: What one receive system call reports per message: as ``socket.recvmsg_into``.
Received = tuple[int, list[tuple[int, int, bytes]], int, Any]

# Errors an ICMP message (or a link going down) leaves on a socket: about one
# packet or one moment, never about the socket itself.
_SOFT_ERRNOS: Final = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,  # Windows' name for an ICMP port unreachable on UDP
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        getattr(errno, "ENONET", errno.EHOSTDOWN),
    }
)
# Errors with which the kernel refuses one message but not the socket.
_DROP_ERRNOS: Final = frozenset(
    {errno.EMSGSIZE, errno.ENOBUFS, errno.EINVAL, errno.EPERM, errno.EACCES, errno.EIO}
)
# Errors with which a segmented send says "no segmentation here".
_NO_GSO_ERRNOS: Final = frozenset({errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP})
_NO_OPTION_ERRNOS: Final = frozenset({errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP})
_SOCKADDR_IN: Final = struct.Struct("=H2s4s8x")
_SOCKADDR_IN6: Final = struct.Struct("=H2s4s16sI")
_PORT: Final = struct.Struct("!H")
_FLOWINFO: Final = struct.Struct("!I")


@attrs.define(slots=True)
class UdpStatistics:
    """One UDP stream's counters since it was opened (``statistics()`` hands out a copy).

    ``reads``/``writes`` count system calls; ``rx_messages``/``tx_messages``
    count the kernel's messages (with GRO/GSO one message holds up to 64
    datagrams), so ``tx_datagrams / tx_messages`` shows how well segmentation
    batches and ``rx_datagrams / rx_messages`` how well GRO does (the latter
    counts datagrams handed to the application, so it lags while some are
    queued).
    """

    #: Receive system calls that brought data (recvmmsg, or recvmsg without it).
    reads: int = 0
    #: Send system calls that moved data (sendmmsg, or sendmsg without it).
    writes: int = 0
    #: Messages received (one GRO message is many datagrams).
    rx_messages: int = 0
    #: Messages sent (one segmented message is many datagrams).
    tx_messages: int = 0
    #: Datagrams handed to the application, and their bytes.
    rx_datagrams: int = 0
    rx_bytes: int = 0
    #: Datagrams the kernel accepted, and their bytes.
    tx_datagrams: int = 0
    tx_bytes: int = 0
    #: Messages sent with ``UDP_SEGMENT`` carrying more than one datagram.
    gso_writes: int = 0
    #: Messages received holding more than one datagram (``UDP_GRO``).
    gro_reads: int = 0
    #: Datagrams the kernel refused, or whose send met a soft error.
    tx_dropped: int = 0
    #: Datagrams already read but discarded because the stream was closed.
    rx_dropped: int = 0
    #: Malformed or unknown ancillary data items and truncated messages (a
    #: message whose segment size can't be trusted is dropped with them).
    rx_malformed: int = 0
    #: ICMP-reported errors (ECONNREFUSED, unreachable, ...): counted, never raised.
    soft_errors: int = 0
    #: Times segmentation was given up on (kernel without it, or a device refusing it).
    gso_fallbacks: int = 0
    #: Times ``UDP_GRO`` could not be switched on.
    gro_fallbacks: int = 0

    def snapshot(self) -> UdpStatistics:
        """A copy, so that the caller's view stays still while traffic flows."""
        return attrs.evolve(self)


@attrs.frozen
class _Destination:
    """A send address in both forms: for ``socket.sendmsg`` and, packed, for ``sendmmsg``."""

    address: tuple[Any, ...]
    sockaddr: bytes


#: One message to send: its buffers (one datagram, or a run to segment), the
#: segment size (0: none) and the destination (None: the connected peer).
Message = tuple[list[_Buffer], int, _Destination | None]


class Syscalls:
    """The system calls of a UDP stream, in one replaceable place.

    This is the pure-Python implementation (a loop of ``sendmsg`` /
    ``recvmsg_into``); the compiled one batches each loop into one
    ``sendmmsg`` / ``recvmmsg``.  Tests substitute a subclass (through
    ``trio_tun.udp._SYSCALLS``) to make the kernel appear to lack a feature.
    """

    #: Whether one call is one system call (sendmmsg/recvmmsg) or a loop of them.
    batched: ClassVar[bool] = False

    def setsockopt(self, sock: socket.socket, level: int, option: int, value: int) -> None:
        sock.setsockopt(level, option, value)

    def send_messages(self, sock: socket.socket, messages: Sequence[Message]) -> int:
        """Send a prefix of *messages*; return its length.

        Raises:
            OSError: the first message failed (``BlockingIOError``: no room);
                an error after that ends the prefix and recurs, or not, on
                the next call, as with ``sendmmsg``.
        """
        sent = 0
        for buffers, gso_size, destination in messages:
            try:
                if sys.platform == "win32":
                    data = b"".join(buffers)
                    if destination is None:
                        sock.send(data)
                    else:
                        sock.sendto(data, destination.address)
                else:
                    ancillary = [_gso.gso_cmsg(gso_size)] if gso_size else []
                    if destination is None:
                        sock.sendmsg(buffers, ancillary)
                    else:
                        sock.sendmsg(buffers, ancillary, 0, destination.address)
            except OSError:
                if sent:
                    return sent
                raise
            sent += 1
        return sent

    def receive_messages(
        self,
        sock: socket.socket,
        buffer: bytearray,
        bufsize: int,
        count: int,
        ancbufsize: int,
        want_address: bool,
    ) -> list[Received]:
        """Receive up to *count* messages, message *i* into ``buffer[i*bufsize:]``.

        Raises:
            OSError: nothing was received (``BlockingIOError``: nothing queued).
        """
        view = memoryview(buffer)
        out: list[Received] = []
        for i in range(count):
            part = view[i * bufsize : (i + 1) * bufsize]
            try:
                if sys.platform == "win32":
                    nbytes, address = sock.recvfrom_into(part)
                    ancdata: list[tuple[int, int, bytes]] = []
                    flags = 0
                else:
                    nbytes, ancdata, flags, address = sock.recvmsg_into([part], ancbufsize)
            except OSError:
                if out:
                    # What recvmmsg does too: the batch ends at the first error.
                    break
                raise
            out.append((nbytes, ancdata, flags, address if want_address else None))
        return out


class _CompiledSyscalls(Syscalls):
    """``sendmmsg`` / ``recvmmsg`` from the compiled speedups (Linux)."""

    batched = True

    def send_messages(self, sock: socket.socket, messages: Sequence[Message]) -> int:
        assert _speedups is not None
        sent: int = _speedups.sendmmsg(
            sock.fileno(),
            [(b, g, None if d is None else d.sockaddr) for b, g, d in messages],
        )
        return sent

    def receive_messages(
        self,
        sock: socket.socket,
        buffer: bytearray,
        bufsize: int,
        count: int,
        ancbufsize: int,
        want_address: bool,
    ) -> list[Received]:
        assert _speedups is not None
        received: list[Received] = _speedups.recvmmsg(
            sock.fileno(), buffer, bufsize, count, ancbufsize, want_address
        )
        return received


PYTHON_SYSCALLS: Final = Syscalls()
#: The compiled syscalls, or None where the extension (or sendmmsg) is missing.
COMPILED_SYSCALLS: Final = None if _speedups is None else _CompiledSyscalls()
# Read when a stream is opened: the tests' seam.
_SYSCALLS: Syscalls = COMPILED_SYSCALLS or PYTHON_SYSCALLS


def _convert_address(address: Any) -> Address:
    # anyio's convention: IPv6 addresses as (host, port), the scope folded into the host.
    if len(address) == 4:
        host, port, _flowinfo, scope_id = address
        if scope_id:
            return f"{host.split('%')[0]}%{scope_id}", port
        return host, port
    return address[0], address[1]


def _split_scope(host: str) -> tuple[str, int]:
    if "%" not in host:
        return host, 0
    host, scope = host.split("%", 1)
    return host, int(scope) if scope.isdigit() else socket.if_nametoindex(scope)


def _destination(family: int, host: str, port: int) -> _Destination:
    """Pack a numeric destination for a socket of *family* (IPv4 mapped on dual-stack)."""
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, not {port}")
    bare, scope = _split_scope(host)
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        raise ValueError(f"destination host must be an IP address, not {host!r}") from None
    if family == socket.AF_INET:
        if ip.version != 4:
            raise ValueError(f"can't send to {host} from an IPv4 socket")
        return _Destination(
            (str(ip), port),
            _SOCKADDR_IN.pack(socket.AF_INET, _PORT.pack(port), ip.packed),
        )
    if ip.version == 4:
        ip = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + ip.packed)
    return _Destination(
        (str(ip), port, 0, scope),
        _SOCKADDR_IN6.pack(socket.AF_INET6, _PORT.pack(port), _FLOWINFO.pack(0), ip.packed, scope),
    )


def _notify_closing(fd: int) -> None:
    try:
        backend = current_backend()
    except sniffio.AsyncLibraryNotFoundError:
        # Closed from synchronous code: no task can be waiting on the fd.
        return
    backend.notify_closing(fd)


_T = TypeVar("_T")


class _UdpBase(Generic[_T]):
    """The machinery shared by the connected and unconnected streams."""

    _want_address: ClassVar[bool]

    def __init__(
        self,
        sock: socket.socket,
        *,
        syscalls: Syscalls,
        gso: bool,
        gro: bool,
        counters: UdpStatistics,
    ) -> None:
        sock.setblocking(False)
        self._sock: socket.socket | None = sock
        self._fd = sock.fileno()
        self._family = sock.family
        self._syscalls = syscalls
        self._gso = gso
        # A segmented send has worked on this socket: later EINVALs are about
        # one run (e.g. a segment above the path MTU), not a missing feature.
        self._gso_proven = False
        self._gro = gro
        # Segment sizes above this were refused (above the path MTU): sent unsegmented.
        self._gso_size_limit = MAX_DATAGRAM
        self._max_gso_bytes = _gso.max_gso_bytes(sock.family == socket.AF_INET6)
        self._counters = counters
        self._backend: Backend | None = None
        self._receive_guard = _Guard("receiving")
        self._send_guard = _Guard("sending")
        self._receive_budget = YieldBudget()
        self._send_budget = YieldBudget()
        self._pending: deque[_T] = deque()
        # Payload bytes in _pending, known per message when it is read, so that
        # taking the whole queue (the usual case) needs no pass over the datagrams.
        self._pending_bytes = 0
        self._buffer = bytearray(RECV_BUFFER * RECV_MESSAGES)
        self._view = memoryview(self._buffer)
        self._destinations: dict[tuple[str, int], _Destination] = {}

    # -- introspection -------------------------------------------------

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed)."""
        return self._fd

    @property
    def closed(self) -> bool:
        return self._sock is None

    @property
    def gso(self) -> bool:
        """Whether sends are segmented with ``UDP_SEGMENT`` (False after a fallback)."""
        return self._gso

    @property
    def gro(self) -> bool:
        """Whether ``UDP_GRO`` is on for this socket."""
        return self._gro

    @property
    def batched_syscalls(self) -> bool:
        """Whether ``sendmmsg``/``recvmmsg`` are used (False: a Python loop)."""
        return self._syscalls.batched

    @property
    def counters(self) -> UdpStatistics:
        """The live counters (read-only by convention); :meth:`statistics` for a snapshot."""
        return self._counters

    def statistics(self) -> UdpStatistics:
        """Counters kept by trio-tun for this stream (see :class:`UdpStatistics`)."""
        return self._counters.snapshot()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock = self._sock
        if sock is None:
            return {}
        attributes: dict[Any, Callable[[], Any]] = {
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: lambda: _convert_address(sock.getsockname()),
            SocketAttribute.local_port: lambda: sock.getsockname()[1],
            SocketAttribute.raw_socket: lambda: sock,
        }
        try:
            peer = _convert_address(sock.getpeername())
        except OSError:
            return attributes
        attributes[SocketAttribute.remote_address] = lambda: peer
        attributes[SocketAttribute.remote_port] = lambda: peer[1]
        return attributes

    # -- plumbing ------------------------------------------------------

    def _get_backend(self) -> Backend:
        backend = self._backend
        if backend is None:
            backend = self._backend = current_backend()
        return backend

    def _check_open(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            raise ClosedResourceError("this stream was closed")
        return sock

    def _io_error(self, exc: OSError, doing: str) -> Exception:
        if self._sock is None or exc.errno == errno.EBADF:
            return ClosedResourceError("this stream was closed")
        return BrokenResourceError(f"{doing} failed: {os.strerror(exc.errno or 0)}")

    async def _wait(self, readable: bool) -> None:
        backend = self._get_backend()
        self._check_open()
        try:
            if readable:
                await backend.wait_readable(self._fd)
            else:
                await backend.wait_writable(self._fd)
        except (trio.ClosedResourceError, anyio.ClosedResourceError):
            raise ClosedResourceError("another task closed this stream") from None
        # Waiting went through the scheduler: the amortised yield is paid.
        if readable:
            self._receive_budget.waited()
        else:
            self._send_budget.waited()

    def _entry_checkpoint(self, receiving: bool) -> Awaitable[None]:
        # Not a coroutine: the caller awaits the backend's checkpoint directly.
        budget = self._receive_budget if receiving else self._send_budget
        return budget.checkpoint(self._get_backend())

    def _resolve(self, address: tuple[str, int]) -> _Destination:
        cache = self._destinations
        try:
            return cache[address]
        except KeyError:
            pass
        except TypeError:
            raise TypeError(f"destination must be a (host, port) tuple, not {address!r}") from None
        if len(address) < 2:
            raise TypeError(f"destination must be a (host, port) tuple, not {address!r}")
        destination = _destination(self._family, address[0], address[1])
        if len(cache) >= _DESTINATION_CACHE:
            cache.clear()
        cache[address] = destination
        return destination

    # -- reading -------------------------------------------------------

    def _store(self, datagram: bytes, address: Any) -> None:
        raise NotImplementedError

    def _store_many(self, datagrams: list[bytes], address: Any) -> None:
        raise NotImplementedError

    def _fill(self) -> None:
        """One receive round (one recvmmsg, or a loop of recvmsg) onto the pending queue."""
        sock = self._check_open()
        syscalls = self._syscalls
        counters = self._counters
        # Soft errors are reported one per call; a few in a row must not hide
        # data queued behind them, nor make us spin.
        for _ in range(8):
            try:
                messages = syscalls.receive_messages(
                    sock, self._buffer, RECV_BUFFER, RECV_MESSAGES, ANC_BUFFER, self._want_address
                )
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _SOFT_ERRNOS:
                    counters.soft_errors += 1
                    continue
                raise self._io_error(exc, "receiving") from None
            break
        else:
            return
        counters.reads += 1 if syscalls.batched else len(messages)
        counters.rx_messages += len(messages)
        view = self._view
        for i, (nbytes, ancdata, flags, address) in enumerate(messages):
            if ancdata or flags:
                gso_size, bad = _gso.parse_gro_cmsgs(ancdata, flags)
                counters.rx_malformed += bad
                if gso_size == _gso.GRO_MALFORMED:
                    continue
            else:
                gso_size = 0
            start = i * RECV_BUFFER
            payload = view[start : start + nbytes]
            self._pending_bytes += len(payload)
            if 0 < gso_size < nbytes:
                counters.gro_reads += 1
                self._store_many(split_gro(payload, gso_size), address)
            else:
                self._store(bytes(payload), address)

    def _take(self, count: int | None) -> list[_T]:
        pending = self._pending
        if count is None or count >= len(pending):
            out = list(pending)
            pending.clear()
            size, self._pending_bytes = self._pending_bytes, 0
        else:
            out = [pending.popleft() for _ in range(count)]
            size = self._size(out)
            self._pending_bytes -= size
        counters = self._counters
        counters.rx_datagrams += len(out)
        counters.rx_bytes += size
        return out

    @staticmethod
    def _size(items: list[_T]) -> int:
        raise NotImplementedError

    async def _receive_batch(self, max_datagrams: int | None) -> list[_T]:
        if max_datagrams is not None and max_datagrams < 1:
            raise ValueError(f"max_datagrams must be at least 1, not {max_datagrams}")
        with self._receive_guard:
            await self._entry_checkpoint(True)
            while True:
                if not self._pending:
                    self._fill()
                if self._pending:
                    return self._take(max_datagrams)
                await self._wait(readable=True)

    # -- writing -------------------------------------------------------

    @staticmethod
    def _check_datagram(datagram: _Buffer) -> None:
        if len(datagram) > MAX_DATAGRAM:
            raise ValueError(
                f"datagram of {len(datagram)} bytes is larger than the {MAX_DATAGRAM}-byte limit"
            )

    def _plan(
        self, datagrams: list[_Buffer], destination: _Destination | None, into: list[Message]
    ) -> None:
        if self._gso and len(datagrams) > 1:
            limit = self._gso_size_limit
            for size, run in gso_runs(datagrams, _gso.MAX_SEGMENTS, self._max_gso_bytes):
                if len(run) == 1:
                    into.append((run, 0, destination))
                elif size <= limit:
                    into.append((run, size, destination))
                else:
                    into.extend(([datagram], 0, destination) for datagram in run)
        else:
            into.extend(([datagram], 0, destination) for datagram in datagrams)

    def _give_up_gso(self, messages: list[Message], start: int) -> None:
        """Stop segmenting on this socket; re-plan *messages* from *start* unsegmented."""
        self._gso = False
        self._counters.gso_fallbacks += 1
        messages[start:] = [
            ([datagram], 0, destination)
            for buffers, _gso_size, destination in messages[start:]
            for datagram in buffers
        ]

    def _refused(self, exc: OSError, messages: list[Message], i: int) -> int:
        """Deal with the kernel refusing ``messages[i]``; returns the next index to send."""
        code = exc.errno
        buffers, gso_size, destination = messages[i]
        counters = self._counters
        if gso_size and (code in _NO_GSO_ERRNOS or (code == errno.EINVAL and not self._gso_proven)):
            # The kernel lacks UDP_SEGMENT, or the egress device can't take it:
            # resend everything from here unsegmented, and stop segmenting.
            self._give_up_gso(messages, i)
            return i
        if gso_size and code in (errno.EINVAL, errno.EMSGSIZE):
            # Segmentation works, but not for this run: its segment size is
            # above the path MTU (EMSGSIZE) or the kernel dislikes it (EINVAL).
            # Resend just this run unsegmented, and don't segment this size again.
            self._gso_size_limit = min(self._gso_size_limit, gso_size - 1)
            messages[i : i + 1] = [([datagram], 0, destination) for datagram in buffers]
            return i
        if code in _SOFT_ERRNOS:
            counters.soft_errors += 1
        elif code not in _DROP_ERRNOS:
            raise self._io_error(exc, "sending") from None
        counters.tx_dropped += len(buffers)
        return i + 1

    async def _send_messages(self, messages: list[Message]) -> None:
        syscalls = self._syscalls
        counters = self._counters
        i = 0
        while i < len(messages):
            sock = self._check_open()
            chunk = (
                messages[i : i + SEND_MESSAGES] if i or len(messages) > SEND_MESSAGES else messages
            )
            try:
                sent = syscalls.send_messages(sock, chunk)
            except BlockingIOError:
                await self._wait(readable=False)
                continue
            except OSError as exc:
                i = self._refused(exc, messages, i)
                continue
            counters.writes += 1 if syscalls.batched else sent
            counters.tx_messages += sent
            for buffers, gso_size, _destination in chunk[:sent]:
                segments = len(buffers)
                counters.tx_datagrams += segments
                if gso_size and segments > 1:
                    # A run is all gso_size but its last: no pass over it needed.
                    counters.tx_bytes += gso_size * (segments - 1) + len(buffers[-1])
                    counters.gso_writes += 1
                    self._gso_proven = True
                else:
                    counters.tx_bytes += sum(map(len, buffers))
            i += sent

    # -- closing -------------------------------------------------------

    def close(self) -> None:
        """Close the socket now (synchronous twin of ``aclose``).

        Tasks blocked on this stream are woken with ``ClosedResourceError``.
        """
        sock = self._sock
        if sock is None:
            return
        self._sock = None
        fd, self._fd = self._fd, -1
        try:
            _notify_closing(fd)
        finally:
            sock.close()
            self._counters.rx_dropped += len(self._pending)
            self._pending.clear()
            self._pending_bytes = 0

    async def aclose(self) -> None:
        """Close the stream; idempotent.  Always a checkpoint."""
        self.close()
        await self._get_backend().checkpoint()


class UdpStream(_UdpBase[bytes], UnreliableObjectStream[bytes]):
    """A connected UDP socket as a datagram stream (see :func:`open_udp`).

    Items are the datagrams' payloads.  Only datagrams from the connected
    peer are received.  Typed attributes: anyio's :class:`~anyio.abc.SocketAttribute`.
    """

    _want_address = False

    def _store(self, datagram: bytes, address: Any) -> None:
        self._pending.append(datagram)

    def _store_many(self, datagrams: list[bytes], address: Any) -> None:
        self._pending.extend(datagrams)

    @staticmethod
    def _size(items: list[bytes]) -> int:
        return batch_sizes(items)[2]

    async def receive(self) -> bytes:
        """Receive one datagram.

        Raises:
            ClosedResourceError: the stream was closed, before or during the call.
            BrokenResourceError: the socket failed in a way that isn't about one packet.
            BusyResourceError: another task is receiving on this stream.
        """
        return (await self._receive_batch(1))[0]

    async def receive_batch(self, max_datagrams: int | None = None) -> list[bytes]:
        """Receive a batch of datagrams for the price of one checkpoint.

        Waits for the first datagram, then returns what one receive round
        brought (up to ``RECV_MESSAGES`` messages of up to 64 datagrams each
        with GRO).  With *max_datagrams* the batch holds at most that many;
        the rest stays queued for the next call, none is lost, and neither is
        anything a cancelled call had read.

        Raises:
            ValueError: *max_datagrams* is less than 1.
            ClosedResourceError: the stream was closed, before or during the call.
            BrokenResourceError: the socket failed in a way that isn't about one packet.
            BusyResourceError: another task is receiving on this stream.
        """
        return await self._receive_batch(max_datagrams)

    async def send(self, item: _Buffer) -> None:
        """Send one datagram to the connected peer.

        A datagram the kernel refuses, or whose send meets an ICMP-reported
        error, is counted as dropped (see :meth:`statistics`), as a network
        would drop it.

        Raises:
            ValueError: the datagram is larger than ``MAX_DATAGRAM``.
            ClosedResourceError: the stream was closed, before or during the call.
            BrokenResourceError: the socket failed in a way that isn't about one packet.
            BusyResourceError: another task is sending on this stream.
        """
        await self.send_batch((item,))

    async def send_batch(self, datagrams: Iterable[_Buffer]) -> None:
        """Send several datagrams to the connected peer, in order.

        Runs of equal-sized datagrams go out as one segmented ``sendmsg``
        each, the rest in batched system calls.  If cancelled while waiting
        for room, a prefix of whole datagrams has been sent.

        Raises:
            ValueError: a datagram is larger than ``MAX_DATAGRAM`` (nothing was sent).
            ClosedResourceError: the stream was closed, before or during the call.
            BrokenResourceError: the socket failed in a way that isn't about one packet.
            BusyResourceError: another task is sending on this stream.
        """
        batch = list(datagrams)
        # One pass in C: this is per datagram, on the hot path.
        if batch_sizes(batch)[1] > MAX_DATAGRAM:
            for datagram in batch:
                self._check_datagram(datagram)
        with self._send_guard:
            await self._entry_checkpoint(False)
            if not batch:
                return
            messages: list[Message] = []
            self._plan(batch, None, messages)
            await self._send_messages(messages)


class UnconnectedUdpStream(
    _UdpBase[tuple[bytes, Address]], UnreliableObjectStream[tuple[bytes, Address]]
):
    """An unconnected UDP socket as a stream of ``(datagram, (host, port))`` items.

    Like anyio's ``UDPSocket``: ``receive`` reports the sender, ``send`` takes
    ``(data, (host, port))``.  Destinations must be IP addresses; on a
    dual-stack socket IPv4 destinations are mapped for you.
    """

    _want_address = True

    def _store(self, datagram: bytes, address: Any) -> None:
        self._pending.append((datagram, _convert_address(address)))

    def _store_many(self, datagrams: list[bytes], address: Any) -> None:
        sender = _convert_address(address)
        self._pending.extend([(datagram, sender) for datagram in datagrams])

    @staticmethod
    def _size(items: list[tuple[bytes, Address]]) -> int:
        return sum(len(datagram) for datagram, _ in items)

    async def receive(self) -> tuple[bytes, Address]:
        """Receive one datagram and its sender's address.

        Raises:
            ClosedResourceError: the stream was closed, before or during the call.
            BrokenResourceError: the socket failed in a way that isn't about one packet.
            BusyResourceError: another task is receiving on this stream.
        """
        return (await self._receive_batch(1))[0]

    async def receive_batch(self, max_datagrams: int | None = None) -> list[tuple[bytes, Address]]:
        """Receive ``(datagram, sender)`` items for the price of one checkpoint.

        As :meth:`UdpStream.receive_batch`.

        Raises:
            ValueError: *max_datagrams* is less than 1.
            ClosedResourceError: the stream was closed, before or during the call.
            BrokenResourceError: the socket failed in a way that isn't about one packet.
            BusyResourceError: another task is receiving on this stream.
        """
        return await self._receive_batch(max_datagrams)

    async def send(self, item: tuple[_Buffer, tuple[str, int]]) -> None:
        """Send one ``(data, (host, port))`` item.

        Raises:
            ValueError: the datagram is too large or the host is not an IP
                address of this socket's family.
            ClosedResourceError: the stream was closed, before or during the call.
            BrokenResourceError: the socket failed in a way that isn't about one packet.
            BusyResourceError: another task is sending on this stream.
        """
        data, destination = item
        await self.send_batch((data,), destination)

    async def send_batch(self, datagrams: Iterable[_Buffer], destination: tuple[str, int]) -> None:
        """Send several datagrams to one destination, segmented where possible.

        If cancelled while waiting for room, a prefix of whole datagrams has been sent.

        Raises:
            ValueError: a datagram is too large or the host is not an IP
                address of this socket's family (nothing was sent).
            ClosedResourceError: the stream was closed, before or during the call.
            BrokenResourceError: the socket failed in a way that isn't about one packet.
            BusyResourceError: another task is sending on this stream.
        """
        await self.send_many([(datagram, destination) for datagram in datagrams])

    async def send_many(self, items: Iterable[tuple[_Buffer, tuple[str, int]]]) -> None:
        """Send ``(data, (host, port))`` items, e.g. a :meth:`receive_batch` result, in order.

        Consecutive items for one destination are segmented together where
        possible; all of it goes out in as few system calls as the kernel allows.

        Raises:
            ValueError: a datagram is too large or a host is not an IP
                address of this socket's family (nothing was sent).
            ClosedResourceError: the stream was closed, before or during the call.
            BrokenResourceError: the socket failed in a way that isn't about one packet.
            BusyResourceError: another task is sending on this stream.
        """
        messages: list[Message] = []
        group: list[_Buffer] = []
        current: _Destination | None = None
        for data, address in items:
            self._check_datagram(data)
            destination = self._resolve(address)
            if destination is not current and group:
                self._plan(group, current, messages)
                group = []
            current = destination
            group.append(data)
        if group:
            self._plan(group, current, messages)
        with self._send_guard:
            await self._entry_checkpoint(False)
            if messages:
                await self._send_messages(messages)


# -- opening -------------------------------------------------------------------

_Mode = bool | Literal["auto"]


async def _ip_literal(host: str, port: int, family: int) -> str:
    """*host* as an IP address, resolving names (off the event loop) if need be."""
    try:
        ipaddress.ip_address(_split_scope(host)[0] if "%" in host else host)
    except ValueError:
        infos = await anyio.getaddrinfo(host, port, family=family, type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(errno.EADDRNOTAVAIL, f"{host!r} has no address") from None
        return str(infos[0][4][0])
    return host


def _family_of(host: str) -> int:
    bare = _split_scope(host)[0] if "%" in host else host
    return socket.AF_INET6 if ipaddress.ip_address(bare).version == 6 else socket.AF_INET


def _switch_on(
    sock: socket.socket, syscalls: Syscalls, option: int, mode: _Mode, what: str
) -> tuple[bool, bool]:
    """Try to enable a UDP offload option: (enabled, fell back)."""
    if mode is False:
        return False, False
    if not _LINUX:
        if mode is True:
            raise OSError(errno.ENOPROTOOPT, f"{what} is Linux-only")
        return False, False
    try:
        # UDP_SEGMENT 0 only probes: the size comes with each send.
        syscalls.setsockopt(sock, _gso.SOL_UDP, option, 1 if option == _gso.UDP_GRO else 0)
    except OSError as exc:
        if exc.errno not in _NO_OPTION_ERRNOS:
            raise
        if mode is True:
            raise OSError(exc.errno, f"the kernel does not offer {what}") from exc
        return False, True
    return True, False


def _make_socket(family: int, netns: str | os.PathLike[str] | int | None) -> socket.socket:
    if netns is None:
        return socket.socket(family, socket.SOCK_DGRAM)
    if not _LINUX:
        raise ValueError("netns= is Linux-only")
    if isinstance(netns, bool):
        raise TypeError("netns must be a name, a path or an fd")
    if isinstance(netns, int):
        with _netns.entered(netns):
            return socket.socket(family, socket.SOCK_DGRAM)
    fd = _netns.open_path(resolve_netns(netns))
    try:
        # A socket lives in the namespace it was created in, whatever the
        # thread does next; bind and connect then act inside it.
        with _netns.entered(fd):
            return socket.socket(family, socket.SOCK_DGRAM)
    finally:
        os.close(fd)


@overload
def open_udp(
    local_host: str | None = None,
    local_port: int = 0,
    *,
    remote_host: str,
    remote_port: int,
    family: int = socket.AF_UNSPEC,
    reuse_port: bool = False,
    buffer_size: int | None = None,
    netns: str | os.PathLike[str] | int | None = None,
    gso: _Mode = "auto",
    gro: _Mode = "auto",
) -> AbstractAsyncContextManager[UdpStream]: ...


@overload
def open_udp(
    local_host: str | None = None,
    local_port: int = 0,
    *,
    remote_host: None = None,
    remote_port: None = None,
    family: int = socket.AF_UNSPEC,
    reuse_port: bool = False,
    buffer_size: int | None = None,
    netns: str | os.PathLike[str] | int | None = None,
    gso: _Mode = "auto",
    gro: _Mode = "auto",
) -> AbstractAsyncContextManager[UnconnectedUdpStream]: ...


def open_udp(
    local_host: str | None = None,
    local_port: int = 0,
    *,
    remote_host: str | None = None,
    remote_port: int | None = None,
    family: int = socket.AF_UNSPEC,
    reuse_port: bool = False,
    buffer_size: int | None = None,
    netns: str | os.PathLike[str] | int | None = None,
    gso: _Mode = "auto",
    gro: _Mode = "auto",
) -> AbstractAsyncContextManager[UdpStream | UnconnectedUdpStream]:
    """Open a UDP socket as a batched datagram stream; closed when the block is left.

    .. code-block:: python

       async with trio_tun.open_udp(local_host="10.98.0.1", local_port=51820,
                                    remote_host="10.98.0.2", remote_port=51820) as udp:
           datagrams = await udp.receive_batch()
           await udp.send_batch(datagrams)

    With *remote_host* the socket is connected and the stream is a
    :class:`UdpStream` of payloads; without, an :class:`UnconnectedUdpStream`
    of ``(payload, (host, port))`` items.

    Args:
        local_host: Address to bind (default: the wildcard of the family).
            ``"::"`` makes a dual-stack socket that also speaks IPv4.
        local_port: Port to bind; 0 lets the kernel pick one (see
            ``stream.extra(SocketAttribute.local_port)``).
        remote_host: The peer's address (or a name, resolved once).
        remote_port: The peer's port; required with *remote_host*.
        family: ``AF_INET`` or ``AF_INET6``; by default taken from the hosts,
            IPv4 when neither is given.
        reuse_port: Set ``SO_REUSEPORT`` so several sockets (e.g. one per
            worker of a multi-queue engine) share the port.
        buffer_size: Receive and send buffer sizes in bytes.  A fast peer's
            burst overflows the default receive buffer before Python reads it;
            as root, Linux's ``SO_RCVBUFFORCE``/``SO_SNDBUFFORCE`` pass the
            system's ``rmem_max``/``wmem_max``, otherwise they cap the size.
        netns: Create the socket in this network namespace (a name from ``ip
            netns``, a path or an open fd; Linux, needs ``CAP_SYS_ADMIN``).
            One process can hold endpoints in several namespaces.
        gso: Segment sends with ``UDP_SEGMENT``: ``"auto"`` when the kernel
            offers it, ``True`` to insist (``OSError`` otherwise), ``False`` never.
        gro: Coalesce receives with ``UDP_GRO``, likewise.  When it is on,
            glibc's malloc gets the same once-per-process hint as a device
            with offload (see :func:`trio_tun.open_tun`).

    Raises:
        ValueError: inconsistent arguments (a port out of range, a remote
            port without a host, an IPv6 peer for an IPv4 socket, ...), or a
            *netns* that does not exist.
        OSError: creating, binding or connecting the socket failed, or
            ``gso=True``/``gro=True`` and the kernel lacks the feature.
    """
    if (remote_host is None) != (remote_port is None):
        raise ValueError("remote_host and remote_port go together")
    if not 0 <= local_port < 65536:
        raise ValueError(f"local_port must be in 0..65535, not {local_port}")
    if remote_port is not None and not 0 < remote_port < 65536:
        raise ValueError(f"remote_port must be in 1..65535, not {remote_port}")
    if family not in (socket.AF_UNSPEC, socket.AF_INET, socket.AF_INET6):
        raise ValueError("family must be AF_INET or AF_INET6")
    if buffer_size is not None and (isinstance(buffer_size, bool) or buffer_size < 1):
        raise ValueError(f"buffer_size must be a positive number of bytes, not {buffer_size!r}")
    return _open_udp(
        local_host,
        local_port,
        remote_host,
        remote_port,
        family,
        reuse_port,
        buffer_size,
        netns,
        gso,
        gro,
    )


# Linux's SO_RCVBUFFORCE / SO_SNDBUFFORCE (the socket module does not name them).
_FORCED_BUFFERS: Final = ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF))


def _set_buffers(sock: socket.socket, size: int) -> None:
    forced = sys.platform == "linux"
    for force, plain in _FORCED_BUFFERS:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force if forced else plain, size)
        except OSError:
            if not forced:
                raise
            # Without CAP_NET_ADMIN: the size, capped by the system.
            sock.setsockopt(socket.SOL_SOCKET, plain, size)


@asynccontextmanager
async def _open_udp(
    local_host: str | None,
    local_port: int,
    remote_host: str | None,
    remote_port: int | None,
    family: int,
    reuse_port: bool,
    buffer_size: int | None,
    netns: str | os.PathLike[str] | int | None,
    gso: _Mode,
    gro: _Mode,
) -> AsyncIterator[UdpStream | UnconnectedUdpStream]:
    if local_host is not None:
        local_host = await _ip_literal(local_host, local_port, family)
    if remote_host is not None:
        assert remote_port is not None
        hint = family
        if hint == socket.AF_UNSPEC and local_host is not None and local_host != "::":
            hint = _family_of(local_host)
        remote_host = await _ip_literal(remote_host, remote_port, hint)
    if family == socket.AF_UNSPEC:
        if local_host is not None:
            family = _family_of(local_host)
        elif remote_host is not None:
            family = _family_of(remote_host)
        else:
            family = socket.AF_INET
    wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
    bind_host = wildcard if local_host is None else local_host
    if family == socket.AF_INET and _family_of(bind_host) != socket.AF_INET:
        raise ValueError(f"can't bind {bind_host} with an IPv4 socket")

    syscalls = _SYSCALLS
    counters = UdpStatistics()
    sock = _make_socket(family, netns)
    try:
        if family == socket.AF_INET6:
            # Dual-stack exactly when bound to the wildcard: "::" means "any".
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(bind_host != "::"))
        if reuse_port:
            option = getattr(socket, "SO_REUSEPORT", None)
            if option is None:
                raise ValueError("reuse_port is not available on this system")
            sock.setsockopt(socket.SOL_SOCKET, option, 1)
        if buffer_size is not None:
            _set_buffers(sock, buffer_size)
        host, scope = _split_scope(bind_host)
        sock.bind((host, local_port) if family == socket.AF_INET else (host, local_port, 0, scope))
        gso_on, gso_fell_back = _switch_on(sock, syscalls, _gso.UDP_SEGMENT, gso, "UDP_SEGMENT")
        gro_on, gro_fell_back = _switch_on(sock, syscalls, _gso.UDP_GRO, gro, "UDP_GRO")
        counters.gso_fallbacks += gso_fell_back
        counters.gro_fallbacks += gro_fell_back
        if gro_on:
            # Every GRO message is split into up to 64 datagram objects, freed
            # a batch at a time: the same pattern as a TUN with offload.
            adapt_malloc()
        stream: UdpStream | UnconnectedUdpStream
        if remote_host is not None:
            assert remote_port is not None
            sock.connect(_destination(family, remote_host, remote_port).address)
            stream = UdpStream(sock, syscalls=syscalls, gso=gso_on, gro=gro_on, counters=counters)
        else:
            stream = UnconnectedUdpStream(
                sock, syscalls=syscalls, gso=gso_on, gro=gro_on, counters=counters
            )
    except BaseException:
        sock.close()
        raise
    try:
        yield stream
    finally:
        stream.close()
