"""The compiled sendmmsg/recvmmsg against their pure-Python twins, through a real kernel.

Whatever one side sends, the other must receive the same datagrams, with the
same lengths, ancillary data, flags and addresses, whichever implementation
does either half.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_tun.offload.udp import SOL_UDP, UDP_GRO
from trio_tun.testing import NetNamespace
from trio_tun.udp import COMPILED_SYSCALLS, PYTHON_SYSCALLS, Message, Syscalls, _destination

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(COMPILED_SYSCALLS is None, reason="sendmmsg/recvmmsg not built"),
]

BUFSIZE = 65536
COUNT = 8


@pytest.fixture(scope="module")
def sockets() -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """One sender and two receivers (the second with UDP_GRO) on a namespace's loopback."""
    ns = NetNamespace.create()
    try:
        sender = ns.socket(socket.AF_INET6)
        sender.bind(("::1", 0))
        receivers = [ns.socket(socket.AF_INET6) for _ in range(2)]
        for r in receivers:
            r.bind(("::1", 0))
            r.setblocking(False)
        receivers[1].setsockopt(SOL_UDP, UDP_GRO, 1)
        sender.setblocking(False)
        yield sender, receivers
        for s in (sender, *receivers):
            s.close()
    finally:
        ns.close()


def drain(impl: Syscalls, sock: socket.socket) -> list[tuple[bytes, object, int, object]]:
    buffer = bytearray(BUFSIZE * COUNT)
    out: list[tuple[bytes, object, int, object]] = []
    for _ in range(1000):
        try:
            got = impl.receive_messages(sock, buffer, BUFSIZE, COUNT, 64, True)
        except BlockingIOError:
            return out
        for i, (n, anc, flags, addr) in enumerate(got):
            out.append((bytes(buffer[i * BUFSIZE : i * BUFSIZE + n]), anc, flags, addr))
    raise AssertionError("the socket never ran dry")


message = st.tuples(
    st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=5),
    st.booleans(),  # segment it?
    st.integers(0, 1),  # which receiver
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(message, min_size=1, max_size=12), st.sampled_from(["cc", "cp", "pc", "pp"]))
def test_compiled_and_python_agree(
    sockets: tuple[socket.socket, list[socket.socket]],
    batch: list[tuple[list[bytes], bool, int]],
    combo: str,
) -> None:
    assert COMPILED_SYSCALLS is not None
    impls = {"c": COMPILED_SYSCALLS, "p": PYTHON_SYSCALLS}
    sending, receiving = impls[combo[0]], impls[combo[1]]
    sender, receivers = sockets
    messages: list[Message] = []
    expected: list[list[bytes]] = [[], []]
    for drawn, segment, which in batch:
        buffers = drawn
        port = receivers[which].getsockname()[1]
        dest = _destination(socket.AF_INET6, "::1", port)
        gso = 0
        if segment and len(buffers) > 1:
            # A valid run: all the size of the first, the last perhaps shorter.
            size = max(1, len(buffers[0]))
            buffers = [b.ljust(size, b"=")[:size] for b in buffers[:-1]] + [
                (buffers[-1] or b"-")[:size]
            ]
            gso = size
            expected[which].extend(buffers)
        else:
            expected[which].append(b"".join(buffers))
        messages.append((list(buffers), gso, dest))
    sent = 0
    while sent < len(messages):
        sent += sending.send_messages(sender, messages[sent:])

    me = sender.getsockname()
    for which, r in enumerate(receivers):
        got = drain(receiving, r)
        datagrams: list[bytes] = []
        for data, anc, flags, addr in got:
            assert flags == 0
            assert addr == (me[0], me[1], 0, 0)
            if anc:
                [(level, kind, value)] = anc  # type: ignore[misc]
                assert (level, kind) == (SOL_UDP, UDP_GRO)
                size = int.from_bytes(value, "little")
                datagrams.extend(data[i : i + size] for i in range(0, len(data), size))
            else:
                datagrams.append(data)
        assert datagrams == expected[which]


def test_errors_are_oserrors(sockets: tuple[socket.socket, list[socket.socket]]) -> None:
    assert COMPILED_SYSCALLS is not None
    _, receivers = sockets
    for impl in (COMPILED_SYSCALLS, PYTHON_SYSCALLS):
        with pytest.raises(BlockingIOError):
            impl.receive_messages(receivers[0], bytearray(BUFSIZE), BUFSIZE, 1, 64, False)
    unconnected = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        for impl in (COMPILED_SYSCALLS, PYTHON_SYSCALLS):
            with pytest.raises(OSError) as info:
                impl.send_messages(unconnected, [([b"x"], 0, None)])
            assert info.value.errno in (89, 107)  # EDESTADDRREQ / ENOTCONN
    finally:
        unconnected.close()
