"""Tenant Workers' code: found in a namespace's directory, or given at run time, loaded
into a module of its own, and watched for changes.

A tenant Worker named ``acme`` is ``<directory>/acme.py`` or the package
``<directory>/acme/`` (its ``__init__.py``); ``put("acme", source)`` gives it as
module source instead. Its handler is the module's ``Default`` class (a
WorkerEntrypoint subclass) or, failing that, its ``async def fetch(request, env,
ctx)``. Each load makes a fresh module, registered in ``sys.modules`` under a name of
its own while it is loaded (a package's relative imports need that), so a new version
never shares state with the old one, and tenants never share modules.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..entrypoint import WorkerEntrypoint
from ..errors import ConfigError

__all__ = ("TenantSource", "find_source", "load_handler", "unload", "valid_name", "code_signature")

# A tenant's name is a file name: letters, digits, "_", "-" and "." (not first, no "..").
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_generation = itertools.count(1)


def valid_name(name: object) -> bool:
    """Whether ``name`` can name a tenant Worker (names come from clients: no paths)."""
    return (
        type(name) is str and _NAME.fullmatch(name) is not None
        and ".." not in name and not name.endswith((".py", "."))
    )


@dataclass(frozen=True, slots=True)
class TenantSource:
    """Where a tenant Worker's code is: a file, a package directory, module source
    text, or a handler object given as it is."""

    path: Path | None = None      # a .py file or a package directory
    text: str | None = None       # module source given to put()
    handler: Any = None           # a WorkerEntrypoint subclass or an async function

    @property
    def package(self) -> bool:
        return self.path is not None and self.path.is_dir()


def find_source(directory: Path | None, name: str) -> TenantSource | None:
    """Tenant ``name``'s code in ``directory``: ``name.py`` or ``name/__init__.py``."""
    if directory is None:
        return None
    package = directory / name
    if (package / "__init__.py").is_file():
        return TenantSource(path=package)
    module = directory / f"{name}.py"
    if module.is_file():
        return TenantSource(path=module)
    return None


def code_signature(source: TenantSource) -> tuple[Any, ...] | None:
    """What changes when the tenant's files change (None: the file is gone)."""
    path = source.path
    if path is None:
        return ()
    try:
        if not source.package:
            st = os.stat(path)
            return (st.st_mtime_ns, st.st_size, st.st_ino)
        files = []
        for folder, _dirs, names in os.walk(path):
            for file in names:
                if file.endswith(".py"):
                    st = os.stat(os.path.join(folder, file))
                    files.append((file, st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(sorted(files)) if files else None
    except OSError:
        return None


def load_handler(namespace: str, name: str, source: TenantSource) -> tuple[Any, list[str]]:
    """The tenant's handler, and the ``sys.modules`` names its load registered.

    Raises ConfigError naming the tenant when its code cannot be loaded or has no handler.
    """
    where = f'Worker "{name}" of dispatch namespace "{namespace}"'
    if source.handler is not None:
        return check_handler(where, source.handler), []
    module_name = f"fastbind_tenant_{next(_generation)}"
    try:
        module = _exec_module(module_name, source)
    except ConfigError:
        unload([module_name])
        raise
    except BaseException as exc:
        unload([module_name])
        if not isinstance(exc, Exception):
            raise
        raise ConfigError(f"{where} failed to load: {type(exc).__name__}: {exc}") from exc
    handler = getattr(module, "Default", None)
    if handler is None:
        handler = getattr(module, "fetch", None)
    if handler is None:
        unload([module_name])
        raise ConfigError(
            f'{where} defines neither a "Default" WorkerEntrypoint class nor an '
            '"async def fetch(request, env, ctx)" function.'
        )
    try:
        handler = check_handler(where, handler)
    except ConfigError:
        unload([module_name])
        raise
    return handler, [module_name]


def check_handler(where: str, handler: Any) -> Any:
    if isinstance(handler, type) and issubclass(handler, WorkerEntrypoint):
        return handler
    if inspect.iscoroutinefunction(handler):
        return handler
    raise ConfigError(
        f"{where}: its handler must be a WorkerEntrypoint subclass or an async function "
        f"(request, env, ctx), not {handler!r}."
    )


def unload(module_names: list[str]) -> None:
    """Forget the modules of a load (and their submodules) so that they can be freed."""
    for name in module_names:
        prefix = name + "."
        for key in [k for k in sys.modules if k == name or k.startswith(prefix)]:
            del sys.modules[key]


def _exec_module(module_name: str, source: TenantSource) -> ModuleType:
    if source.text is not None:
        module = ModuleType(module_name)
        module.__file__ = f"<{module_name}>"
        code = compile(source.text, module.__file__, "exec")
    else:
        path = source.path
        assert path is not None
        file = path / "__init__.py" if source.package else path
        locations = [str(path)] if source.package else None
        spec = importlib.util.spec_from_file_location(
            module_name, file, submodule_search_locations=locations
        )
        if spec is None:
            raise ConfigError(f"{file} cannot be imported.")
        module = importlib.util.module_from_spec(spec)
        # Compiled from the file itself, never from __pycache__: a cached copy is
        # checked by whole seconds and size, and an edit within the second would be missed.
        code = compile(file.read_bytes(), str(file), "exec")
    sys.modules[module_name] = module  # a package's relative imports find it here
    exec(code, module.__dict__)  # noqa: S102 - the tenant's own code
    return module
