from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from trio_tun import offload
from trio_tun.offload import gro, gso
from trio_tun.offload import gso as reference
from trio_tun.offload import reference as py

SRC = str(Path(offload.__file__).resolve().parents[2])


def test_public_names() -> None:
    for name in offload.__all__:
        assert hasattr(offload, name), name
    assert issubclass(offload.MalformedPacket, ValueError)
    assert issubclass(offload.GroTable, gro.GroTable)


def test_reference_modules_stay_reachable() -> None:
    assert reference.split is gso.split is py.split
    assert py.GroTable is gro.GroTable
    assert py.coalesce is gro.coalesce


def test_implementation_choice() -> None:
    try:
        from trio_tun.offload import _speedups  # noqa: F401
    except ImportError:
        built = False
    else:
        built = True
    if not built or os.environ.get("TRIO_TUN_PURE_PYTHON") == "1":
        assert offload.implementation == "python"
        assert offload.split is py.split
    else:
        assert offload.implementation == "speedups"
        assert offload.split is not py.split


def _implementation_with(env_value: str) -> str:
    env = {**os.environ, "TRIO_TUN_PURE_PYTHON": env_value}
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    code = (
        "import trio_tun.offload as o, trio_tun.offload.reference as p;"
        "assert (o.implementation == 'python') == (o.checksum is p.checksum);"
        "print(o.implementation)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_pure_python_env_var() -> None:
    assert _implementation_with("1") == "python"
    try:
        from trio_tun.offload import _speedups  # noqa: F401
    except ImportError:
        assert _implementation_with("0") == "python"
    else:
        assert _implementation_with("0") == "speedups"
