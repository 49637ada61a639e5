"""Picks the core: the compiled ``_core`` unless absent, disabled or type-checking."""

from __future__ import annotations

import os
import platform
from typing import TYPE_CHECKING

from . import _core_py

NO_EXTENSIONS = bool(os.environ.get("FASTBIND_NO_EXTENSIONS"))

if TYPE_CHECKING or NO_EXTENSIONS or platform.python_implementation() != "CPython":
    core = _core_py
    compiled = None
else:
    try:
        from . import _core as compiled
    except ImportError:  # built without a compiler: the twin does the same work
        compiled = None
        core = _core_py
    else:
        core = compiled

__all__ = ("core", "compiled", "NO_EXTENSIONS")
