"""Run the atheris harnesses of ``harnesses.py``, each for a bounded number of iterations.

``nox -s fuzz`` runs ``python tests/fuzz/run.py``; by hand::

    python tests/fuzz/run.py                       # every harness, 100,000 runs each
    python tests/fuzz/run.py --runs 20000 gso_split speedups

Each harness runs in a process of its own (libFuzzer ends the process when
it is done), seeded with ``tests/fuzz/corpus/<harness>/``.  New inputs that
libFuzzer finds go to a scratch directory, so the committed corpus only
changes when someone copies an input in on purpose.  Python code of
``trio_tun`` and of the harnesses is instrumented for coverage; the compiled
``_speedups`` module is not here (it is fuzzed through its differential
harness against the instrumented pure-Python reference).  ``nox -s sanitize``
(tests/sanitize/) runs these same harnesses against a clang build of it with
ASan, UBSan and ``-fsanitize=fuzzer-no-link``, its C edges guiding libFuzzer.

At the end a table gives, per harness, the iterations run, the coverage
(libFuzzer's ``cov``: edges reached, and ``ft``: features), the corpus size
and the time.  Exit status: 0 when every harness ran its iterations without
a finding.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_RUNS = 100_000
#: Seconds one input may take before libFuzzer calls it a hang.
INPUT_TIMEOUT = 30
_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+)(?: corp: (\d+)/(\S+))?")
_DONE = re.compile(r"^Done (\d+) (?:runs )?in (\d+) second")


def fuzz_one(name: str, libfuzzer_args: list[str]) -> None:
    """In the child process: instrument, then hand control to libFuzzer."""
    import atheris

    sys.path.insert(0, str(HERE.parent))
    with atheris.instrument_imports(include=["trio_tun", "fuzz"]):
        from fuzz import harnesses
    atheris.Setup([sys.argv[0], *libfuzzer_args], harnesses.HARNESSES[name])
    atheris.Fuzz()


def run_harness(
    name: str,
    runs: int,
    max_len: int | None,
    scratch: Path,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> dict[str, object]:
    work = scratch / name
    work.mkdir(parents=True, exist_ok=True)
    artifacts = scratch / f"{name}-findings"
    artifacts.mkdir(exist_ok=True)
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        name,
        f"-atheris_runs={runs}",
        f"-timeout={INPUT_TIMEOUT}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        *extra_args,
        str(work),
        str(HERE / "corpus" / name),
    ]
    if max_len is not None:
        argv.insert(-2, f"-max_len={max_len}")
    started = time.monotonic()
    print(f"== {name}: {runs} runs", flush=True)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    elapsed = time.monotonic() - started
    log = proc.stdout + proc.stderr
    (scratch / f"{name}.log").write_text(log)
    result: dict[str, object] = {
        "harness": name,
        "status": "ok" if proc.returncode == 0 else f"FAILED ({proc.returncode})",
        "runs": 0,
        "cov": 0,
        "ft": 0,
        "corpus": 0,
        "seconds": round(elapsed),
    }
    for line in log.splitlines():
        status = _STATUS.match(line)
        if status:
            result["runs"] = int(status.group(1))
            result["cov"] = int(status.group(3))
            result["ft"] = int(status.group(4))
            if status.group(5):
                result["corpus"] = int(status.group(5))
        done = _DONE.match(line)
        if done:
            result["runs"] = int(done.group(1))
    if proc.returncode != 0:
        print(log[-6000:], flush=True)
        print(f"findings (if any) are in {artifacts}", flush=True)
    else:
        tail = [line for line in log.splitlines() if _STATUS.match(line)][-1:]
        print("\n".join(tail), flush=True)
    return result


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        fuzz_one(sys.argv[2], sys.argv[3:])
        return 0
    sys.path.insert(0, str(HERE.parent))
    from fuzz.harnesses import HARNESSES

    parser = argparse.ArgumentParser(description="Run the atheris harnesses (bounded).")
    parser.add_argument("harness", nargs="*", help=f"some of {', '.join(HARNESSES)} (default: all)")
    parser.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="iterations per harness")
    parser.add_argument("--max-len", type=int, default=None, help="libFuzzer -max_len")
    args = parser.parse_args()
    names = args.harness or list(HARNESSES)
    unknown = sorted(set(names) - set(HARNESSES))
    if unknown:
        parser.error(f"unknown harness {', '.join(unknown)}")
    scratch = Path(tempfile.mkdtemp(prefix="trio-tun-fuzz-"))
    print(f"scratch corpus and logs: {scratch}", flush=True)
    results = [run_harness(name, args.runs, args.max_len, scratch) for name in names]
    print()
    header = f"{'harness':<15}{'status':<14}{'runs':>9}{'cov':>7}{'ft':>8}{'corpus':>8}{'s':>7}"
    print(header)
    for r in results:
        print(
            f"{r['harness']!s:<15}{r['status']!s:<14}{r['runs']!s:>9}{r['cov']!s:>7}"
            f"{r['ft']!s:>8}{r['corpus']!s:>8}{r['seconds']!s:>7}"
        )
    failed = [r for r in results if r["status"] != "ok" or int(str(r["runs"])) < args.runs]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
