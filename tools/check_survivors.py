"""Which surviving mutants do some tests kill?  (After ``nox -s mutants``.)

    python tools/check_survivors.py tests/test_mutants_engine.py [more tests ...]

runs the given tests once per survivor listed in mutants/survivors.txt (or in
``--names FILE``), each in a child forked from one warmed-up process with that
mutant switched on, and prints KILLED or SURVIVED per mutant and the counts.
This is how a new test is shown to fail on the mutants it was written for
without a whole mutation run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[1]
SRC: Final = ROOT / "mutants" / "src"


def _run_child(name: str, tests: list[str], limit: float) -> int:
    pid = os.fork()
    if pid == 0:
        import pytest

        os.environ["MUTANT_UNDER_TEST"] = name
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        # A mutant that hangs is killed by the parent after *limit* seconds.
        code = pytest.main(["-q", "-x", "-p", "no:cacheprovider", *tests])
        os._exit(int(code))
    deadline = time.monotonic() + limit
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return -9
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tests", nargs="+")
    parser.add_argument("--names", type=Path, default=ROOT / "mutants" / "survivors.txt")
    parser.add_argument("--match", default="", help="only names containing this")
    parser.add_argument("--limit", type=float, default=60.0, help="seconds per mutant")
    args = parser.parse_args()
    if not SRC.is_dir():
        raise SystemExit("no ./mutants: run tools/mutants.py (nox -s mutants) first")
    os.environ["TRIO_TUN_PURE_PYTHON"] = "1"
    os.environ["MUTANT_UNDER_TEST"] = ""
    sys.path.insert(0, str(SRC))
    os.chdir(ROOT)
    names = [
        line.split()[-1]
        for line in args.names.read_text().splitlines()
        if line.strip() and args.match in line
    ]
    import pytest

    # Warm up: import everything once, and check the tests pass unmutated.
    if pytest.main(["-q", "-p", "no:cacheprovider", *args.tests]) != 0:
        raise SystemExit("the tests fail without any mutant: fix them first")
    import trio_tun

    assert Path(trio_tun.__file__).is_relative_to(SRC), trio_tun.__file__
    killed = 0
    for name in names:
        code = _run_child(name, args.tests, args.limit)
        verdict = "SURVIVED" if code == 0 else "KILLED"
        killed += code != 0
        print(f"{verdict:9} {name}" + ("" if code in (0, 1) else f"  (exit {code})"), flush=True)
    print(f"{killed} of {len(names)} killed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
