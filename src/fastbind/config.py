"""fastbind.toml: Workers, their bindings and limits, read into a Runtime."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from . import workers
from .bindings import RemoteBinding, ServiceBinding, remote, service
from .cluster.members import Membership, Node
from .cluster.node import DEFAULT_FORGET_S, DEFAULT_REFRESH_S, ClusterConfig
from .durable import namespace_specs_from_config
from .errors import ConfigError
from .limits import Limits
from .namespaces import add_namespace
from .runtime import Runtime, set_config_loader

__all__ = (
    "Config", "WorkerConfig", "NamespaceConfig", "read_config", "build_runtime", "load_config",
    "binding_cycles",
)

_TOP_KEYS = ("limits", "workers", "namespaces", "cluster")
_CLUSTER_KEYS = ("nodes", "dns", "port", "scheme", "refresh_s", "forget_s")
_WORKER_KEYS = ("name", "main", "vars", "services", "durable_objects", "dispatch_namespaces")
_SERVICE_KEYS = ("binding", "service", "entrypoint", "props")
_REMOTE_KEYS = ("binding", "url")
_DISPATCH_KEYS = ("binding", "namespace")
_NAMESPACE_KEYS = (
    "name", "directory", "outbound", "limits", "max_loaded", "isolation", "memory_mb", "idle_s",
    "vars", "services",
)
_NAMESPACE_LIMIT_KEYS = ("cpu_ms", "subrequests")
_LIMIT_KEYS = tuple(f.name for f in dataclasses.fields(Limits))


@dataclass(frozen=True)
class WorkerConfig:
    """One ``[[workers]]`` table, checked but not imported yet."""

    name: str
    main: str
    vars: dict[str, Any]
    services: dict[str, ServiceBinding | RemoteBinding]
    # durable_objects = [{ binding = "ROOMS", class_name = "Room" }]: classes of main's module
    durable_objects: list[Any] = field(default_factory=list)
    # dispatch_namespaces = [{ binding = "DISPATCHER", namespace = "customers" }]
    dispatch_namespaces: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class NamespaceConfig:
    """One ``[[namespaces]]`` table: a dispatch namespace, its keys checked by type."""

    name: str
    directory: Path | None
    options: dict[str, Any]  # the other keys, as add_namespace takes them


@dataclass(frozen=True)
class Config:
    """A whole config file: where it is, its limits and its Workers in file order."""

    path: Path
    label: str  # the file as the user named it, for messages
    limits: Limits
    workers: tuple[WorkerConfig, ...]
    namespaces: tuple[NamespaceConfig, ...] = ()
    cluster: ClusterConfig | None = None  # [cluster]: the nodes this file's Workers run on

    @property
    def entry(self) -> str:
        """The Worker served by default: the first one in the file."""
        return self.workers[0].name


def load_config(path: str | os.PathLike[str], *, runtime_class: type[Runtime] = Runtime) -> Runtime:
    """A Runtime with every Worker of the config file at ``path``, its bindings resolved.

    Every error (TOML syntax, a wrong type, a missing or unknown key, a ``main`` that
    cannot be imported, a binding to an unknown service) is a ConfigError naming the
    file, the Worker and the key, raised before anything is served.
    """
    return build_runtime(read_config(path), runtime_class=runtime_class)


def read_config(path: str | os.PathLike[str]) -> Config:
    """Read and check the file's shape (types, required and unknown keys); imports nothing."""
    label = os.fspath(path)
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read the config file: {exc.strerror or exc}.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: the config file is not UTF-8 text: {exc}.") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{label}: invalid TOML: {exc}.") from None
    _check_keys(label, "the top level", data, _TOP_KEYS)
    limits = _read_limits(label, data.get("limits", {}))
    workers_data = data.get("workers")
    if workers_data is None:
        raise ConfigError(f"{label}: no Workers are defined; add a [[workers]] table.")
    if not isinstance(workers_data, list) or not all(isinstance(w, dict) for w in workers_data):
        raise ConfigError(
            f'{label}: "workers" must be an array of tables ([[workers]]), not {_kind(workers_data)}.'
        )
    if not workers_data:
        raise ConfigError(f"{label}: no Workers are defined; add a [[workers]] table.")
    workers: list[WorkerConfig] = []
    seen: set[str] = set()
    for index, table in enumerate(workers_data, start=1):
        worker = _read_worker(label, index, table)
        if worker.name in seen:
            raise ConfigError(f'{label}: Worker "{worker.name}" is defined twice.')
        seen.add(worker.name)
        workers.append(worker)
    namespaces = _read_namespaces(label, file.resolve().parent, data.get("namespaces", []), seen)
    defined = [n.name for n in namespaces]
    for worker in workers:
        for binding, target in worker.dispatch_namespaces.items():
            if target not in defined:
                raise ConfigError(
                    f'{label}: Worker "{worker.name}" dispatch namespace "{binding}" refers to '
                    f'namespace "{target}", which is not defined; {_suggest(target, defined, "[[namespaces]]")}'
                )
    cluster = _read_cluster(label, data["cluster"]) if "cluster" in data else None
    return Config(file.resolve(), label, limits, tuple(workers), namespaces, cluster)


def build_runtime(config: Config, *, runtime_class: type[Runtime] = Runtime) -> Runtime:
    """Import every Worker's ``main``, add it to a new Runtime and resolve the bindings."""
    runtime = runtime_class(limits=config.limits)
    folder = config.path.parent
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # main modules are found beside the config file
    importlib.invalidate_caches()
    label = config.label
    for ns in config.namespaces:
        try:
            add_namespace(runtime, ns.name, ns.directory, **ns.options)
        except ConfigError as exc:
            raise ConfigError(f"{label}: {exc}") from None
    for worker in config.workers:
        handler = _import_main(label, worker, folder)
        durable = None
        if worker.durable_objects:
            durable = namespace_specs_from_config(
                worker.name, worker.durable_objects, sys.modules[handler.__module__], source=label
            )
        try:
            runtime.add_worker(
                worker.name, handler, services=worker.services, vars=worker.vars,
                durable_objects=durable, dispatch_namespaces=worker.dispatch_namespaces or None,
            )
        except ConfigError as exc:
            raise ConfigError(f"{label}: {_worker_error(worker, exc)}") from None
    try:
        runtime.validate()
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    return runtime


def binding_cycles(config: Config) -> set[tuple[str, str]]:
    """The (Worker, binding) pairs that are part of a cycle of service bindings.

    Cycles are allowed (the depth limit stops runaway recursion at run time); ``fastbind
    check`` marks them so that a reader sees them.
    """
    edges = {
        w.name: {b: t.service for b, t in w.services.items() if isinstance(t, ServiceBinding)}
        for w in config.workers
    }

    def reaches(start: str, goal: str) -> bool:
        stack, seen = [start], set()
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(edges.get(node, {}).values())
        return False

    return {
        (worker, binding)
        for worker, bindings in edges.items()
        for binding, target in bindings.items()
        if reaches(target, worker)
    }


# -- reading the tables --------------------------------------------------------------------


def _read_limits(label: str, table: Any) -> Limits:
    if not isinstance(table, dict):
        raise ConfigError(f"{label}: [limits] must be a table, not {_kind(table)}.")
    _check_keys(label, "[limits]", table, _LIMIT_KEYS)
    try:
        return Limits(**table)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{label}: [limits] {str(exc).removeprefix('Limits.')}.") from None


def _read_cluster(label: str, table: Any) -> ClusterConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{label}: [cluster] must be a table, not {_kind(table)}.")
    _check_keys(label, "[cluster]", table, _CLUSTER_KEYS)
    nodes, dns = table.get("nodes"), table.get("dns")
    if (nodes is None) == (dns is None):
        raise ConfigError(
            f'{label}: [cluster] needs "nodes" (a list of the nodes) or "dns" (a name that lists '
            "them, as a Kubernetes headless Service does): one of the two."
        )
    if nodes is not None:
        if not isinstance(nodes, list) or not nodes:
            raise ConfigError(f'{label}: [cluster] "nodes" must be a non-empty array, not {_kind(nodes)}.')
        for key in ("port", "scheme", "refresh_s", "forget_s"):
            if key in table:
                raise ConfigError(f'{label}: [cluster] "{key}" goes with "dns", not with "nodes".')
        parsed = tuple(Node.parse(entry, f"{label}: [cluster] nodes[{i}]") for i, entry in enumerate(nodes))
        try:
            Membership(parsed)
        except ConfigError as exc:
            raise ConfigError(f"{label}: [cluster] {exc}.") from None
        return ClusterConfig(nodes=parsed)
    if not isinstance(dns, str) or not dns or any(c.isspace() for c in dns):
        raise ConfigError(f'{label}: [cluster] "dns" must be a host name, not {_kind(dns)}.')
    port = table.get("port")
    if port is not None and (type(port) is not int or not 1 <= port <= 65535):
        raise ConfigError(f'{label}: [cluster] "port" must be a port number (1..65535), not {_kind(port)}.')
    scheme = table.get("scheme", "http")
    if scheme not in ("http", "https"):
        raise ConfigError(f'{label}: [cluster] "scheme" must be "http" or "https", not {_kind(scheme)}.')
    refresh = table.get("refresh_s", DEFAULT_REFRESH_S)
    if isinstance(refresh, bool) or not isinstance(refresh, (int, float)) or not 0 < refresh <= 86400:
        raise ConfigError(f'{label}: [cluster] "refresh_s" must be seconds (more than 0), not {_kind(refresh)}.')
    forget = table.get("forget_s", DEFAULT_FORGET_S)
    if isinstance(forget, bool) or not isinstance(forget, (int, float)) or not 0 <= forget:
        raise ConfigError(f'{label}: [cluster] "forget_s" must be seconds (0 or more), not {_kind(forget)}.')
    return ClusterConfig(dns=dns, port=port, scheme=scheme, refresh_s=float(refresh), forget_s=float(forget))


def _read_worker(label: str, index: int, table: dict[str, Any]) -> WorkerConfig:
    name = table.get("name")
    if name is None:
        raise ConfigError(f'{label}: Worker #{index} has no "name".')
    if not isinstance(name, str) or not name:
        raise ConfigError(f'{label}: Worker #{index} "name" must be a non-empty string, not {_kind(name)}.')
    where = f'Worker "{name}"'
    _check_keys(label, where, table, _WORKER_KEYS)
    main = table.get("main")
    if main is None:
        raise ConfigError(f'{label}: {where} has no "main" (e.g. main = "{name}:Default").')
    if not isinstance(main, str) or not main.strip():
        raise ConfigError(f'{label}: {where} "main" must be a non-empty string, not {_kind(main)}.')
    vars_ = table.get("vars", {})
    if not isinstance(vars_, dict):
        raise ConfigError(f'{label}: {where} "vars" must be a table, not {_kind(vars_)}.')
    services_data = table.get("services", [])
    if not isinstance(services_data, list):
        raise ConfigError(
            f'{label}: {where} "services" must be an array of tables, not {_kind(services_data)}.'
        )
    services: dict[str, ServiceBinding | RemoteBinding] = {}
    for position, entry in enumerate(services_data):
        binding, spec = _read_binding(label, where, position, entry)
        if binding in services:
            raise ConfigError(f'{label}: {where} binding "{binding}" is defined twice.')
        if binding in vars_:
            raise ConfigError(f'{label}: {where} defines "{binding}" both as a binding and a var.')
        services[binding] = spec
    durable = table.get("durable_objects", [])
    dispatch = _read_dispatch(label, where, table.get("dispatch_namespaces", []))
    for binding in dispatch:
        if binding in services or binding in vars_:
            raise ConfigError(
                f'{label}: {where} defines "{binding}" both as a dispatch namespace and a binding or var.'
            )
    return WorkerConfig(name, main.strip(), dict(vars_), services, durable, dispatch)


def _read_dispatch(label: str, where: str, entries: Any) -> dict[str, str]:
    """``dispatch_namespaces = [{ binding = "DISPATCHER", namespace = "customers" }]``."""
    shape = '[{ binding = "DISPATCHER", namespace = "customers" }]'
    if not isinstance(entries, list):
        raise ConfigError(f'{label}: {where} "dispatch_namespaces" must be an array like {shape}, not {_kind(entries)}.')
    found: dict[str, str] = {}
    for position, entry in enumerate(entries):
        at = f"{where} dispatch_namespaces[{position}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{label}: {at} must be a table like {shape[1:-1]}, not {_kind(entry)}.")
        _check_keys(label, at, entry, _DISPATCH_KEYS)
        binding, namespace = entry.get("binding"), entry.get("namespace")
        if not isinstance(binding, str) or not binding.isidentifier():
            raise ConfigError(f'{label}: {at} "binding" must be an identifier string, not {binding!r}.')
        if not isinstance(namespace, str) or not namespace:
            raise ConfigError(f'{label}: {at} "namespace" must name a [[namespaces]] table, not {namespace!r}.')
        if binding in found:
            raise ConfigError(f'{label}: {where} binding "{binding}" is defined twice.')
        found[binding] = namespace
    return found


def _read_namespaces(label: str, folder: Path, tables: Any, workers: set[str]) -> tuple[NamespaceConfig, ...]:
    """The ``[[namespaces]]`` tables: shapes and names here, values by ``add_namespace``."""
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f'{label}: "namespaces" must be an array of tables ([[namespaces]]), not {_kind(tables)}.')
    found: list[NamespaceConfig] = []
    for index, table in enumerate(tables, start=1):
        name = table.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f'{label}: namespace #{index} needs a "name" (a non-empty string), not {_kind(name)}.')
        where = f'namespace "{name}"'
        _check_keys(label, where, table, _NAMESPACE_KEYS)
        if any(n.name == name for n in found):
            raise ConfigError(f'{label}: {where} is defined twice.')
        directory = table.get("directory")
        if directory is not None and not isinstance(directory, str):
            raise ConfigError(f'{label}: {where} "directory" must be a path (a string), not {_kind(directory)}.')
        options = {k: v for k, v in table.items() if k not in ("name", "directory")}
        limits = options.get("limits")
        if limits is not None:
            if not isinstance(limits, dict):
                raise ConfigError(f'{label}: {where} "limits" must be a table, not {_kind(limits)}.')
            _check_keys(label, f"{where} limits", limits, _NAMESPACE_LIMIT_KEYS)
        if not isinstance(options.get("vars", {}), dict):
            raise ConfigError(f'{label}: {where} "vars" must be a table, not {_kind(options["vars"])}.')
        if not isinstance(options.get("services", []), list):
            raise ConfigError(
                f'{label}: {where} "services" must be an array of tables, not {_kind(options["services"])}.'
            )
        if "services" in options:
            services = {}
            for position, entry in enumerate(options["services"]):
                binding, spec = _read_binding(label, where, position, entry)
                services[binding] = spec
            options["services"] = services
        outbound = options.get("outbound")
        if isinstance(outbound, str) and outbound not in workers:
            raise ConfigError(
                f'{label}: {where} "outbound" names Worker "{outbound}", which is not defined; '
                f'{_suggest(outbound, sorted(workers), "[[workers]]")}'
            )
        path = None if directory is None else folder / directory  # beside the config file
        found.append(NamespaceConfig(name, path, options))
    return tuple(found)


def _suggest(name: str, choices: list[str], table: str) -> str:
    close = difflib.get_close_matches(name, choices, n=1)
    return f'did you mean "{close[0]}"?' if close else f"define it in a {table} table."


def _read_binding(label: str, where: str, position: int, entry: Any) -> tuple[str, ServiceBinding | RemoteBinding]:
    at = f"{where} services[{position}]"
    if not isinstance(entry, dict):
        raise ConfigError(
            f'{label}: {at} must be a table such as {{ binding = "AUTH", service = "auth" }}, '
            f"not {_kind(entry)}."
        )
    binding = entry.get("binding")
    if binding is None:
        raise ConfigError(f'{label}: {at} has no "binding" (the name the Worker uses, e.g. "AUTH").')
    if not isinstance(binding, str) or not binding.isidentifier():
        raise ConfigError(f'{label}: {at} "binding" must be an identifier string, not {binding!r}.')
    at = f'{where} binding "{binding}"'
    if "url" in entry:
        if "service" in entry:
            raise ConfigError(f'{label}: {at} has both "service" and "url"; give one of them.')
        _check_keys(label, at + " (a remote binding)", entry, _REMOTE_KEYS)
        url = entry["url"]
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise ConfigError(f'{label}: {at} "url" must be an http:// or https:// URL, not {url!r}.')
        try:
            return binding, remote(url)
        except TypeError:
            raise ConfigError(f'{label}: {at} "url" is not a valid URL: {url!r}.') from None
    if "service" not in entry:
        raise ConfigError(
            f'{label}: {at} needs "service" (a Worker of this file) or "url" (a Worker served elsewhere).'
        )
    _check_keys(label, at, entry, _SERVICE_KEYS)
    target = entry["service"]
    if not isinstance(target, str) or not target:
        raise ConfigError(f'{label}: {at} "service" must be a Worker name (a string), not {_kind(target)}.')
    entrypoint = entry.get("entrypoint")
    if entrypoint is not None and (not isinstance(entrypoint, str) or not entrypoint.isidentifier()):
        raise ConfigError(f'{label}: {at} "entrypoint" must be a class name (a string), not {entrypoint!r}.')
    props = entry.get("props", {})
    if not isinstance(props, dict):
        raise ConfigError(f'{label}: {at} "props" must be a table, not {_kind(props)}.')
    return binding, service(target, entrypoint=entrypoint, props=props)


def _check_keys(label: str, where: str, table: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f'did you mean "{close[0]}"?' if close else "expected one of: " + ", ".join(allowed)
            raise ConfigError(f'{label}: {where} has an unknown key "{key}"; {hint}')


# -- importing main ----------------------------------------------------------------------------


def _import_main(label: str, worker: WorkerConfig, folder: Path) -> Any:
    """The handler named by ``main``: ``module:attribute``, a module, or a ``.py`` file."""
    main = worker.main
    where = f'{label}: Worker "{worker.name}" main "{main}"'
    if main.endswith(".py") or "/" in main or os.sep in main:
        return _load_python_worker(where, folder / main)
    module_name, colon, attribute = main.partition(":")
    if colon and (not attribute or not all(p.isidentifier() for p in attribute.split("."))):
        raise ConfigError(f'{where} must be "module:attribute", e.g. "{worker.name}:Default".')
    if not all(part.isidentifier() for part in module_name.split(".")):
        raise ConfigError(f'{where} must be "module:attribute", e.g. "{worker.name}:Default".')
    if not colon:  # a Python Worker's module: Default or on_fetch, as Cloudflare picks
        workers.install()  # its code imports the SDK as `workers`
        return _load_python_worker(where, _import_module(where, module_name, folder))
    module = _import_module(where, module_name, folder)
    value: Any = module
    for part in attribute.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ConfigError(f'{where}: module "{module_name}" has no attribute "{attribute}".') from None
    return value


def _import_module(where: str, name: str, folder: Path) -> Any:
    top = name.partition(".")[0]
    loaded = sys.modules.get(top)
    if loaded is not None:
        # Another module of that name is imported already: an import would quietly
        # return it instead of the one beside the config file.
        origin = getattr(loaded, "__file__", None)
        local = folder / top
        if origin and (local.is_dir() or local.with_suffix(".py").is_file()):
            if not Path(origin).resolve().is_relative_to(folder):
                raise ConfigError(
                    f'{where}: a different module "{top}" is already imported (from {origin}); '
                    "rename one of the two."
                )
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(f'{where}: no module named "{name}" (looked in {folder} and sys.path).') from None
        raise ConfigError(f"{where}: importing {name} failed: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:
        raise ConfigError(f"{where}: importing {name} failed: {type(exc).__name__}: {exc}") from exc


def _load_python_worker(where: str, module_or_path: Any) -> Any:
    if isinstance(module_or_path, Path) and not module_or_path.is_file():
        raise ConfigError(f"{where}: no such file {module_or_path}.")
    try:
        return workers.load(module_or_path)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except Exception as exc:
        raise ConfigError(f"{where}: importing failed: {type(exc).__name__}: {exc}") from exc


def _worker_error(worker: WorkerConfig, exc: ConfigError) -> str:
    message = str(exc)
    if "handler must be" in message:
        return (
            f'Worker "{worker.name}" main "{worker.main}" is not a Worker: it must name a '
            "WorkerEntrypoint subclass or an async function (request, env, ctx)."
        )
    return message


def _kind(value: object) -> str:
    """The TOML name of a value's type, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return f"a string ({value!r})" if value else "an empty string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, (datetime, date, time)):
        return "a date or time"
    return type(value).__name__


set_config_loader(load_config)  # Runtime.from_config reads files with it
