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
    session.run("ruff", "check", "src", "tests", "examples", "noxfile.py", "bench")
    session.run("ruff", "format", "--check", "src", "tests", "examples", "noxfile.py", "bench")
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
    """
    _ensure_debian_packages(session, BENCH_TOOLS)
    session.install("-e", ".[bench]")
    session.run("python", "bench/forward.py", *session.posargs)


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


@nox.session
def soak(session: nox.Session) -> None:
    """Engine forwarder under iperf3 load with random restarts (needs root; 10 min).

    Not part of ``tests``.  E.g. ``nox -s soak -- --duration 120``.
    """
    _ensure_debian_packages(session, {"iperf3": "iperf3"})
    session.install("-e", ".")
    session.run("python", "bench/soak.py", *session.posargs)
