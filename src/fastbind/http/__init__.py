"""Serving: the HTTP/1.1 server (``server.py`` and its parts), the process supervisor,
and the raw HTTP conversions behind ``fastbind.embed`` (``raw.py``, ``_raw.pyx``).

The per-request path of the server (``COMPILED``: the exchange, the parser's callbacks,
the writer, the connection) is compiled from these same .py files (Cython's pure-Python
mode, setup.py) into extension modules of the same names, which Python imports in their
place. They are the one source of both: with ``FASTBIND_NO_EXTENSIONS=1`` set when the
process starts, the finder below has the .py files run instead, as in a pure build.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ExtensionFileLoader, ModuleSpec
from importlib.util import find_spec, spec_from_file_location
from types import ModuleType
from typing import Any

from ..core import NO_EXTENSIONS

__all__ = ("COMPILED", "info")

#: The modules compiled from their .py (setup.py's HTTP_COMPILED).
COMPILED = ("exchange", "parsing", "writer", "connection")
_HERE = os.path.dirname(os.path.abspath(__file__))


class _SourceFinder(MetaPathFinder):
    """Finds the .py of the compiled modules, ahead of the extension modules beside them."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in COMPILED:
            return None
        return spec_from_file_location(fullname, os.path.join(_HERE, f"{name}.py"))


if NO_EXTENSIONS and not any(isinstance(finder, _SourceFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _SourceFinder())


def info() -> dict[str, Any]:
    """Whether the server's per-request path runs compiled ("http": "compiled" or "pure")."""
    spec = find_spec(f"{__name__}.connection")
    compiled = spec is not None and isinstance(spec.loader, ExtensionFileLoader)
    return {"http": "compiled" if compiled else "pure"}
