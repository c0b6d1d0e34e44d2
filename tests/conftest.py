"""Shared fixtures.

Safety first: when running as root, the whole test process moves into a
private network namespace before any test (or thread) starts, so nothing a
test does can reach the machine's own interfaces.  Each kernel test then gets a
fresh namespace of its own through the ``netns`` fixture, which the test's
thread enters and which is destroyed afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from trio_tun.platform.linux import netns as _netns
from trio_tun.testing import NetNamespace

IS_ROOT = os.geteuid() == 0
HAVE_TUN = os.path.exists("/dev/net/tun")


def pytest_configure(config: pytest.Config) -> None:
    if IS_ROOT:
        # Single-threaded at this point, so every later thread inherits it.
        _netns.unshare_net()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT and HAVE_TUN:
        return
    reason = "needs root and /dev/net/tun" if HAVE_TUN else "needs /dev/net/tun"
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def netns() -> Iterator[NetNamespace]:
    """A fresh network namespace that the test's thread is inside for its duration."""
    ns = NetNamespace.create()
    home = _netns.open_current()
    try:
        _netns.setns(ns.fileno())
        try:
            yield ns
        finally:
            _netns.setns(home)
    finally:
        os.close(home)
        ns.close()


@pytest.fixture
def two_namespaces() -> Iterator[tuple[NetNamespace, NetNamespace]]:
    """Two fresh namespaces (left, right) for topologies with a forwarder between them.

    The test's thread stays where it is; devices are placed with ``netns=``.
    """
    a = NetNamespace.create()
    b = NetNamespace.create()
    try:
        yield a, b
    finally:
        b.close()
        a.close()
