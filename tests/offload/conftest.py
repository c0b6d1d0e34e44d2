from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# Run straight from a checkout too: the offload layer needs no installation.
if importlib.util.find_spec("trio_tun") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import types

import pytest

from trio_tun.offload import gro
from trio_tun.offload import reference as py

try:
    from trio_tun.offload import _accel, _speedups
except ImportError:  # not built: only the reference is tested
    _accel = None  # type: ignore[assignment]
    _speedups = None  # type: ignore[assignment]

#: What a split packet may be: bytes, or the speedups' bytes subclass for the
#: segments of a super-packet (never a view of somebody else's buffer).
PACKET_TYPES: tuple[type, ...] = (bytes,) if _speedups is None else (bytes, _speedups.Segment)

# Under TRIO_TUN_PURE_PYTHON=1 the package sets its ``_accel`` attribute to
# None, which ``from ... import _accel`` returns without an ImportError.
needs_speedups = pytest.mark.skipif(
    _accel is None or _speedups is None,
    reason="_speedups extension not built (or TRIO_TUN_PURE_PYTHON=1)",
)

PYTHON = types.SimpleNamespace(
    name="python",
    checksum=py.checksum,
    ones_complement_sum=py.ones_complement_sum,
    split=py.split,
    split_fields=py.split_fields,
    split_with_header=py.split_with_header,
    GroTable=py.GroTable,
    coalesce=py.coalesce,
    parse=gro.parse,
    build=gro.build,
    batch_sizes=py.batch_sizes,
)
SPEEDUPS = (
    None
    if _accel is None
    else types.SimpleNamespace(
        name="speedups",
        checksum=_accel.checksum,
        ones_complement_sum=_accel.ones_complement_sum,
        split=_accel.split,
        split_fields=_accel.split_fields,
        split_with_header=_accel.split_with_header,
        GroTable=_accel.GroTable,
        coalesce=_accel.coalesce,
        parse=_speedups.gro_parse,
        build=_speedups.gro_build,
        batch_sizes=_accel.batch_sizes,
    )
)


@pytest.fixture(
    scope="session",
    params=[
        pytest.param(PYTHON, id="python"),
        pytest.param(SPEEDUPS, id="speedups", marks=needs_speedups),
    ],
)
def impl(request: pytest.FixtureRequest) -> types.SimpleNamespace:
    """Each implementation of the offload hot paths in turn."""
    assert request.param is not None
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def speedups() -> types.SimpleNamespace:
    """The compiled implementation; skips when it was not built."""
    if SPEEDUPS is None:
        pytest.skip("_speedups extension not built")
    return SPEEDUPS
