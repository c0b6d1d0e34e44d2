"""Windows: the wintun DLL, kernel32 events and the IP Helper API, as seams.

Three small interfaces cover every Windows call trio-tun makes:

* :class:`WintunApi` — the functions of ``wintun.dll`` (``wintun.h``), plus
  copying bytes out of and into ring memory;
* :class:`EventApi` — ``CreateEventW``/``SetEvent``/``CloseHandle``/
  ``WaitForMultipleObjects`` from kernel32, for waiting on the session's
  read event from a worker thread;
* :class:`IpHelperApi` — the ``iphlpapi.dll`` calls that set addresses, MTU
  and routes by interface LUID.

The real implementations (ctypes, ``WinDLL(..., use_last_error=True)``) only
exist on Windows; the tests drive the code above these seams with faithful
fakes.  The structures are ctypes definitions whose sizes and offsets the
tests compare with ``netioapi.h`` (x64).
"""

from __future__ import annotations

import ctypes
import errno
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol, TypeVar

from .._errors import TunUnavailableError

# -- error codes (winerror.h) ------------------------------------------------------

NO_ERROR: Final = 0
ERROR_FILE_NOT_FOUND: Final = 2
ERROR_ACCESS_DENIED: Final = 5
ERROR_INVALID_DATA: Final = 13
ERROR_HANDLE_EOF: Final = 38
ERROR_INVALID_PARAMETER: Final = 87
ERROR_BUFFER_OVERFLOW: Final = 111
ERROR_ALREADY_EXISTS: Final = 183
ERROR_NO_MORE_ITEMS: Final = 259
ERROR_NOT_FOUND: Final = 1168
ERROR_OBJECT_ALREADY_EXISTS: Final = 5010

WAIT_OBJECT_0: Final = 0
WAIT_TIMEOUT: Final = 258
WAIT_FAILED: Final = 0xFFFFFFFF
INFINITE: Final = 0xFFFFFFFF

# -- wintun.h ---------------------------------------------------------------------

WINTUN_MIN_RING_CAPACITY: Final = 0x20000  # 128 KiB
WINTUN_MAX_RING_CAPACITY: Final = 0x4000000  # 64 MiB
WINTUN_MAX_IP_PACKET_SIZE: Final = 0xFFFF
#: The adapter name limit (``MAX_ADAPTER_NAME`` 128, including the terminating NUL).
MAX_ADAPTER_NAME: Final = 128

# -- ws2def.h / netioapi.h -------------------------------------------------------------

AF_UNSPEC: Final = 0
AF_INET: Final = 2
AF_INET6: Final = 23
IP_DAD_STATE_PREFERRED: Final = 4  # NL_DAD_STATE IpDadStatePreferred
MIB_IPPROTO_NETMGMT: Final = 3  # NL_ROUTE_PROTOCOL: a static route

_DESCRIPTIONS: Final = {
    ERROR_FILE_NOT_FOUND: "not found",
    ERROR_ACCESS_DENIED: "access denied (Administrator rights are needed)",
    ERROR_INVALID_DATA: "invalid data",
    ERROR_HANDLE_EOF: "the adapter is terminating",
    ERROR_INVALID_PARAMETER: "invalid parameter",
    ERROR_BUFFER_OVERFLOW: "the ring is full",
    ERROR_ALREADY_EXISTS: "already exists",
    ERROR_NO_MORE_ITEMS: "no more items",
    ERROR_NOT_FOUND: "element not found",
    ERROR_OBJECT_ALREADY_EXISTS: "the object already exists",
}
_ERRNOS: Final = {
    ERROR_FILE_NOT_FOUND: errno.ENOENT,
    ERROR_ACCESS_DENIED: errno.EACCES,
    ERROR_INVALID_PARAMETER: errno.EINVAL,
    ERROR_ALREADY_EXISTS: errno.EEXIST,
    ERROR_NOT_FOUND: errno.ENOENT,
    ERROR_OBJECT_ALREADY_EXISTS: errno.EEXIST,
    ERROR_HANDLE_EOF: errno.ENXIO,
}


class WinApiError(OSError):
    """A Windows API call failed; ``code`` is its Win32 error code."""

    def __init__(self, code: int, what: str) -> None:
        description = _DESCRIPTIONS.get(code, "failed")
        super().__init__(_ERRNOS.get(code, errno.EIO), f"{what}: {description} (error {code})")
        self.code = code


# -- structures (netioapi.h, ws2ipdef.h; x64 layout) -------------------------------------


class SOCKADDR_IN(ctypes.Structure):
    _fields_ = [
        ("sin_family", ctypes.c_uint16),
        ("sin_port", ctypes.c_uint16),
        ("sin_addr", ctypes.c_uint8 * 4),
        ("sin_zero", ctypes.c_uint8 * 8),
    ]


class SOCKADDR_IN6(ctypes.Structure):
    _fields_ = [
        ("sin6_family", ctypes.c_uint16),
        ("sin6_port", ctypes.c_uint16),
        ("sin6_flowinfo", ctypes.c_uint32),
        ("sin6_addr", ctypes.c_uint8 * 16),
        ("sin6_scope_id", ctypes.c_uint32),
    ]


class SOCKADDR_INET(ctypes.Union):
    _fields_ = [
        ("Ipv4", SOCKADDR_IN),
        ("Ipv6", SOCKADDR_IN6),
        ("si_family", ctypes.c_uint16),
    ]


class MIB_UNICASTIPADDRESS_ROW(ctypes.Structure):
    _fields_ = [
        ("Address", SOCKADDR_INET),
        ("InterfaceLuid", ctypes.c_uint64),
        ("InterfaceIndex", ctypes.c_uint32),
        ("PrefixOrigin", ctypes.c_int),
        ("SuffixOrigin", ctypes.c_int),
        ("ValidLifetime", ctypes.c_uint32),
        ("PreferredLifetime", ctypes.c_uint32),
        ("OnLinkPrefixLength", ctypes.c_uint8),
        ("SkipAsSource", ctypes.c_uint8),
        ("DadState", ctypes.c_int),
        ("ScopeId", ctypes.c_uint32),
        ("CreationTimeStamp", ctypes.c_int64),
    ]


class MIB_IPINTERFACE_ROW(ctypes.Structure):
    _fields_ = [
        ("Family", ctypes.c_uint16),
        ("InterfaceLuid", ctypes.c_uint64),
        ("InterfaceIndex", ctypes.c_uint32),
        ("MaxReassemblySize", ctypes.c_uint32),
        ("InterfaceIdentifier", ctypes.c_uint64),
        ("MinRouterAdvertisementInterval", ctypes.c_uint32),
        ("MaxRouterAdvertisementInterval", ctypes.c_uint32),
        ("AdvertisingEnabled", ctypes.c_uint8),
        ("ForwardingEnabled", ctypes.c_uint8),
        ("WeakHostSend", ctypes.c_uint8),
        ("WeakHostReceive", ctypes.c_uint8),
        ("UseAutomaticMetric", ctypes.c_uint8),
        ("UseNeighborUnreachabilityDetection", ctypes.c_uint8),
        ("ManagedAddressConfigurationSupported", ctypes.c_uint8),
        ("OtherStatefulConfigurationSupported", ctypes.c_uint8),
        ("AdvertiseDefaultRoute", ctypes.c_uint8),
        ("RouterDiscoveryBehavior", ctypes.c_int),
        ("DadTransmits", ctypes.c_uint32),
        ("BaseReachableTime", ctypes.c_uint32),
        ("RetransmitTime", ctypes.c_uint32),
        ("PathMtuDiscoveryTimeout", ctypes.c_uint32),
        ("LinkLocalAddressBehavior", ctypes.c_int),
        ("LinkLocalAddressTimeout", ctypes.c_uint32),
        ("ZoneIndices", ctypes.c_uint32 * 16),
        ("SitePrefixLength", ctypes.c_uint32),
        ("Metric", ctypes.c_uint32),
        ("NlMtu", ctypes.c_uint32),
        ("Connected", ctypes.c_uint8),
        ("SupportsWakeUpPatterns", ctypes.c_uint8),
        ("SupportsNeighborDiscovery", ctypes.c_uint8),
        ("SupportsRouterDiscovery", ctypes.c_uint8),
        ("ReachableTime", ctypes.c_uint32),
        ("TransmitOffload", ctypes.c_uint8),
        ("ReceiveOffload", ctypes.c_uint8),
        ("DisableDefaultRoutes", ctypes.c_uint8),
    ]


class IP_ADDRESS_PREFIX(ctypes.Structure):
    _fields_ = [("Prefix", SOCKADDR_INET), ("PrefixLength", ctypes.c_uint8)]


class MIB_IPFORWARD_ROW2(ctypes.Structure):
    _fields_ = [
        ("InterfaceLuid", ctypes.c_uint64),
        ("InterfaceIndex", ctypes.c_uint32),
        ("DestinationPrefix", IP_ADDRESS_PREFIX),
        ("NextHop", SOCKADDR_INET),
        ("SitePrefixLength", ctypes.c_uint8),
        ("ValidLifetime", ctypes.c_uint32),
        ("PreferredLifetime", ctypes.c_uint32),
        ("Metric", ctypes.c_uint32),
        ("Protocol", ctypes.c_int),
        ("Loopback", ctypes.c_uint8),
        ("AutoconfigureAddress", ctypes.c_uint8),
        ("Publish", ctypes.c_uint8),
        ("Immortal", ctypes.c_uint8),
        ("Age", ctypes.c_uint32),
        ("Origin", ctypes.c_int),
    ]


_Row = TypeVar("_Row", MIB_UNICASTIPADDRESS_ROW, MIB_IPFORWARD_ROW2)

# -- the seams ------------------------------------------------------------------------


class WintunApi(Protocol):
    """The functions of ``wintun.dll`` trio-tun calls (handles are ints)."""

    def create_adapter(self, name: str, tunnel_type: str) -> int:
        """``WintunCreateAdapter(name, tunnel_type, NULL)``; raises :class:`WinApiError`."""

    def open_adapter(self, name: str) -> int:
        """``WintunOpenAdapter(name)``; raises :class:`WinApiError`."""

    def close_adapter(self, adapter: int) -> None:
        """``WintunCloseAdapter``: releases it and removes an adapter we created."""

    def get_adapter_luid(self, adapter: int) -> int: ...

    def get_running_driver_version(self) -> int:
        """``WintunGetRunningDriverVersion``; 0 when no driver is loaded."""

    def start_session(self, adapter: int, capacity: int) -> int:
        """``WintunStartSession``; raises :class:`WinApiError`."""

    def end_session(self, session: int) -> None: ...

    def get_read_wait_event(self, session: int) -> int:
        """The session's auto-reset read event (owned by the session: never closed by us)."""

    def receive_packet(self, session: int) -> tuple[int, int]:
        """``WintunReceivePacket``: ``(pointer, size)``, or ``(0, error code)``."""

    def release_receive_packet(self, session: int, packet: int) -> None: ...

    def allocate_send_packet(self, session: int, size: int) -> tuple[int, int]:
        """``WintunAllocateSendPacket``: ``(pointer, 0)``, or ``(0, error code)``."""

    def send_packet(self, session: int, packet: int) -> None: ...

    def copy_from(self, packet: int, size: int) -> bytes:
        """The *size* bytes at *packet* (ring memory), copied out."""

    def copy_to(self, packet: int, data: bytes | bytearray | memoryview) -> None:
        """Copy *data* into ring memory at *packet*."""


class EventApi(Protocol):
    """kernel32's event objects and waits."""

    def create_event(self, manual_reset: bool) -> int: ...

    def set_event(self, handle: int) -> None: ...

    def close_handle(self, handle: int) -> None: ...

    def wait_any(self, handles: Sequence[int], timeout_ms: int) -> int:
        """``WaitForMultipleObjects(..., bWaitAll=FALSE, ...)``: the index signalled,
        or :data:`WAIT_TIMEOUT`; raises :class:`WinApiError` on ``WAIT_FAILED``."""


class IpHelperApi(Protocol):
    """The IP Helper calls for addresses, MTU and routes (rows are ctypes structures)."""

    def initialize_unicast_ip_address_entry(self, row: MIB_UNICASTIPADDRESS_ROW) -> None: ...
    def create_unicast_ip_address_entry(self, row: MIB_UNICASTIPADDRESS_ROW) -> int: ...
    def delete_unicast_ip_address_entry(self, row: MIB_UNICASTIPADDRESS_ROW) -> int: ...

    def unicast_ip_addresses(self, family: int) -> list[MIB_UNICASTIPADDRESS_ROW]:
        """``GetUnicastIpAddressTable`` (rows copied out, table freed)."""

    def get_ip_interface_entry(self, row: MIB_IPINTERFACE_ROW) -> int: ...
    def set_ip_interface_entry(self, row: MIB_IPINTERFACE_ROW) -> int: ...
    def initialize_ip_forward_entry(self, row: MIB_IPFORWARD_ROW2) -> None: ...
    def create_ip_forward_entry2(self, row: MIB_IPFORWARD_ROW2) -> int: ...
    def delete_ip_forward_entry2(self, row: MIB_IPFORWARD_ROW2) -> int: ...

    def ip_forward_rows(self, family: int) -> list[MIB_IPFORWARD_ROW2]:
        """``GetIpForwardTable2`` (rows copied out, table freed)."""

    def convert_interface_luid_to_index(self, luid: int) -> int: ...


# -- loading wintun.dll ------------------------------------------------------------------

WINTUN_DOWNLOAD: Final = "https://www.wintun.net/"


def wintun_candidates(path: str | os.PathLike[str] | None) -> list[str]:
    """Where to look for ``wintun.dll``: *path* if given, else next to the
    application (the script, then the interpreter), then the DLL search path."""
    if path is not None:
        return [os.fspath(path)]
    found: list[str] = []
    for anchor in (sys.argv[0] if sys.argv and sys.argv[0] else None, sys.executable):
        if anchor:
            candidate = os.path.join(os.path.dirname(os.path.abspath(anchor)), "wintun.dll")
            if candidate not in found:
                found.append(candidate)
    found.append("wintun.dll")
    return found


def load_wintun(
    path: str | os.PathLike[str] | None = None,
    *,
    loader: Callable[[str], WintunApi] | None = None,
) -> WintunApi:
    """Load ``wintun.dll``, saying where to get it when it can't be found."""
    load = loader or _load_wintun_dll
    tried: list[str] = []
    for candidate in wintun_candidates(path):
        try:
            return load(candidate)
        except OSError as exc:
            tried.append(f"{candidate} ({exc.strerror or exc})")
    machine = _machine()
    raise TunUnavailableError(
        errno.ENOENT,
        "wintun.dll could not be loaded (tried: "
        + "; ".join(tried)
        + f"). Download wintun from {WINTUN_DOWNLOAD}: the zip holds bin/{machine}/wintun.dll; "
        "put it next to your application (or on the DLL search path), "
        "or pass open_tun(wintun_dll=...) with its path",
    )


def _machine() -> str:
    import platform

    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64", "i386": "x86", "i686": "x86"}.get(
        machine, machine or "amd64"
    )


def _load_wintun_dll(path: str) -> WintunApi:
    if sys.platform == "win32":
        return _WintunDll(ctypes.WinDLL(path, use_last_error=True))
    else:
        raise OSError(errno.ENOENT, "wintun.dll can only be loaded on Windows")


def default_events() -> EventApi:
    if sys.platform == "win32":
        return _Kernel32Events()
    else:
        raise NotImplementedError("kernel32 events exist only on Windows")


def default_iphelper() -> IpHelperApi:
    if sys.platform == "win32":
        return _IpHelper()
    else:
        raise NotImplementedError("the IP Helper API exists only on Windows")


# -- the real bindings (Windows only) ----------------------------------------------------

if sys.platform == "win32":
    from ctypes import wintypes

    _HANDLE = ctypes.c_void_p

    class _WintunDll:
        """``wintun.dll`` through ctypes."""

        def __init__(self, dll: ctypes.WinDLL) -> None:
            def bind(name: str, restype: object, *argtypes: object) -> Any:
                fn = getattr(dll, name)
                fn.restype = restype
                fn.argtypes = list(argtypes)
                return fn

            self._create = bind(
                "WintunCreateAdapter", _HANDLE, ctypes.c_wchar_p, ctypes.c_wchar_p, ctypes.c_void_p
            )
            self._open = bind("WintunOpenAdapter", _HANDLE, ctypes.c_wchar_p)
            self._close = bind("WintunCloseAdapter", None, _HANDLE)
            self._luid = bind(
                "WintunGetAdapterLUID", None, _HANDLE, ctypes.POINTER(ctypes.c_uint64)
            )
            self._version = bind("WintunGetRunningDriverVersion", wintypes.DWORD)
            self._start = bind("WintunStartSession", _HANDLE, _HANDLE, wintypes.DWORD)
            self._end = bind("WintunEndSession", None, _HANDLE)
            self._event = bind("WintunGetReadWaitEvent", _HANDLE, _HANDLE)
            self._receive = bind(
                "WintunReceivePacket", ctypes.c_void_p, _HANDLE, ctypes.POINTER(wintypes.DWORD)
            )
            self._release = bind("WintunReleaseReceivePacket", None, _HANDLE, ctypes.c_void_p)
            self._allocate = bind(
                "WintunAllocateSendPacket", ctypes.c_void_p, _HANDLE, wintypes.DWORD
            )
            self._send = bind("WintunSendPacket", None, _HANDLE, ctypes.c_void_p)

        def create_adapter(self, name: str, tunnel_type: str) -> int:
            handle = self._create(name, tunnel_type, None)
            if not handle:
                raise WinApiError(ctypes.get_last_error(), f"creating wintun adapter {name!r}")
            return int(handle)

        def open_adapter(self, name: str) -> int:
            handle = self._open(name)
            if not handle:
                raise WinApiError(ctypes.get_last_error(), f"opening wintun adapter {name!r}")
            return int(handle)

        def close_adapter(self, adapter: int) -> None:
            self._close(adapter)

        def get_adapter_luid(self, adapter: int) -> int:
            luid = ctypes.c_uint64()
            self._luid(adapter, ctypes.byref(luid))
            return luid.value

        def get_running_driver_version(self) -> int:
            return int(self._version())

        def start_session(self, adapter: int, capacity: int) -> int:
            handle = self._start(adapter, capacity)
            if not handle:
                raise WinApiError(ctypes.get_last_error(), "starting a wintun session")
            return int(handle)

        def end_session(self, session: int) -> None:
            self._end(session)

        def get_read_wait_event(self, session: int) -> int:
            return int(self._event(session))

        def receive_packet(self, session: int) -> tuple[int, int]:
            size = wintypes.DWORD()
            pointer = self._receive(session, ctypes.byref(size))
            if not pointer:
                return 0, ctypes.get_last_error()
            return int(pointer), int(size.value)

        def release_receive_packet(self, session: int, packet: int) -> None:
            self._release(session, packet)

        def allocate_send_packet(self, session: int, size: int) -> tuple[int, int]:
            pointer = self._allocate(session, size)
            if not pointer:
                return 0, ctypes.get_last_error()
            return int(pointer), 0

        def send_packet(self, session: int, packet: int) -> None:
            self._send(session, packet)

        def copy_from(self, packet: int, size: int) -> bytes:
            return ctypes.string_at(packet, size)

        def copy_to(self, packet: int, data: bytes | bytearray | memoryview) -> None:
            raw = bytes(data)
            ctypes.memmove(packet, raw, len(raw))

    class _Kernel32Events:
        """kernel32 events and ``WaitForMultipleObjects``."""

        def __init__(self) -> None:
            kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
            self._create = kernel32.CreateEventW
            self._create.restype = _HANDLE
            self._create.argtypes = [ctypes.c_void_p, wintypes.BOOL, wintypes.BOOL, ctypes.c_void_p]
            self._set = kernel32.SetEvent
            self._set.restype = wintypes.BOOL
            self._set.argtypes = [_HANDLE]
            self._close = kernel32.CloseHandle
            self._close.restype = wintypes.BOOL
            self._close.argtypes = [_HANDLE]
            self._wait = kernel32.WaitForMultipleObjects
            self._wait.restype = wintypes.DWORD
            self._wait.argtypes = [
                wintypes.DWORD,
                ctypes.POINTER(_HANDLE),
                wintypes.BOOL,
                wintypes.DWORD,
            ]

        def create_event(self, manual_reset: bool) -> int:
            handle = self._create(None, manual_reset, False, None)
            if not handle:
                raise WinApiError(ctypes.get_last_error(), "CreateEventW")
            return int(handle)

        def set_event(self, handle: int) -> None:
            if not self._set(handle):
                raise WinApiError(ctypes.get_last_error(), "SetEvent")

        def close_handle(self, handle: int) -> None:
            self._close(handle)

        def wait_any(self, handles: Sequence[int], timeout_ms: int) -> int:
            array = (_HANDLE * len(handles))(*handles)
            result = int(self._wait(len(handles), array, False, timeout_ms))
            if result == WAIT_FAILED:
                raise WinApiError(ctypes.get_last_error(), "WaitForMultipleObjects")
            return result - WAIT_OBJECT_0 if result < WAIT_OBJECT_0 + len(handles) else result

    class _IpHelper:
        """``iphlpapi.dll`` through ctypes."""

        def __init__(self) -> None:
            self._dll = ctypes.WinDLL("iphlpapi.dll", use_last_error=True)

        def _call(self, name: str, *args: object) -> int:
            return int(getattr(self._dll, name)(*args))

        def initialize_unicast_ip_address_entry(self, row: MIB_UNICASTIPADDRESS_ROW) -> None:
            self._dll.InitializeUnicastIpAddressEntry(ctypes.byref(row))

        def create_unicast_ip_address_entry(self, row: MIB_UNICASTIPADDRESS_ROW) -> int:
            return self._call("CreateUnicastIpAddressEntry", ctypes.byref(row))

        def delete_unicast_ip_address_entry(self, row: MIB_UNICASTIPADDRESS_ROW) -> int:
            return self._call("DeleteUnicastIpAddressEntry", ctypes.byref(row))

        def unicast_ip_addresses(self, family: int) -> list[MIB_UNICASTIPADDRESS_ROW]:
            return self._table("GetUnicastIpAddressTable", family, MIB_UNICASTIPADDRESS_ROW)

        def get_ip_interface_entry(self, row: MIB_IPINTERFACE_ROW) -> int:
            return self._call("GetIpInterfaceEntry", ctypes.byref(row))

        def set_ip_interface_entry(self, row: MIB_IPINTERFACE_ROW) -> int:
            return self._call("SetIpInterfaceEntry", ctypes.byref(row))

        def initialize_ip_forward_entry(self, row: MIB_IPFORWARD_ROW2) -> None:
            self._dll.InitializeIpForwardEntry(ctypes.byref(row))

        def create_ip_forward_entry2(self, row: MIB_IPFORWARD_ROW2) -> int:
            return self._call("CreateIpForwardEntry2", ctypes.byref(row))

        def delete_ip_forward_entry2(self, row: MIB_IPFORWARD_ROW2) -> int:
            return self._call("DeleteIpForwardEntry2", ctypes.byref(row))

        def ip_forward_rows(self, family: int) -> list[MIB_IPFORWARD_ROW2]:
            return self._table("GetIpForwardTable2", family, MIB_IPFORWARD_ROW2)

        def _table(self, name: str, family: int, row_type: type[_Row]) -> list[_Row]:
            table = ctypes.c_void_p()
            code = self._call(name, family, ctypes.byref(table))
            if code != NO_ERROR:
                raise WinApiError(code, name)
            try:
                base = int(table.value or 0)
                count = ctypes.c_uint32.from_address(base).value
                # MIB_*_TABLE: ULONG NumEntries, then the rows, 8-byte aligned.
                rows = (row_type * count).from_address(base + 8)
                return [row_type.from_buffer_copy(row) for row in rows]
            finally:
                self._dll.FreeMibTable(table)

        def convert_interface_luid_to_index(self, luid: int) -> int:
            index = ctypes.c_uint32()
            value = ctypes.c_uint64(luid)
            code = self._call(
                "ConvertInterfaceLuidToIndex", ctypes.byref(value), ctypes.byref(index)
            )
            if code != NO_ERROR:
                raise WinApiError(code, "ConvertInterfaceLuidToIndex")
            return index.value
