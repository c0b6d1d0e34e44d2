"""Source-level C coverage of a fuzz corpus: which lines of ``_speedups.c`` it runs.

libFuzzer's edge counts of the sanitized build include the branches of every
sanitizer check (taken only on a bug), and at -O1 the small functions are
inlined into their callers, so they say little about the source.  This
builds the extension once more, with clang's source-based coverage
(``-fprofile-instr-generate -fcoverage-mapping``, no sanitizers), replays a
corpus through a harness and asks ``llvm-cov`` for the line, region and
branch coverage of ``_speedups.c``.

``python tests/sanitize/ccov.py HARNESS CORPUS_DIR...`` prints the summary.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Final

HERE: Final = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from sanbuild import OUT, SOURCE, package_copy  # noqa: E402

#: llvm-cov report's TOTAL line: regions, missed, cover, functions, missed,
#: executed, lines, missed, cover, branches, missed, cover.
_TOTAL: Final = re.compile(r"^TOTAL\s+" + r"\s+".join([r"(\d+)\s+(\d+)\s+([\d.]+)%"] * 4))

REPLAY: Final = """
import sys
from pathlib import Path
from fuzz.harnesses import HARNESSES

check = HARNESSES[sys.argv[1]]
for directory in sys.argv[2:]:
    for path in sorted(Path(directory).iterdir()):
        if path.is_file():
            try:
                check(path.read_bytes())
            except Exception:  # findings are the fuzzer's to report; this only counts
                pass
"""


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} is not installed (Debian: apt-get install llvm)")
    return found


def build_profiled(out: Path = OUT / "coverage") -> tuple[Path, Path]:
    """A copy of the package whose extension counts source regions: (site, .so)."""
    clang = shutil.which("clang") or "clang"
    site, extension = package_copy(out)
    subprocess.run(
        [
            clang,
            "-shared",
            "-fPIC",
            "-O1",
            "-fprofile-instr-generate",
            "-fcoverage-mapping",
            f"-I{sysconfig.get_paths()['include']}",
            str(SOURCE),
            "-o",
            str(extension),
        ],
        check=True,
    )
    return site, extension


def coverage(
    site: Path, extension: Path, harness: str, corpora: Sequence[Path], work: Path
) -> dict[str, str]:
    """Replay *corpora* through *harness*; line/region/branch/function coverage."""
    work.mkdir(parents=True, exist_ok=True)
    raw = work / f"{harness}.profraw"
    data = work / f"{harness}.profdata"
    raw.unlink(missing_ok=True)
    env = dict(os.environ)
    for name in ("LD_PRELOAD", "PYTHONMALLOC"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(HERE.parent)])
    env["LLVM_PROFILE_FILE"] = str(raw)
    subprocess.run([sys.executable, "-c", REPLAY, harness, *map(str, corpora)], env=env, check=True)
    if not raw.exists():
        # The harness never imported the extension (it checks Python code only).
        return {"lines": "-", "regions": "-", "branches": "-", "functions": "-"}
    subprocess.run(
        [_tool("llvm-profdata"), "merge", "-sparse", str(raw), "-o", str(data)], check=True
    )
    report = subprocess.run(
        [_tool("llvm-cov"), "report", str(extension), f"-instr-profile={data}", str(SOURCE)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (work / f"{harness}.txt").write_text(report)
    for line in report.splitlines():
        m = _TOTAL.match(line)
        if m:
            g = m.groups()
            # Percentages of the coverable items of _speedups.c alone.
            return {
                "regions": f"{g[2]}% of {g[0]}",
                "functions": f"{g[5]}% of {g[3]}",
                "lines": f"{g[8]}% of {g[6]}",
                "branches": f"{g[11]}% of {g[9]}",
            }
    raise SystemExit(f"unexpected llvm-cov output:\n{report}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("harness")
    parser.add_argument("corpus", nargs="+", type=Path)
    args = parser.parse_args()
    site, extension = build_profiled()
    result = coverage(site, extension, args.harness, args.corpus, OUT / "coverage" / "work")
    for key, value in result.items():
        print(f"{key:<10}{value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
