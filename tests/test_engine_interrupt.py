"""Ctrl-C twice while an engine flushes: the flush ends early and Trio stays consistent.

Trio delivers KeyboardInterrupt even inside shielded scopes, so a second
Ctrl-C lands inside the engine's shielded flush on the ``async with`` path.
The engine must still exit its task group (before the fix, Trio reported
"Nursery stack corrupted" instead of the KeyboardInterrupt).  Runs in a child
process inside the test's namespace, since the child sends SIGINT to itself.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from trio_tun.testing import NetNamespace

pytestmark = [pytest.mark.kernel]

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import trio
    import trio_tun

    GRACE = 3.0
    PACKET = bytes.fromhex("4500001c00004000401100000a4d00010a4d0002") + bytes(8)

    async def main():
        async with trio_tun.open_tun("kint0", addresses=["10.77.0.1/24"]) as dev:
            async def slow_send_batch(packets):
                await trio.sleep(60)  # a writer that can't finish within the grace
            dev.send_batch = slow_send_batch

            def ctrl_c_twice():
                for delay in sys.argv[1:]:
                    time.sleep(float(delay))
                    os.kill(os.getpid(), signal.SIGINT)

            threading.Thread(target=ctrl_c_twice, daemon=True).start()
            started = time.monotonic()
            try:
                async with dev.engine(grace=GRACE) as engine:
                    await engine.send_batch([PACKET])
                    await trio.sleep(30)
            finally:
                s = engine.statistics()
                print("elapsed", round(time.monotonic() - started, 2))
                print("accounting", s.accepted, s.written, s.dropped, s.in_flight, flush=True)

    try:
        trio.run(main)
    except BaseException as exc:
        leaves = getattr(exc, "exceptions", [exc])
        print("raised", [type(e).__name__ for e in leaves], flush=True)
    """
)


def run_script(ns: NetNamespace, *delays: str) -> str:
    proc = ns.popen(
        [sys.executable, "-c", SCRIPT, *delays], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        out, _ = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return out.decode(errors="replace")


def test_second_ctrl_c_ends_the_flush_without_corrupting_trio(netns: NetNamespace) -> None:
    out = run_script(netns, "0.5", "0.5")
    assert "corrupted" not in out, out
    assert "raised ['KeyboardInterrupt']" in out, out
    assert "accounting 1 0 1 0" in out, out
    elapsed = float(out.split("elapsed ")[1].split()[0])
    assert elapsed < 2.0, out  # cut short, not the whole 3 s grace


def test_single_ctrl_c_waits_for_the_grace(netns: NetNamespace) -> None:
    out = run_script(netns, "0.5")
    assert "raised ['KeyboardInterrupt']" in out, out
    assert "accounting 1 0 1 0" in out, out
    elapsed = float(out.split("elapsed ")[1].split()[0])
    assert elapsed >= 2.5, out
