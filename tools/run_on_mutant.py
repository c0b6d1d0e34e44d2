"""Run pytest against one mutant of the last ``nox -s mutants`` run (or none).

    python tools/run_on_mutant.py trio_tun.engine.x_flow_hash__mutmut_2 tests/test_mutants_engine.py

imports trio_tun from ./mutants/src with that mutant switched on, so a new test
can be seen failing on the mutant it was written for.  ``-`` as the name runs
the unmutated code through the same trampolines.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    name, args = sys.argv[1], sys.argv[2:]
    src = ROOT / "mutants" / "src"
    if not src.is_dir():
        raise SystemExit("no ./mutants: run tools/mutants.py (nox -s mutants) first")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])),
        "MUTANT_UNDER_TEST": "" if name == "-" else name,
        "TRIO_TUN_PURE_PYTHON": "1",
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *args]
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    raise SystemExit(main())
