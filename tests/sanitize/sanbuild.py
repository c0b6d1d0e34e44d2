"""Build the offload speedups with clang under AddressSanitizer and UBSan.

The result goes to ``build/sanitize/`` (never over the developer's in-place
``_speedups*.so``):

* ``site/trio_tun/``: a copy of ``src/trio_tun`` (Python files only) with the
  sanitized ``_speedups`` extension in ``offload/``; putting ``site`` first on
  ``PYTHONPATH`` makes ``import trio_tun`` load it;
* ``libasan_fuzzer.so``: the ASan runtime (UBSan's handlers included) and
  libFuzzer linked into one shared library, preloaded for fuzzing.

Why one merged runtime: the extension is compiled with
``-fsanitize=fuzzer-no-link``, so when it is loaded it registers its coverage
counters through ``__sanitizer_cov_8bit_counters_init``.  The ASan runtime
defines that symbol too, as a weak do-nothing default, and the dynamic linker
takes the first definition it finds, whatever its strength: with the plain
ASan runtime preloaded the counters would reach nobody.  Linked into one
library, libFuzzer's strong definition replaces the weak one.  atheris sees
the preloaded libFuzzer (``LLVMFuzzerRunDriver``) and drives it instead of
the copy in its wheel, so libFuzzer's coverage holds the C edges next to the
Python ones atheris reports.

``python tests/sanitize/sanbuild.py`` builds and prints the environment to run
Python with.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Final

import attrs

ROOT: Final = Path(__file__).resolve().parents[2]
SOURCE: Final = ROOT / "src" / "trio_tun" / "offload" / "_speedups.c"
OUT: Final = ROOT / "build" / "sanitize"
#: -O1 keeps the stack traces readable and the run fast enough to fuzz.
CFLAGS: Final = (
    "-O1",
    "-g",
    "-fno-omit-frame-pointer",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fsanitize=fuzzer-no-link",
    "-Wall",
    "-Werror",
)
#: ASan: CPython frees little of what it allocates at exit, so leak detection
#: would report interpreter allocations only (reference leaks are measured by
#: refleaks.py instead).  UBSan: stop at the first report, with its stack.
ASAN_OPTIONS: Final = "detect_leaks=0:halt_on_error=1:abort_on_error=0:print_summary=1"
UBSAN_OPTIONS: Final = "halt_on_error=1:print_stacktrace=1"


@attrs.frozen
class SanitizedBuild:
    site: Path  # goes first on PYTHONPATH
    extension: Path  # the sanitized trio_tun/offload/_speedups*.so inside site
    asan_runtime: Path  # clang's shared ASan runtime (UBSan included)
    fuzz_runtime: Path  # ASan + UBSan + libFuzzer in one library

    def env(self, *, fuzzer: bool = False, malloc: bool = True) -> dict[str, str]:
        """The environment for a Python process that uses this build.

        *fuzzer* preloads the merged runtime (for atheris) instead of the
        plain ASan one.  *malloc* makes CPython allocate every object with
        malloc, so ASan sees the exact bounds of each bytes object instead of
        pymalloc's pools (the reference-leak check wants pymalloc's counters).
        """
        env = dict(os.environ)
        env["LD_PRELOAD"] = str(self.fuzz_runtime if fuzzer else self.asan_runtime)
        env["ASAN_OPTIONS"] = ASAN_OPTIONS
        env["UBSAN_OPTIONS"] = UBSAN_OPTIONS
        symbolizer = shutil.which("llvm-symbolizer")
        if symbolizer:
            env["ASAN_SYMBOLIZER_PATH"] = symbolizer
        env["PYTHONPATH"] = os.pathsep.join(
            [str(self.site), str(ROOT / "tests"), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        env["TRIO_TUN_SANITIZED_SO"] = str(self.extension)
        if malloc:
            env["PYTHONMALLOC"] = "malloc"
        else:
            env.pop("PYTHONMALLOC", None)
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        return env


def _clang() -> str:
    clang = shutil.which("clang")
    if clang is None:
        raise SystemExit("clang is not installed (Debian: apt-get install clang libclang-rt-dev)")
    return clang


def _runtime_dir(clang: str) -> Path:
    asan = Path(_run([clang, "-print-file-name=libclang_rt.asan-x86_64.so"]).strip())
    if not asan.is_file():
        raise SystemExit(
            "clang's sanitizer runtimes are missing (Debian: apt-get install libclang-rt-dev)"
        )
    return asan.parent


def _run(argv: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def _fuzz_runtime(clang: str, runtimes: Path, out: Path) -> Path:
    """ASan's static runtime and libFuzzer (no main) as one shared library."""
    target = out / "libasan_fuzzer.so"
    work = out / "runtime"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    asan = work / "asan.a"
    shutil.copyfile(runtimes / "libclang_rt.asan-x86_64.a", asan)
    # The pre-init hook is a .preinit_array entry, which a shared library may
    # not have; LD_PRELOAD loads the runtime early enough without it.
    members = _run(["ar", "t", str(asan)]).split()
    preinit = [m for m in members if m.startswith("asan_preinit")]
    if preinit:
        _run(["ar", "d", str(asan), *preinit])
    _run(
        [
            clang,
            "-shared",
            "-o",
            str(target),
            "-Wl,--whole-archive",
            str(asan),
            str(runtimes / "libclang_rt.asan_cxx-x86_64.a"),
            str(runtimes / "libclang_rt.fuzzer_no_main-x86_64.a"),
            "-Wl,--no-whole-archive",
            "-lpthread",
            "-ldl",
            "-lrt",
            "-lm",
            "-lstdc++",
        ]
    )
    shutil.rmtree(work)
    return target


def package_copy(out: Path) -> tuple[Path, Path]:
    """A fresh copy of the package under *out* without its built extension:
    (the site directory to import it from, where the extension must go)."""
    shutil.rmtree(out, ignore_errors=True)
    site = out / "site"
    shutil.copytree(
        ROOT / "src" / "trio_tun",
        site / "trio_tun",
        ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "*.c"),
    )
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    return site, site / "trio_tun" / "offload" / f"_speedups{suffix}"


def build(out: Path = OUT) -> SanitizedBuild:
    clang = _clang()
    runtimes = _runtime_dir(clang)
    site, extension = package_copy(out)
    include = sysconfig.get_paths()["include"]
    _run(
        [
            clang,
            "-shared",
            "-fPIC",
            *CFLAGS,
            f"-I{include}",
            str(SOURCE),
            "-o",
            str(extension),
        ]
    )
    return SanitizedBuild(
        site=site,
        extension=extension,
        asan_runtime=runtimes / "libclang_rt.asan-x86_64.so",
        fuzz_runtime=_fuzz_runtime(clang, runtimes, out),
    )


def existing(out: Path = OUT) -> SanitizedBuild:
    """The build a previous :func:`build` left in *out*."""
    site = out / "site"
    found = sorted((site / "trio_tun" / "offload").glob("_speedups*.so"))
    if not found:
        raise SystemExit(f"no sanitized build in {out}: run the build step first")
    return SanitizedBuild(
        site=site,
        extension=found[0],
        asan_runtime=_runtime_dir(_clang()) / "libclang_rt.asan-x86_64.so",
        fuzz_runtime=out / "libasan_fuzzer.so",
    )


def is_sanitized(path: Path) -> bool:
    """The extension at *path* calls into ASan, UBSan and SanitizerCoverage."""
    data = path.read_bytes()
    return all(
        marker in data for marker in (b"__asan_report_load", b"__ubsan_handle_", b"__sancov_cntrs")
    )


def main() -> int:
    result = build()
    assert is_sanitized(result.extension)
    env = result.env()
    for name in ("LD_PRELOAD", "PYTHONPATH", "PYTHONMALLOC", "ASAN_OPTIONS", "UBSAN_OPTIONS"):
        print(f"{name}={env[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
