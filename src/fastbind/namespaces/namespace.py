"""A dispatch namespace: its options, which tenant Workers it holds, and the binding to it.

``env.DISPATCHER`` (a ``Dispatcher``) has one method, ``get(name, limits=None,
props=None)``, that returns a Fetcher for tenant Worker ``name``. The tenants
themselves live in a *tenant set*: in this process (``tenants.py``) or each in a
process of its own (``process.py``, ``isolation = "process"``). Which tenants exist is
decided here: those ``put()`` at run time, else the files of the namespace's directory,
minus those ``delete()``d.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..bindings import RemoteBinding, ServiceBinding, normalize_binding
from ..errors import ConfigError
from .loading import TenantSource, check_handler, find_source, valid_name

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = (
    "DispatchNamespace",
    "Dispatcher",
    "NamespaceOptions",
    "ISOLATIONS",
    "LIMIT_KEYS",
    "DEFAULT_MAX_LOADED",
    "DEFAULT_MAX_PROCESSES",
    "DEFAULT_MEMORY_MB",
    "DEFAULT_IDLE_S",
    "RELOAD_CHECK_S",
)

ISOLATIONS = ("none", "process")
LIMIT_KEYS = ("cpu_ms", "subrequests")
DEFAULT_MAX_LOADED = 1_000
DEFAULT_MAX_PROCESSES = 32     # isolation = "process": a process is tens of MB
DEFAULT_MEMORY_MB = 256
DEFAULT_IDLE_S = 60.0
RELOAD_CHECK_S = 1.0           # a tenant's files are looked at, at most, this often


@dataclass(frozen=True)
class NamespaceOptions:
    """One namespace as declared (``add_namespace`` or a ``[[namespaces]]`` table), checked."""

    name: str
    directory: Path | None = None
    outbound: str | None = None
    cpu_ms: float | None = None
    subrequests: int | None = None
    max_loaded: int = DEFAULT_MAX_LOADED
    isolation: str = "none"
    memory_mb: int = DEFAULT_MEMORY_MB
    idle_s: float = DEFAULT_IDLE_S
    vars: dict[str, Any] = field(default_factory=dict)
    services: dict[str, ServiceBinding | RemoteBinding] = field(default_factory=dict)


def check_options(
    name: str,
    directory: str | Path | None,
    *,
    outbound: str | None = None,
    limits: Mapping[str, Any] | None = None,
    max_loaded: int | None = None,
    isolation: str = "none",
    memory_mb: int = DEFAULT_MEMORY_MB,
    idle_s: float = DEFAULT_IDLE_S,
    vars: Mapping[str, Any] | None = None,
    services: Mapping[str, Any] | None = None,
) -> NamespaceOptions:
    """The options of namespace ``name``, or ConfigError naming the one that is wrong."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"A dispatch namespace name must be a non-empty str, not {name!r}.")
    where = f'Dispatch namespace "{name}"'
    path = None
    if directory is not None:
        if not isinstance(directory, (str, Path)):
            raise ConfigError(f'{where} "directory" must be a path, not {type(directory).__name__}.')
        path = Path(directory).resolve()
        if not path.is_dir():
            raise ConfigError(f'{where} "directory" {str(path)!r} is not a directory.')
    if outbound is not None and (not isinstance(outbound, str) or not outbound):
        raise ConfigError(f'{where} "outbound" must name a Worker (a str), not {outbound!r}.')
    cpu_ms, subrequests = check_limits(where, limits)
    if isolation not in ISOLATIONS:
        raise ConfigError(f'{where} "isolation" must be "none" or "process", not {isolation!r}.')
    if max_loaded is None:
        max_loaded = DEFAULT_MAX_PROCESSES if isolation == "process" else DEFAULT_MAX_LOADED
    if type(max_loaded) is not int or max_loaded < 1:
        raise ConfigError(f'{where} "max_loaded" must be a positive int, not {max_loaded!r}.')
    if type(memory_mb) is not int or memory_mb < 32:
        raise ConfigError(f'{where} "memory_mb" must be an int of at least 32, not {memory_mb!r}.')
    if isinstance(idle_s, bool) or not isinstance(idle_s, (int, float)) or not 0 < idle_s < math.inf:
        raise ConfigError(f'{where} "idle_s" must be a positive number of seconds, not {idle_s!r}.')
    values = dict(vars or {})
    for key in values:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where} has a var with an invalid name {key!r}.")
    bindings: dict[str, ServiceBinding | RemoteBinding] = {}
    for binding, declaration in (services or {}).items():
        if not isinstance(binding, str) or not binding:
            raise ConfigError(f"{where} has a binding with an invalid name {binding!r}.")
        if binding in values:
            raise ConfigError(f'{where} defines "{binding}" both as a binding and a var.')
        bindings[binding] = normalize_binding(f"{name}/*", binding, declaration)
    if isolation == "process":
        if outbound is not None:
            raise ConfigError(
                f'{where} has isolation = "process" and an "outbound" Worker: a Worker in '
                "a process of its own would reach the network without it; drop one of the two."
            )
        local = [b for b, d in bindings.items() if isinstance(d, ServiceBinding)]
        if local:
            raise ConfigError(
                f'{where} has isolation = "process", so its Workers cannot reach this '
                f'process\'s Workers: binding "{local[0]}" must be a remote one (a url).'
            )
    return NamespaceOptions(
        name, path, outbound, cpu_ms, subrequests, max_loaded, isolation,
        memory_mb, float(idle_s), values, bindings,
    )


def check_limits(where: str, limits: Mapping[str, Any] | None) -> tuple[Any, Any]:
    """``limits={"cpu_ms": ..., "subrequests": ...}`` checked: (cpu_ms, subrequests)."""
    if limits is None:
        return None, None
    if not isinstance(limits, Mapping):
        raise ConfigError(f'{where} "limits" must map cpu_ms and subrequests, not {limits!r}.')
    for key in limits:
        if key not in LIMIT_KEYS:
            close = difflib.get_close_matches(str(key), LIMIT_KEYS, n=1)
            hint = f'did you mean "{close[0]}"?' if close else "expected cpu_ms or subrequests"
            raise ConfigError(f'{where} "limits" has an unknown key "{key}"; {hint}')
    cpu_ms, subrequests = limits.get("cpu_ms"), limits.get("subrequests")
    if cpu_ms is not None and (
        isinstance(cpu_ms, bool) or not isinstance(cpu_ms, (int, float)) or not 0 < cpu_ms < math.inf
    ):
        raise ConfigError(f'{where} "limits" cpu_ms must be a number > 0, not {cpu_ms!r}.')
    if subrequests is not None and (type(subrequests) is not int or subrequests < 0):
        raise ConfigError(f'{where} "limits" subrequests must be an int >= 0, not {subrequests!r}.')
    return cpu_ms, subrequests


def lower(a: Any, b: Any) -> Any:
    """The lower of two limits, None being no limit."""
    if a is None:
        return b
    return a if b is None else min(a, b)


class TenantSet(Protocol):
    """Where a namespace's tenant Workers run (tenants.py, process.py)."""

    def make_get(self) -> Callable[..., Any]: ...
    def get(self, name: str, limits: Mapping[str, Any] | None = None, props: Any = None) -> Any: ...
    def forget(self, name: str) -> None: ...
    def loaded(self) -> tuple[str, ...]: ...
    async def aclose(self) -> None: ...


class DispatchNamespace:
    """A dispatch namespace of one Runtime: ``runtime.namespace(name)``.

    ``put(name, code)`` adds or replaces a tenant Worker at run time and ``delete(name)``
    removes one; both apply from the next ``get``. ``loaded`` lists the tenants held now.
    """

    def __init__(self, runtime: Runtime, options: NamespaceOptions) -> None:
        self.runtime = runtime
        self.options = options
        self._put: dict[str, tuple[TenantSource, dict[str, Any]]] = {}
        self._deleted: set[str] = set()
        self.tenants: TenantSet  # attach() gives them, and makes the dispatcher
        self.dispatcher: Dispatcher

    @property
    def name(self) -> str:
        return self.options.name

    def attach(self, tenants: TenantSet) -> None:
        self.tenants = tenants
        self.dispatcher = Dispatcher(self)

    def source(self, name: str) -> tuple[TenantSource, dict[str, Any]] | None:
        """Tenant ``name``'s code and its own vars, or None when the namespace has no such Worker."""
        if not valid_name(name) or name in self._deleted:
            return None
        given = self._put.get(name)
        if given is not None:
            return given
        found = find_source(self.options.directory, name)
        return None if found is None else (found, {})

    def put(self, name: str, code: Any, *, vars: Mapping[str, Any] | None = None) -> None:
        """Add or replace tenant Worker ``name``: module source (str), a path to a file or
        package, or a handler (a WorkerEntrypoint subclass or an async function).

        ``vars`` are added to the namespace's for this Worker. Requests already running
        finish on the code they started with; the next ``get`` has the new one.
        """
        if not valid_name(name):
            raise ConfigError(
                f'Dispatch namespace "{self.name}": {name!r} cannot name a Worker '
                "(letters, digits, _, - and ., as a file name)."
            )
        if isinstance(code, str):
            source = TenantSource(text=code)
        elif isinstance(code, Path):
            code = code.resolve()  # a tenant's own process starts in another directory
            source = TenantSource(path=code)
            if not (code.is_file() or (code / "__init__.py").is_file()):
                raise ConfigError(f'Dispatch namespace "{self.name}": {code} is not a module or a package.')
        else:
            source = TenantSource(handler=check_handler(f'Worker "{name}"', code))
            if self.options.isolation == "process":
                raise ConfigError(
                    f'Dispatch namespace "{self.name}" runs its Workers in processes of their '
                    "own: give put() module source or a path, not a handler object."
                )
        values = dict(vars or {})
        self._put[name] = (source, values)
        self._deleted.discard(name)
        self.tenants.forget(name)

    def delete(self, name: str) -> bool:
        """Remove tenant Worker ``name`` (until it is put again); False if there was none."""
        existed = self.source(name) is not None
        self._put.pop(name, None)
        if valid_name(name):
            self._deleted.add(name)
        self.tenants.forget(name)
        return existed

    def names(self) -> list[str]:
        """Every tenant Worker's name: those put, and the directory's, minus those deleted."""
        found = set(self._put)
        directory = self.options.directory
        if directory is not None:
            for entry in directory.iterdir():
                stem = entry.name.removesuffix(".py") if entry.is_file() else entry.name
                if find_source(directory, stem) is not None and valid_name(stem):
                    found.add(stem)
        return sorted(found - self._deleted)

    @property
    def loaded(self) -> tuple[str, ...]:
        """The tenant Workers held now (loaded modules or running processes), least recently used first."""
        return self.tenants.loaded()

    def __repr__(self) -> str:
        return f"<DispatchNamespace {self.name} isolation={self.options.isolation}>"


class Dispatcher:
    """``env.DISPATCHER``: ``get(name, limits=None, props=None)`` returns a Fetcher for
    the namespace's Worker ``name`` (fetch and RPC, as any binding).

    ``limits={"cpu_ms": ..., "subrequests": ...}`` applies to this call only, with the
    namespace's own limits: the lower of the two counts. An unknown ``name`` raises
    WorkerNotFoundError ("Worker not found.") when the Fetcher is used.
    """

    __slots__ = ("get", "_namespace")

    def __init__(self, namespace: DispatchNamespace) -> None:
        self._namespace = namespace
        # The tenant set's own function: env.DISPATCHER.get(...) is one call.
        self.get = namespace.tenants.make_get()

    def __repr__(self) -> str:
        return f"<Dispatcher of namespace {self._namespace.name}>"
