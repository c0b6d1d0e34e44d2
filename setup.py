"""Build hook: the compiled offload speedups are optional.

When no C compiler (or no Python headers) is available the build still
succeeds and trio_tun.offload falls back to its pure-Python reference
implementation.  Set TRIO_TUN_NO_SPEEDUPS=1 to skip the extension on purpose.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any toolchain failure means "no speedups"
            print(f"trio-tun: building speedups failed ({exc}); using pure Python", file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"trio-tun: building {ext.name} failed ({exc}); using pure Python", file=sys.stderr)


ext_modules = []
if not os.environ.get("TRIO_TUN_NO_SPEEDUPS"):
    ext_modules.append(
        Extension(
            "trio_tun.offload._speedups",
            sources=["src/trio_tun/offload/_speedups.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
