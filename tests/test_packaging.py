"""The package builds as an sdist and a wheel; the wheel installs with the compiled
speedups, and the sdist installs without a compiler, falling back to pure Python.

The artifacts are built here with ``python -m build`` (no build isolation: the
test extra brings setuptools and wheel, so no network is needed), unless
``TRIO_TUN_DIST`` names a directory that already holds them (``nox -s build``
sets it to the ones it just made).  Each install goes into a fresh virtual
environment that sees this environment's packages only through one ``.pth``
line, appended after its own site-packages, so the trio-tun it imports is the
one just installed (checked through ``__file__``) and its dependencies need no
download.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Generous: the wheel compiles the C speedups (a few seconds here).
BUILD_TIMEOUT = 300

pytest.importorskip("build", reason="the 'build' package (test extra) is not installed")

PROBE = """
import json, pathlib, sys
import trio_tun, trio_tun.offload
root = pathlib.Path(trio_tun.__file__).parent
print(json.dumps({
    "file": trio_tun.__file__,
    "implementation": trio_tun.offload.implementation,
    "compiled": sorted(p.name for p in (root / "offload").glob("_speedups*")
                       if p.suffix in (".so", ".pyd")),
    "typed": (root / "py.typed").exists(),
}))
"""


def _have_compiler() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(cc) is not None and include.exists()


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    given = os.environ.get("TRIO_TUN_DIST")
    if given:
        yield Path(given)
        return
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=BUILD_TIMEOUT,
    )
    yield out


def _one(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {directory}: {found}"
    return found[0]


def _fresh_venv(where: Path) -> Path:
    """A new venv with no pip and no packages of its own."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(where)
    return where / "bin" / "python"


def _see_our_packages(python: Path) -> None:
    """Let *python* import this environment's packages (trio, anyio, ...), after its own.

    Done only after installing: pip must not see (or try to replace) the
    trio-tun of this environment.  A path line, not a site directory, so the
    .pth files in ours (such as an editable trio-tun) are not processed.
    """
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "zz_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIO_TUN_")}
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def _pip(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=BUILD_TIMEOUT,
        check=False,
    )


def _install(python: Path, wheel: Path, env: dict[str, str]) -> None:
    result = _pip(
        "--python", str(python), "install", "--no-deps", "--no-index", str(wheel), env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    _see_our_packages(python)


def _probe(python: Path, env: dict[str, str]) -> dict[str, object]:
    result = subprocess.run(
        [str(python), "-c", PROBE], capture_output=True, text=True, env=env, cwd="/", check=True
    )
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_build_makes_an_sdist_and_a_platform_wheel(dist: Path) -> None:
    wheel = _one(dist, "trio_tun-*.whl")
    sdist = _one(dist, "trio_tun-*.tar.gz")
    names = zipfile.ZipFile(wheel).namelist()
    assert "trio_tun/py.typed" in names
    assert "trio_tun/pcap.py" in names
    assert "trio_tun/offload/_speedups.pyi" in names
    if _have_compiler():
        # Compiled code makes it a wheel for this interpreter and platform only.
        assert not wheel.name.endswith("-none-any.whl"), wheel.name
        assert any(n.startswith("trio_tun/offload/_speedups.") and n.endswith(".so") for n in names)
    assert sdist.stat().st_size > 0


@pytest.mark.skipif(not _have_compiler(), reason="no C compiler or Python headers here")
def test_wheel_installs_into_a_fresh_venv_with_the_speedups(dist: Path, tmp_path: Path) -> None:
    python = _fresh_venv(tmp_path / "venv")
    env = _clean_env()
    _install(python, _one(dist, "trio_tun-*.whl"), env)
    report = _probe(python, env)
    assert str(report["file"]).startswith(str(tmp_path / "venv")), report
    assert report["implementation"] == "speedups", report
    assert report["compiled"] and report["typed"], report


def test_sdist_without_a_compiler_falls_back_to_pure_python(dist: Path, tmp_path: Path) -> None:
    # No compiler anywhere: CC fails and PATH holds nothing but this Python.
    nothing = tmp_path / "empty-bin"
    nothing.mkdir()
    no_cc = _clean_env(
        CC="/bin/false",
        CXX="/bin/false",
        LDSHARED="/bin/false",
        PATH=f"{Path(sys.executable).parent}:{nothing}",
    )
    # Installing an sdist is building a wheel from it and installing that;
    # the build runs here (setuptools and wheel come with the test extra).
    built = tmp_path / "built"
    result = _pip(
        "wheel",
        "--no-deps",
        "--no-index",
        "--no-build-isolation",
        "--no-cache-dir",
        "-v",
        "--wheel-dir",
        str(built),
        str(_one(dist, "trio_tun-*.tar.gz")),
        env=no_cc,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The build said why there are no speedups (and did not hide a real failure).
    assert "using pure Python" in result.stdout + result.stderr
    python = _fresh_venv(tmp_path / "venv")
    env = _clean_env()
    _install(python, _one(built, "trio_tun-*.whl"), env)
    report = _probe(python, env)
    assert str(report["file"]).startswith(str(tmp_path / "venv")), report
    assert report["implementation"] == "python", report
    assert report["compiled"] == [] and report["typed"], report
