"""Build of fastbind: the compiled core when a compiler is there, else a pure install.

FASTBIND_NO_EXTENSIONS=1  build no extension (the pure-Python twin runs)
FASTBIND_CYTHON_TRACE=1   build with line tracing (coverage / profilers see the core)
FASTBIND_CYTHON_ANNOTATE=1 write the `cython -a` HTML beside _core.pyx
"""

from __future__ import annotations

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

NO_EXTENSIONS = bool(os.environ.get("FASTBIND_NO_EXTENSIONS")) or (
    platform.python_implementation() != "CPython"
)
TRACE = bool(os.environ.get("FASTBIND_CYTHON_TRACE"))
ANNOTATE = bool(os.environ.get("FASTBIND_CYTHON_ANNOTATE"))


class OptionalBuildExt(build_ext):
    """The extension is optional: without a compiler the twin does the same work."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "pure"
            print(f"fastbind: compiled core not built ({exc}); pure build", file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"fastbind: compiled core not built ({exc}); pure build", file=sys.stderr)
        else:
            print("fastbind: accelerated build (compiled core)", file=sys.stderr)


def extensions() -> list[Extension]:
    if NO_EXTENSIONS:
        print("fastbind: pure build (FASTBIND_NO_EXTENSIONS)", file=sys.stderr)
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("fastbind: Cython missing; pure build", file=sys.stderr)
        return []
    macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if TRACE else []
    # On ELF (Linux), call CPython's functions through the GOT rather than PLT stubs:
    # the hot path calls dozens of them per binding call, and the stubs were a jump
    # and an instruction-cache line each (bench/README.md, "Time is not instructions").
    args = ["-fno-plt"] if sys.platform.startswith("linux") else []
    ext = Extension("fastbind._core", ["src/fastbind/_core.pyx"], define_macros=macros,
                    extra_compile_args=args)
    directives = {"language_level": "3", "embedsignature": True}
    if TRACE:
        directives["linetrace"] = True
    return cythonize([ext], compiler_directives=directives, annotate=ANNOTATE)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
