"""``nox -s sanitize``: the offload speedups under ASan and UBSan, fuzzed with C coverage.

Steps (each can be chosen with ``--steps``):

``build``
    clang builds ``_speedups.c`` with ``-fsanitize=address,undefined
    -fno-sanitize-recover=all -fsanitize=fuzzer-no-link`` into
    ``build/sanitize/`` (see sanbuild.py), never over the in-place build.
``tests``
    pytest runs the offload tests, the fuzz corpus replay, the UDP
    syscall tests (sendmmsg/recvmmsg) and the frame-loop tests
    (read_frames/write_frames) with that build imported (a plugin
    refuses to start otherwise), the ASan runtime preloaded and CPython
    allocating with malloc, so that ASan sees the bounds of every object.
``fuzz``
    every harness of tests/fuzz/harnesses.py under atheris, ``--runs``
    inputs each (default 1,000,000), libFuzzer guided by the C edges of the
    extension as well as the Python ones.  Then the corpus each run ended
    with is replayed once without Python instrumentation, which gives the C
    coverage on its own: edges of ``_speedups.c`` reached, per function too
    (in the log); and once more through a build with clang's source-based
    coverage, for the lines and branches of ``_speedups.c`` it runs (ccov.py).
``refleaks``
    refleaks.py: ``--calls`` calls of every entry point (default 1,000,000)
    against the sanitized build, with counts and memory required flat.

Any sanitizer report stops the process that hit it with a stack trace, which
makes the step fail.  E.g. ``nox -s sanitize -- --runs 20000 --calls 100000``
or ``nox -s sanitize -- --steps build fuzz --harness speedups``.  On a busy
machine ``--max-seconds`` (and ``--max-seconds-for HARNESS=S``) caps each
harness's fuzzing time as well (libFuzzer's ``-max_total_time``): a harness
that reaches its cap first ends early, shown as ``ok (capped)`` with the
inputs it ran.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).resolve().parent
TESTS: Final = HERE.parent
sys.path[:0] = [str(HERE), str(TESTS)]

from sanbuild import ROOT, SanitizedBuild, build, existing, is_sanitized  # noqa: E402

#: What the tests step runs: everything that reaches the compiled module.
TEST_PATHS: Final = (
    "tests/offload",
    "tests/test_fuzz_corpus.py",
    "tests/test_udp_syscalls.py",
    "tests/test_udp.py",
    "tests/test_frame_loops.py",
    "tests/test_frame_pump.py",
    "tests/test_pair_pump.py",
    "tests/test_threaded.py",
)
#: libFuzzer's default RSS limit (2 GB) is too tight for CPython under ASan
#: with malloc for every object and ASan's quarantine of freed memory.
FUZZ_ARGS: Final = ("-rss_limit_mb=6144", "-malloc_limit_mb=1024")
_INITED: Final = re.compile(r"^#\d+\s+INITED\s+cov: (\d+) ft: (\d+)")
_EDGES: Final = re.compile(r"^INFO: Loaded 1 modules\s+\((\d+) inline 8-bit counters\)")
_FUNC: Final = re.compile(r"^(?:UN)?COVERED_FUNC: hits: \d+ edges: (\d+)/(\d+) (\S+) (\S+):\d+")


def replay_child(name: str, libfuzzer_args: list[str]) -> None:
    """In a child: run the corpus once through the harness, Python not instrumented,
    so libFuzzer's counts are those of the C extension alone."""
    import atheris

    from fuzz import harnesses

    atheris.Setup([sys.argv[0], *libfuzzer_args], harnesses.HARNESSES[name])
    atheris.Fuzz()


def c_coverage(
    san: SanitizedBuild, name: str, corpora: Sequence[Path], log: Path
) -> dict[str, Any]:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--replay-child",
        name,
        "-runs=0",
        "-print_coverage=1",
        *FUZZ_ARGS,
        *map(str, corpora),
    ]
    proc = subprocess.run(
        argv, capture_output=True, text=True, check=False, env=san.env(fuzzer=True)
    )
    text = proc.stdout + proc.stderr
    log.write_text(text)
    out: dict[str, Any] = {"c_cov": 0, "c_edges": 0, "c_funcs": "0/0", "c_file_edges": "0/0"}
    funcs = covered_funcs = file_edges = file_total = 0
    for line in text.splitlines():
        if m := _EDGES.match(line):
            out["c_edges"] = int(m.group(1))
        elif m := _INITED.match(line):
            out["c_cov"] = int(m.group(1))
        elif (m := _FUNC.match(line)) and m.group(4).endswith("_speedups.c"):
            funcs += 1
            covered_funcs += line.startswith("COVERED")
            file_edges += int(m.group(1))
            file_total += int(m.group(2))
    out["c_funcs"] = f"{covered_funcs}/{funcs}"
    out["c_file_edges"] = f"{file_edges}/{file_total}"
    if proc.returncode != 0:
        out["status"] = f"REPLAY FAILED ({proc.returncode})"
    return out


def with_reports(env: dict[str, str], reports: Path) -> dict[str, str]:
    """Sanitizer reports go to files in *reports* (pytest would swallow the stderr of
    a process that dies, and tests' subprocesses report there too)."""
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    env = dict(env)
    env["ASAN_OPTIONS"] += f":log_path={reports}/asan"
    env["UBSAN_OPTIONS"] += f":log_path={reports}/ubsan"
    return env


def findings(reports: Path) -> int:
    """Print the sanitizer reports left in *reports*; return how many there are."""
    found = sorted(p for p in reports.iterdir() if p.is_file())
    for path in found:
        print(f"---- {path}", flush=True)
        print(path.read_text(errors="replace")[:12000], flush=True)
    return len(found)


def step_tests(san: SanitizedBuild, pytest_args: Sequence[str]) -> bool:
    reports = san.site.parent / "reports-tests"
    env = with_reports(san.env(), reports)
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(HERE)])
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        "sanitized_plugin",
        *pytest_args,
        *TEST_PATHS,
    ]
    print("$", " ".join(argv), flush=True)
    passed = subprocess.run(argv, cwd=ROOT, env=env, check=False).returncode == 0
    return findings(reports) == 0 and passed


def step_fuzz(
    san: SanitizedBuild,
    names: Sequence[str],
    runs: dict[str, int],
    jobs: int,
    seconds: dict[str, int | None],
) -> list[dict[str, Any]]:
    from fuzz.run import run_harness

    scratch = Path(tempfile.mkdtemp(prefix="trio-tun-sanitize-"))
    print(f"scratch corpus and logs: {scratch}", flush=True)
    env = san.env(fuzzer=True)

    def one(name: str) -> dict[str, Any]:
        cap = seconds[name]
        extra = (*FUZZ_ARGS, f"-max_total_time={cap}") if cap else FUZZ_ARGS
        result: dict[str, Any] = run_harness(
            name, runs[name], None, scratch, extra_args=extra, env=env
        )
        if "Using preloaded libfuzzer" not in (scratch / f"{name}.log").read_text():
            result["status"] = "NOT C-GUIDED"
        elif result["status"] == "ok" and int(result["runs"]) < runs[name]:
            # libFuzzer ended at the time cap, cleanly (a finding exits non-zero).
            result["status"] = "ok (capped)" if cap else "TOO FEW RUNS"
        corpora = [scratch / name, TESTS / "fuzz" / "corpus" / name]
        result.update(c_coverage(san, name, corpora, scratch / f"{name}-c-coverage.log"))
        return result

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(one, names))
    # Source lines and branches of _speedups.c the final corpora run (a build
    # with clang's source-based coverage, no sanitizers; see ccov.py).
    from ccov import build_profiled, coverage

    site, extension = build_profiled()
    for r in results:
        name = r["harness"]
        corpora = [scratch / name, TESTS / "fuzz" / "corpus" / name]
        r.update(coverage(site, extension, name, corpora, scratch / "ccov"))
    print()
    print(
        f"{'harness':<15}{'status':<14}{'runs':>9}{'cov':>7}{'ft':>8}{'corpus':>8}"
        f"{'C cov':>8}{'C funcs':>10}{'C lines':>17}{'C branches':>16}{'s':>7}"
    )
    for r in results:
        print(
            f"{r['harness']!s:<15}{r['status']!s:<14}{r['runs']!s:>9}{r['cov']!s:>7}"
            f"{r['ft']!s:>8}{r['corpus']!s:>8}{r['c_cov']!s:>8}{r['c_funcs']!s:>10}"
            f"{r['lines']!s:>17}{r['branches']!s:>16}{r['seconds']!s:>7}"
        )
    edges = max((r["c_edges"] for r in results), default=0)
    print(
        f"cov/ft: libFuzzer's edges/features, Python and C together.  C cov: edges of the "
        f"sanitized extension the final corpus reaches (of {edges} instrumented, sanitizer "
        f"checks and inlined CPython helpers included); C funcs: functions of _speedups.c "
        f"entered (per-function detail in {scratch}/<harness>-c-coverage.log).  C lines, "
        f"C branches: llvm-cov's source coverage of _speedups.c by the final corpus "
        f"({scratch}/ccov/<harness>.txt)."
    )
    return results


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--replay-child":
        replay_child(sys.argv[2], sys.argv[3:])
        return 0
    from fuzz.harnesses import HARNESSES

    parser = argparse.ArgumentParser(description="The offload speedups under ASan and UBSan.")
    parser.add_argument(
        "--steps",
        nargs="+",
        default=["build", "tests", "fuzz", "refleaks"],
        choices=["build", "tests", "fuzz", "refleaks"],
    )
    parser.add_argument("--runs", type=int, default=1_000_000, help="fuzz inputs per harness")
    parser.add_argument(
        "--runs-for",
        action="append",
        default=[],
        metavar="HARNESS=N",
        help="another input count for one harness (repeatable)",
    )
    parser.add_argument("--harness", nargs="+", default=list(HARNESSES), choices=list(HARNESSES))
    parser.add_argument("--jobs", type=int, default=1, help="harnesses fuzzed at once")
    parser.add_argument(
        "--max-seconds", type=int, default=None, help="fuzzing time cap per harness"
    )
    parser.add_argument(
        "--max-seconds-for",
        action="append",
        default=[],
        metavar="HARNESS=S",
        help="another time cap for one harness (repeatable)",
    )
    parser.add_argument("--calls", type=int, default=1_000_000, help="leak check calls per entry")
    parser.add_argument(
        "--pytest-args", default="-q", help="pytest options, one string (default: -q)"
    )
    args = parser.parse_args()
    runs = dict.fromkeys(HARNESSES, args.runs)
    for item in args.runs_for:
        name, _, count = item.partition("=")
        if name not in HARNESSES or not count.isdigit():
            parser.error(f"--runs-for {item!r}: want HARNESS=N")
        runs[name] = int(count)
    seconds: dict[str, int | None] = dict.fromkeys(HARNESSES, args.max_seconds)
    for item in args.max_seconds_for:
        name, _, count = item.partition("=")
        if name not in HARNESSES or not count.isdigit():
            parser.error(f"--max-seconds-for {item!r}: want HARNESS=S")
        seconds[name] = int(count)

    started = time.monotonic()
    timings: list[tuple[str, str, float]] = []
    ok = True

    def timed(step: str, verdict: bool, t0: float) -> None:
        nonlocal ok
        ok = ok and verdict
        timings.append((step, "ok" if verdict else "FAILED", time.monotonic() - t0))

    t0 = time.monotonic()
    san = build() if "build" in args.steps else existing()
    marked = is_sanitized(san.extension)
    print(f"sanitized build: {san.extension} (instrumented: {marked})", flush=True)
    timed("build", marked, t0)

    if "tests" in args.steps:
        t0 = time.monotonic()
        timed("tests", step_tests(san, shlex.split(args.pytest_args)), t0)

    if "fuzz" in args.steps:
        t0 = time.monotonic()
        results = step_fuzz(san, args.harness, runs, args.jobs, seconds)
        fuzz_ok = all(r["status"] in ("ok", "ok (capped)") for r in results)
        timed("fuzz", fuzz_ok, t0)

    if "refleaks" in args.steps:
        t0 = time.monotonic()
        argv = [sys.executable, str(HERE / "refleaks.py"), "--calls", str(args.calls)]
        print("$", " ".join(argv), flush=True)
        reports = san.site.parent / "reports-refleaks"
        env = with_reports(san.env(malloc=False), reports)
        # A small quarantine: ASan otherwise keeps up to 256 MB of freed
        # memory out of reuse, which reads as RSS growth.
        env["ASAN_OPTIONS"] += ":quarantine_size_mb=1"
        proc = subprocess.run(argv, env=env, check=False)
        timed("refleaks", findings(reports) == 0 and proc.returncode == 0, t0)

    print()
    for step, verdict, seconds in timings:
        print(f"{step:<10}{verdict:<8}{seconds:>8.0f} s")
    print(f"{'total':<18}{time.monotonic() - started:>8.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
