"""Developer tasks: ``nox -s tests`` (the CI gate), ``demo``, ``docs``, ``bench``."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

# command on PATH -> Debian package that provides it
TEST_TOOLS = {
    "ping": "iputils-ping",
    "setpriv": "util-linux",
    # The offload speedups, and bench/bench_gso.h checked against them.
    "cc": "gcc",
    # The WireGuard example is tested against an implementation we did not write.
    "wireguard-go": "wireguard-go",
    "wg": "wireguard-tools",
}
BENCH_TOOLS = {
    "ping": "iputils-ping",
    "iperf3": "iperf3",
    "cc": "gcc",
    "wireguard-go": "wireguard-go",
    "wg": "wireguard-tools",
}


def _ensure_debian_packages(session: nox.Session, tools: dict[str, str]) -> None:
    """Install the Debian packages behind missing tools (root on Debian only)."""
    missing = sorted({pkg for cmd, pkg in tools.items() if shutil.which(cmd) is None})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        session.warn(f"missing {missing}; the tests that need them will be skipped")
        return
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-qq", external=True, env=env)
    # --no-install-recommends: wireguard-tools would otherwise pull in a kernel image.
    session.run(
        "apt-get",
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        *missing,
        external=True,
        env=env,
    )


@nox.session
def tests(session: nox.Session) -> None:
    """Lint, type-check, build the docs and run the whole test suite (both backends)."""
    _ensure_debian_packages(session, TEST_TOOLS)
    session.install("-e", ".[test,lint,docs]")
    linted = ("src", "tests", "examples", "noxfile.py", "bench", "tools")
    session.run("ruff", "check", *linted)
    session.run("ruff", "format", "--check", *linted)
    session.run("mypy", "src")
    session.run("mypy", "examples/wgpeer", "examples/wireguard.py")
    # Every backend type-checks as the code of its own system too.
    for platform in ("darwin", "win32", "freebsd"):
        session.run("mypy", "--platform", platform, "src")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-q", "-b", "html", "docs", "docs/_build/html"
    )
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def demo(session: nox.Session) -> None:
    """The toy VPN between two private namespaces (needs root)."""
    _ensure_debian_packages(session, {"ping": "iputils-ping"})
    session.install("-e", ".")
    session.run("python", "-m", "trio_tun", "demo")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the HTML docs with warnings as errors."""
    session.install("-e", ".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def bench(session: nox.Session) -> None:
    """Forwarding benchmark in private namespaces (needs root): trio-tun vs C vs pytun.

    Options go through, e.g. ``nox -s bench -- --duration 5 --streams 1 --repeat 3``.
    Then the per-packet cost ladder without offload (bench/perpacket.py).
    """
    _ensure_debian_packages(session, BENCH_TOOLS)
    session.install("-e", ".[bench]")
    session.run("python", "bench/forward.py", *session.posargs)
    session.run("python", "bench/perpacket.py", "--output", "bench/perpacket.md")
    # docs/performance.rst shows the chart and the results as reST; the default
    # results only: a run told to write elsewhere leaves the docs alone.
    # (Nor does ``--install-only``, which ran nothing: there are no results.)
    if not any(arg.startswith(("--output", "--chart")) for arg in session.posargs) and (
        os.path.exists("bench/results.svg")
    ):
        shutil.copyfile("bench/results.svg", "docs/_static/bench.svg")
        for name in ("results", "perpacket"):
            session.run(
                "python",
                "bench/results_rst.py",
                f"bench/{name}.md",
                "-o",
                f"docs/_generated/bench-{name}.inc",
            )


@nox.session
def build(session: nox.Session) -> None:
    """Build the sdist and the wheel into dist/, then check both.

    ``python -m build`` (isolated, as pip would build) makes them; then
    tests/test_packaging.py installs the wheel into a fresh venv and checks
    that the compiled speedups are used, and builds and installs the sdist
    with no compiler available and checks the pure-Python fallback.
    """
    _ensure_debian_packages(session, {"cc": "gcc"})
    session.install("-e", ".[test]")
    dist = os.path.join(os.getcwd(), "dist")
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "build", "--outdir", dist)
    session.run("pytest", "-q", "tests/test_packaging.py", env={"TRIO_TUN_DIST": dist})


@nox.session
def fuzz(session: nox.Session) -> None:
    """Coverage-guided fuzzing of the offload parsers with atheris (bounded).

    Every harness in tests/fuzz runs for ``--runs`` iterations (default
    100,000), seeded from tests/fuzz/corpus; the counts and coverage are
    printed at the end.  E.g. ``nox -s fuzz -- --runs 20000 gso_split``.
    """
    session.install("-e", ".[test,fuzz]")
    session.run("python", "tests/fuzz/run.py", *session.posargs)


# --- mutation testing -------------------------------------------------------
# ``nox -s mutants`` mutates the pure-Python offload reference
# (src/trio_tun/offload/{checksum,gso,gro,virtio,udp}.py), the stream
# (_stream.py, _framing.py) and the engine (engine.py) with mutmut, runs for each
# mutant only the tests of the fast selection that call the mutated function
# (TRIO_TUN_PURE_PYTHON=1, Hypothesis derandomised), and prints the share of
# mutants killed, per file and in total.
#   * Configuration: [tool.mutmut] in pyproject.toml (files, test selection).
#   * Driver: tools/mutants.py (sample, wall-clock budget, niceness, score).
#   * Default: a deterministic third of each file's mutants (all 2,546 take
#     about an hour here), stopped after --budget seconds (1800) with what it
#     tested reported; 4 workers for 2 cores, because the tests mostly wait
#     (kernel round trips, hung mutants); niceness 10.
#     ``-- --sample 1`` tests every mutant.
#   * Needs root for the quick kernel tests in the selection (as the suite does).
#   * Results stay in ./mutants (git-ignored): ``mutmut show NAME`` prints a
#     mutant's diff, ``--resume`` continues a run, ``--report`` prints the table
#     again, ``--survivors`` lists every survivor, and
#     ``python tools/check_survivors.py TESTS...`` shows which survivors new
#     tests kill.
#   E.g. ``nox -s mutants -- --budget 600 'trio_tun.offload.gso*'``.
MUTMUT = "mutmut==3.8.1"


@nox.session
def mutants(session: nox.Session) -> None:
    """Mutation testing of offload/, the stream and the engine (mutmut; 30 min)."""
    session.install("-e", ".[test]", MUTMUT)
    session.run("python", "tools/mutants.py", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """Engine forwarder under iperf3 load with random restarts (needs root; 10 min).

    Not part of ``tests``.  E.g. ``nox -s soak -- --duration 120``.
    """
    _ensure_debian_packages(session, {"iperf3": "iperf3"})
    session.install("-e", ".")
    session.run("python", "bench/soak.py", *session.posargs)


# command on PATH -> Debian package; clang's sanitizer runtimes have no command
# of their own, so the session checks for them as files (see below).
SANITIZE_TOOLS = {
    "clang": "clang",
    # Symbolized stack traces in sanitizer reports; llvm-profdata and llvm-cov
    # (same package) report the C coverage of the fuzz corpora.
    "llvm-symbolizer": "llvm",
    "llvm-cov": "llvm",
}


@nox.session
def sanitize(session: nox.Session) -> None:
    """The C offload speedups under ASan + UBSan, fuzzed with C coverage (needs clang).

    Builds ``_speedups.c`` with clang and
    ``-fsanitize=address,undefined -fsanitize=fuzzer-no-link`` into
    ``build/sanitize/``, then runs the offload tests, every fuzz harness
    (1,000,000 inputs each, libFuzzer guided by the C edges) and a
    reference-leak check against it.  Not part of ``tests``.  E.g.
    ``nox -s sanitize -- --runs 20000 --calls 100000``; see
    tests/sanitize/run.py.
    """
    _ensure_debian_packages(session, SANITIZE_TOOLS)
    runtime = shutil.which("clang") and session.run(
        "clang", "-print-file-name=libclang_rt.asan-x86_64.so", external=True, silent=True
    )
    if not (isinstance(runtime, str) and os.path.isfile(runtime.strip())):
        # The runtimes come with clang's recommended packages, which
        # _ensure_debian_packages leaves out.
        _ensure_debian_packages(session, {"libclang_rt.asan (clang runtimes)": "libclang-rt-dev"})
    session.install("-e", ".[test,fuzz]")
    session.run("python", "tests/sanitize/run.py", *session.posargs)
