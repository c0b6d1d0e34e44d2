"""The malloc hint: glibc keeps a batch's freed memory instead of handing it back.

Every check runs in a fresh interpreter, because the hint changes the process
for good.  The probe allocates 6 MB in 2,000-byte blocks (a large batch's
segments) with glibc's own malloc, frees them, and reports how far the heap's
end (``sbrk(0)``) moved back: what glibc gave back to the kernel.  6 MB,
because importing trio and trio_tun already lets glibc adapt to about 1.6 MB
(unmarshalling a large module frees a block big enough to get its own mmap).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from trio_tun import _malloc
from trio_tun.testing import NetNamespace

pytestmark = [
    pytest.mark.skipif(not _malloc._is_glibc(), reason="the hint is glibc's"),
    pytest.mark.skipif(
        any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ),
        reason="malloc is tuned by this environment; the probe needs glibc's defaults",
    ),
]

PROBE = textwrap.dedent(
    """
    import ctypes, json, sys

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.sbrk.restype = ctypes.c_void_p
    libc.sbrk.argtypes = [ctypes.c_ssize_t]
    BLOCKS = [0] * 3000  # made first, so that it does not sit among the blocks

    def given_back():
        for i in range(len(BLOCKS)):
            BLOCKS[i] = libc.malloc(2000)
        end = libc.sbrk(0)
        for block in BLOCKS:
            libc.free(block)
        return end - libc.sbrk(0)

    report = {}
    """
)


def _run(body: str, env: dict[str, str] | None = None, ns: NetNamespace | None = None) -> dict:
    script = PROBE + textwrap.dedent(body) + "\nprint(json.dumps(report))\n"
    argv = [sys.executable, "-c", script]
    if ns is not None:
        done = ns.run(argv, timeout=120)
    else:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, check=True, env=env
        )
    return dict(json.loads(done.stdout.splitlines()[-1]))


def test_hint_keeps_a_batch_worth_of_freed_memory() -> None:
    report = _run(
        """
        from trio_tun import _malloc
        report["before"] = given_back()
        report["given"] = _malloc.adapt_malloc()
        report["after"] = [given_back() for _ in range(3)]
        """
    )
    # Without the hint glibc returns most of the 6 MB every time.
    assert report["before"] > 3_000_000
    assert report["given"] is True
    assert report["after"] == [0, 0, 0]


def test_threshold_fixed_by_the_environment_is_left_alone() -> None:
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": str(128 * 1024)}
    report = _run(
        """
        from trio_tun import _malloc
        report["given"] = _malloc.adapt_malloc()
        report["after"] = given_back()
        """,
        env=env,
    )
    assert report["given"] is True
    # glibc stopped adapting when the variable fixed the threshold.
    assert report["after"] > 3_000_000


@pytest.mark.kernel
def test_opening_an_offload_device_gives_the_hint_and_a_plain_one_does_not(
    netns: NetNamespace,
) -> None:
    report = _run(
        """
        import trio, trio_tun

        async def open_one(offload):
            async with trio_tun.open_tun(addresses=["10.9.0.1/24"], offload=offload) as dev:
                report.setdefault("vnet_hdr", []).append(dev.vnet_hdr)

        report["imported"] = given_back()
        trio.run(open_one, False)
        report["plain"] = given_back()
        trio.run(open_one, True)
        report["offload"] = given_back()
        """,
        ns=netns,
    )
    assert report["vnet_hdr"] == [False, True]
    assert report["imported"] > 3_000_000
    assert report["plain"] > 3_000_000
    assert report["offload"] == 0


@pytest.mark.kernel
def test_opening_a_gro_socket_gives_the_hint(netns: NetNamespace) -> None:
    report = _run(
        """
        import trio, trio_tun

        async def open_one(gro):
            async with trio_tun.open_udp("127.0.0.1", gro=gro) as udp:
                report.setdefault("gro", []).append(udp.gro)

        report["imported"] = given_back()
        trio.run(open_one, False)
        report["plain"] = given_back()
        trio.run(open_one, True)
        report["gro"].append(given_back())
        """,
        ns=netns,
    )
    assert report["gro"][:2] == [False, True]
    assert report["imported"] > 3_000_000
    assert report["plain"] > 3_000_000
    assert report["gro"][2] == 0
