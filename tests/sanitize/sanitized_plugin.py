"""pytest plugin (``-p sanitized_plugin``): refuse to run unless the sanitized build is in use.

The offload tests pass with the in-place build or with no build at all (the
pure-Python fallback), so without this check a sanitizer run could test the
wrong module and still pass.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sanbuild import is_sanitized


def _check() -> str:
    from trio_tun import offload
    from trio_tun.offload import _accel, _speedups

    want = Path(os.environ["TRIO_TUN_SANITIZED_SO"]).resolve()
    got = Path(str(_speedups.__file__)).resolve()
    assert got == want, f"imported {got}, not the sanitized build {want}"
    assert is_sanitized(got), f"{got} has no sanitizer instrumentation"
    # The public API is the compiled one, not the pure-Python fallback.
    assert offload.checksum is _speedups.checksum
    assert offload.split_with_header is _accel.split_with_header is _speedups.split_with_header
    assert offload.split_gro is _accel.split_gro and offload.gso_runs is _accel.gso_runs
    # The frame loops the ports use are the compiled ones too.
    from trio_tun import _ports

    assert _ports._read_frames is _speedups.read_frames
    assert _ports._write_frames is _speedups.write_frames
    return str(got)


def pytest_configure(config: pytest.Config) -> None:
    _check()


def pytest_report_header(config: pytest.Config) -> str:
    return f"trio_tun.offload._speedups: {_check()} (ASan + UBSan + SanitizerCoverage)"
