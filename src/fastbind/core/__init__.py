"""The core: the compiled module ``_core`` or its pure-Python twin ``_twin``, picked once.

``impl`` is the core new Runtimes run on: the compiled one, unless the package was
built without it (``FASTBIND_NO_EXTENSIONS=1`` at install, or an interpreter other
than CPython) or ``FASTBIND_NO_EXTENSIONS=1`` is set now. A compiled module that is
there but fails to load is an error, not a reason to run the twin. docs/design.md
("The compiled core and its twin") describes both, and the fast paths.
"""

from __future__ import annotations

import os
import platform
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import _twin as twin

NO_EXTENSIONS = bool(os.environ.get("FASTBIND_NO_EXTENSIONS"))

compiled: ModuleType | None
if TYPE_CHECKING or NO_EXTENSIONS:
    compiled = None
else:
    try:
        from . import _core as compiled
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}._core":
            raise
        compiled = None  # a pure build: FASTBIND_NO_EXTENSIONS=1 when it was installed

impl: ModuleType = twin if compiled is None else compiled

__all__ = ("impl", "compiled", "twin", "NO_EXTENSIONS", "current_invocation", "info")


def current_invocation() -> Any:
    """The invocation whose code runs now, on whichever core runs it, or None."""
    if compiled is not None:
        inv = compiled.current_invocation()
        if inv is not None:
            return inv
    return twin.current_invocation()


def info() -> dict[str, Any]:
    """Which core new Runtimes run on, on which interpreter, with which fast paths."""
    paths = impl.fast_paths()
    return {
        "core": "compiled" if impl is compiled and compiled is not None else "pure",
        "compiled_available": compiled is not None,
        "no_extensions": NO_EXTENSIONS,
        "fast_paths": paths["on"],
        "fast_paths_built": paths["built"],
        "clock": paths["clock"],
        "thread_cpu_clock": paths["thread_cpu_clock"],
        "interpreter": f"{platform.python_implementation()} {platform.python_version()}",
        "free_threaded": not bool(getattr(sys, "_is_gil_enabled", lambda: True)()),
        "platform": f"{sys.platform} {platform.machine()}",
    }
