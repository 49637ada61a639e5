"""Build of fastbind: the compiled core (Cython), or the pure-Python one when asked for.

FASTBIND_NO_EXTENSIONS=1    build no extension: the pure-Python core runs (chosen, never a
                            fallback; interpreters other than CPython always get it)
FASTBIND_CYTHON_TRACE=1     build with line tracing (coverage and profilers see the core)
FASTBIND_CYTHON_ANNOTATE=1  write the ``cython -a`` HTML beside each .pyx

A compile that fails fails the build, with the compiler's output above this script's
message naming the way out. Each build starts from an empty build directory, so a
module or an extension left there by an earlier build can never be shipped.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys

from setuptools import Extension, setup
from setuptools.command.build import build
from setuptools.command.build_ext import build_ext

PURE = bool(os.environ.get("FASTBIND_NO_EXTENSIONS")) or platform.python_implementation() != "CPython"
TRACE = bool(os.environ.get("FASTBIND_CYTHON_TRACE"))
ANNOTATE = bool(os.environ.get("FASTBIND_CYTHON_ANNOTATE"))

FAILED = """
fastbind: building the compiled core ({name}) failed: {error}
fastbind: the compiler's output above says why. A C compiler and the Python headers
fastbind: are needed (python3-dev or python3-devel, Xcode command line tools on macOS).
fastbind: To install the pure-Python core instead (the same behaviour, about 4x slower
fastbind: per binding call), set FASTBIND_NO_EXTENSIONS=1:
fastbind:     FASTBIND_NO_EXTENSIONS=1 pip install fastbind
"""


class CleanBuild(build):
    """Start from an empty build directory: nothing of an earlier build is shipped."""

    def run(self) -> None:
        for stale in (self.build_lib, self.build_temp):
            shutil.rmtree(stale, ignore_errors=True)
        super().run()


class StrictBuildExt(build_ext):
    """Fail the build, with the way out, when an extension does not compile."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # any compiler or linker failure
            raise SystemExit(FAILED.format(name=ext.name, error=exc)) from exc


def extensions() -> list[Extension]:
    if PURE:
        print("fastbind: pure-Python build (FASTBIND_NO_EXTENSIONS)", file=sys.stderr)
        return []
    from Cython.Build import cythonize

    macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if TRACE else []
    # On ELF (Linux), call CPython's functions through the GOT rather than PLT stubs:
    # the hot path calls dozens of them per binding call.
    args = ["-fno-plt"] if sys.platform.startswith("linux") else []
    core_headers = ["src/fastbind/core"]
    modules = [
        Extension("fastbind.core._core", ["src/fastbind/core/_core.pyx"],
                  include_dirs=core_headers, define_macros=macros, extra_compile_args=args),
        Extension("fastbind.http._raw", ["src/fastbind/http/_raw.pyx"],
                  include_dirs=core_headers, define_macros=macros, extra_compile_args=args),
    ]
    directives = {"language_level": "3", "embedsignature": True}
    if TRACE:
        directives["linetrace"] = True
    return cythonize(modules, compiler_directives=directives, annotate=ANNOTATE,
                     include_path=["src"])


setup(ext_modules=extensions(), cmdclass={"build": CleanBuild, "build_ext": StrictBuildExt})
