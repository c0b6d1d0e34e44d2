"""Developer tasks: ``nox -s tests`` (the CI gate), ``demo``, ``docs``, ``bench``."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

# command on PATH -> Debian package that provides it
TEST_TOOLS = {"ping": "iputils-ping", "setpriv": "util-linux"}
BENCH_TOOLS = {"ping": "iputils-ping", "iperf3": "iperf3", "cc": "gcc"}


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
    session.run("apt-get", "install", "-y", "-qq", *missing, external=True, env=env)


@nox.session
def tests(session: nox.Session) -> None:
    """Lint, type-check, build the docs and run the whole test suite (both backends)."""
    _ensure_debian_packages(session, TEST_TOOLS)
    session.install("-e", ".[test,lint,docs]")
    session.run("ruff", "check", "src", "tests", "examples", "noxfile.py", "bench")
    session.run("ruff", "format", "--check", "src", "tests", "examples", "noxfile.py", "bench")
    session.run("mypy", "src")
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
