"""Mutation testing of the offload reference, the stream and the engine (``nox -s mutants``).

Runs mutmut (configured in ``[tool.mutmut]`` of pyproject.toml) under a wall-clock
budget, then prints how many mutants the tests killed, per file and in total.

    python tools/mutants.py                   # a third of the mutants, 30 min budget
    python tools/mutants.py --sample 1        # every mutant (about an hour here)
    python tools/mutants.py --resume          # keep ./mutants, test what is left
    python tools/mutants.py --report          # only print the score of ./mutants
    python tools/mutants.py 'trio_tun.offload.gso*'   # only these mutants

Score = (killed + timed out) / mutants that were tested.  A mutant that no test
of the selection runs ("no tests") counts as a survivor; "not run" are mutants
outside the sample or not reached within the budget.  Every survivor is
written to mutants/survivors.txt; ``mutmut show NAME`` prints its diff.

The mutants run with ``TRIO_TUN_PURE_PYTHON=1`` (the pure-Python offload code is
what the streams call) and with Hypothesis derandomised, so two runs of the same
code give the same score.  mutmut's own progress goes to mutants/mutmut.log.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

ROOT: Final = Path(__file__).resolve().parents[1]
MUTANTS: Final = ROOT / "mutants"
LOG: Final = MUTANTS / "mutmut.log"

# mutmut's exit codes -> our buckets.  Killed: a test failed (1), pytest broke
# (3), the CPU limit hit (SIGXCPU: -24/24/152, 36/255 its own timeout) or the
# child was killed after it (-9); -11 a crash is a kill too.
KILLED: Final = {1, 3}
TIMEOUT: Final = {-24, 24, 152, 36, 255, -9, -11}
SURVIVED: Final = {0}
NO_TESTS: Final = {5, 33}
TYPE_CHECK: Final = {37}
SKIPPED: Final = {34}
# Hypothesis settings for every test the mutants run: the same examples on every
# run (reproducible scores), no shrinking, no wall-clock deadline on a loaded
# machine.  The tests' own @settings keep their max_examples.
PROFILE: Final = "trio-tun-mutants"
# All 2,546 mutants take about an hour here (half of them were done after 30
# minutes with 4 workers), so by default a deterministic third of each file's
# mutants is tested; --sample 1 tests all of them.
DEFAULT_SAMPLE: Final = 3


def _inner(argv: list[str]) -> int:
    """Run mutmut in this process (the workers fork from it, so they inherit this setup)."""
    from hypothesis import HealthCheck, Phase, settings

    settings.register_profile(
        PROFILE,
        derandomize=True,
        # A failing example kills the mutant; shrinking it would only cost time.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.load_profile(PROFILE)
    import mutmut.__main__ as mm

    os.chdir(ROOT)
    if argv and argv[0] == "--sample":
        stride, argv = int(argv[1]), argv[2:]
        argv = [*argv, *_sample(mm, stride)]
    try:
        mm.cli.main(args=argv, prog_name="mutmut", standalone_mode=False)
    except KeyboardInterrupt:
        return 130
    return 0


def _sample(mm: Any, stride: int) -> list[str]:
    """Generate the mutants as ``mutmut run`` would; every *stride*-th of each file.

    Deterministic: the mutants of a function are numbered in source order and
    the names sorted, so the same code gives the same sample.
    """
    mm.set_mutant_under_test("mutant_generation")
    Path("mutants").mkdir(exist_ok=True)
    mm.copy_src_dir()
    mm.copy_also_copy_files()
    mm.setup_source_paths()
    mm.create_mutants(2)
    names: list[str] = []
    for meta in sorted(MUTANTS.glob("src/**/*.py.meta")):
        keys = sorted(json.loads(meta.read_text())["exit_code_by_key"], key=_natural)
        names.extend(keys[::stride])
    print(f"sample: {len(names)} mutants (every {stride}th of each file)", flush=True)
    return names


def _natural(name: str) -> tuple[str, int]:
    base, _, number = name.rpartition("__mutmut_")
    return base, int(number or 0)


def _last_status() -> str:
    try:
        tail = LOG.read_bytes()[-400:].decode("utf-8", "replace")
    except OSError:
        return ""
    parts = [p.strip() for p in tail.replace("\r", "\n").split("\n") if p.strip()]
    return parts[-1] if parts else ""


def _run(names: list[str], max_children: int, budget: float, sample: int) -> tuple[float, bool]:
    """Run mutmut for at most *budget* seconds; returns (wall seconds, finished)."""
    MUTANTS.mkdir(exist_ok=True)
    inner = [sys.executable, __file__, "--inner"]
    if sample > 1 and not names:
        inner += ["--sample", str(sample)]
    cmd = [*inner, "run", "--max-children", str(max_children), *names]
    start = time.monotonic()
    with open(LOG, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = start + budget
        finished = True
        while True:
            try:
                proc.wait(timeout=min(60.0, max(0.1, deadline - time.monotonic())))
                break
            except subprocess.TimeoutExpired:
                now = time.monotonic()
                print(f"  [{now - start:6.0f} s] {_last_status()}", flush=True)
                if now >= deadline:
                    finished = False
                    print(f"  budget of {budget:.0f} s used up: stopping mutmut", flush=True)
                    # mutmut stops its workers on Ctrl-C and keeps every result so far.
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                    break
    wall = time.monotonic() - start
    if finished and proc.returncode != 0:
        print(LOG.read_text("utf-8", "replace")[-3000:])
        raise SystemExit(f"mutmut failed (exit {proc.returncode}); see {LOG}")
    return wall, finished


def _bucket(code: int | None) -> str:
    if code is None:
        return "not run"
    for name, codes in (
        ("killed", KILLED),
        ("timeout", TIMEOUT),
        ("survived", SURVIVED),
        ("no tests", NO_TESTS),
        ("type check", TYPE_CHECK),
        ("skipped", SKIPPED),
    ):
        if code in codes:
            return name
    return "suspicious"


COLUMNS: Final = (
    "killed",
    "timeout",
    "survived",
    "no tests",
    "suspicious",
    "not run",
)


def report(list_survivors: bool, also_killed: frozenset[str] = frozenset()) -> float:
    """Print the score table; return the total score in percent.

    *also_killed*: survivors that tools/check_survivors.py showed killed by
    tests added after the run (counted as killed, and said so).
    """
    metas = sorted(MUTANTS.glob("src/**/*.py.meta"))
    if not metas:
        raise SystemExit("no results under ./mutants: run without --report first")
    rows: list[tuple[str, collections.Counter[str]]] = []
    survivors: list[str] = []
    for meta in metas:
        data = json.loads(meta.read_text())
        counts: collections.Counter[str] = collections.Counter()
        for name, code in sorted(data["exit_code_by_key"].items()):
            bucket = _bucket(code)
            if name in also_killed and bucket in ("survived", "no tests"):
                bucket = "killed"
            counts[bucket] += 1
            if bucket in ("survived", "no tests", "suspicious"):
                survivors.append(f"{bucket:10} {name}")
        rows.append((str(meta.relative_to(MUTANTS))[: -len(".meta")], counts))

    def line(label: str, counts: collections.Counter[str]) -> str:
        tested = sum(counts.values()) - counts["not run"]
        dead = counts["killed"] + counts["timeout"]
        score = 100.0 * dead / tested if tested else 0.0
        cells = "".join(f"{counts[c]:>11}" for c in COLUMNS)
        return f"{label:34}{sum(counts.values()):>8}{cells}{score:>8.1f}%"

    header = f"{'file':34}{'mutants':>8}" + "".join(f"{c:>11}" for c in COLUMNS) + "   score"
    print(header)
    print("-" * len(header))
    total: collections.Counter[str] = collections.Counter()
    for path, counts in rows:
        print(line(path, counts))
        total.update(counts)
    print("-" * len(header))
    print(line("total", total))
    (MUTANTS / "survivors.txt").write_text("".join(s + "\n" for s in survivors))
    print(f"\n{len(survivors)} survivors listed in {MUTANTS / 'survivors.txt'}")
    if list_survivors:
        print("\n".join(survivors))
    tested = sum(total.values()) - total["not run"]
    return 100.0 * (total["killed"] + total["timeout"]) / tested if tested else 0.0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--inner":
        return _inner(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutant names or globs (default: all)")
    parser.add_argument("--budget", type=float, default=1800.0, help="wall seconds (30 min)")
    # The mutants' tests mostly wait (kernel round trips, and mutants that hang
    # until their timeout): two workers kept 0.36 of a core busy on average
    # here, so twice the cores.
    parser.add_argument("--max-children", type=int, default=2 * (os.cpu_count() or 2))
    parser.add_argument(
        "--sample",
        type=int,
        default=DEFAULT_SAMPLE,
        help="test every Nth mutant of each file (1: all; ignored with names)",
    )
    parser.add_argument("--resume", action="store_true", help="keep ./mutants and its results")
    parser.add_argument("--report", action="store_true", help="only print the score")
    parser.add_argument("--survivors", action="store_true", help="list every survivor")
    parser.add_argument("--nice", type=int, default=10, help="niceness (shared machine)")
    parser.add_argument(
        "--also-killed",
        type=Path,
        action="append",
        default=[],
        help="output of tools/check_survivors.py: count its KILLED mutants as killed",
    )
    args = parser.parse_args()
    os.environ["TRIO_TUN_PURE_PYTHON"] = "1"
    if not args.report:
        if args.nice:
            os.nice(args.nice)
        if not args.resume and MUTANTS.exists():
            shutil.rmtree(MUTANTS)
        wall, finished = _run(args.names, args.max_children, args.budget, args.sample)
        state = "finished" if finished else "stopped at the budget (see 'not run')"
        print(f"mutmut {state} after {wall:.0f} s wall time")
    also = frozenset(
        line.split()[1]
        for path in args.also_killed
        for line in path.read_text().splitlines()
        if line.startswith("KILLED ")
    )
    if also:
        print(f"(counting {len(also)} survivors killed by tests added since the run)")
    score = report(args.survivors, also)
    print(f"mutation score: {score:.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
