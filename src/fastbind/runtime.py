"""Runtime: the Worker registry, binding resolution, and the entry points of top-level requests.

The Runtime owns Workers and their envs; the core owns the rules of a call and of a
pipeline's end; the DispatchPolicy (policy.py) what failures become; extensions
(extension.py) add Durable Objects, outbound fetch and pass-through. docs/design.md
has the whole picture.
"""

from __future__ import annotations

import asyncio
import copy
import difflib
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from . import core as _cores
from .bindings import ServiceBinding, WorkerSpec, normalize_binding
from .entrypoint import WorkerEntrypoint
from .errors import ConfigError
from .extension import Extension, registered
from .limits import Limits
from .policy import DispatchPolicy, PipelineObserver, PipelineReport
from .request import Request
from .response import Response

__all__ = (
    "Runtime",
    "RuntimeOptions",
    "PipelineReport",
    "PipelineObserver",
    "current_runtime",
    "DEFAULT_FETCH_TIMEOUT_S",
    "DEFAULT_DURABLE_IDLE_S",
    "set_config_loader",
)

E = TypeVar("E", bound=Extension)

DEFAULT_FETCH_TIMEOUT_S = 30.0
DEFAULT_DURABLE_IDLE_S = 60.0


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """What ``Runtime(...)`` was given for its extensions, which check it when made."""

    origin: Any = None
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT_S
    durable_dir: str | os.PathLike[str] | None = None
    durable_idle_s: float | None = DEFAULT_DURABLE_IDLE_S


# fastbind.config registers how a config file becomes a Runtime (Runtime.from_config).
_config_loader: Callable[..., Any] | None = None


def set_config_loader(loader: Callable[..., Any]) -> None:
    global _config_loader
    _config_loader = loader


class Runtime:
    """Holds Workers and their bindings; ``dispatch`` serves one top-level request.

    Workers may be added in any order: bindings are resolved on first use (the first
    ``dispatch`` or ``entry``, or an explicit ``validate()``), and a ConfigError
    raises from there.
    """

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        origin: Any = None,
        on_pipeline_end: Callable[[PipelineReport], Any] | None = None,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT_S,
        durable_dir: str | os.PathLike[str] | None = None,
        durable_idle_s: float | None = DEFAULT_DURABLE_IDLE_S,
    ) -> None:
        if limits is None:
            limits = Limits()
        elif not isinstance(limits, Limits):
            raise TypeError(f"limits must be a fastbind.Limits, not {type(limits).__name__}")
        self._limits = limits
        self.options = RuntimeOptions(origin, fetch_timeout, durable_dir, durable_idle_s)
        self._core = core = _cores.impl
        self._policy = DispatchPolicy(self, core)
        self._policy.set_hook(on_pipeline_end)
        self._specs: dict[str, WorkerSpec] = {}
        self._handles: dict[str, Any] = {}
        self._entries: dict[str, Any] = {}
        self._entrypoint_handles: dict[tuple[str, str], Any] = {}
        self._closers: list[Callable[[], Any]] = []
        # Each extension checks its options here: a wrong one fails the constructor.
        self._extensions: dict[type[Extension], Extension] = {}
        for kind in registered():
            self._extensions[kind] = kind(self)
        # Asked at every global fetch(): only the extensions that serve the hook.
        self._interceptors = tuple(
            extension.fetch_interceptor for extension in self._extensions.values()
            if type(extension).fetch_interceptor is not Extension.fetch_interceptor
        )

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def core(self) -> Any:
        """The core this Runtime runs on (``fastbind.core.compiled`` or ``.twin``).

        For extensions: it makes the handles and child calls of in-process targets.
        """
        return self._core

    @property
    def implementation(self) -> str:
        """"c" when the compiled core runs this Runtime, "py" for the pure twin."""
        return str(self._core.IMPLEMENTATION)

    @property
    def fetch_timeout(self) -> float:
        """Default of ``fetch(timeout=...)`` in this Runtime's Workers, in seconds."""
        return float(self.options.fetch_timeout)

    @property
    def on_pipeline_end(self) -> Callable[[PipelineReport], Any] | None:
        """Called with a PipelineReport when each pipeline has ended (None: no report)."""
        return self._policy.hook

    @on_pipeline_end.setter
    def on_pipeline_end(self, hook: Callable[[PipelineReport], Any] | None) -> None:
        self._policy.set_hook(hook)

    @property
    def observers(self) -> tuple[PipelineObserver, ...]:
        """The pipeline observers added with ``add_observer`` (tracing, metrics)."""
        return self._policy.observers

    def add_observer(self, observer: PipelineObserver) -> None:
        """Tell ``observer`` of every pipeline from now on (see ``PipelineObserver``)."""
        if not isinstance(observer, PipelineObserver):
            raise TypeError(f"an observer must be a fastbind.PipelineObserver, not {type(observer).__name__}")
        if observer not in self._policy.observers:
            self._policy.set_observers((*self._policy.observers, observer))

    def remove_observer(self, observer: PipelineObserver) -> None:
        self._policy.set_observers(tuple(o for o in self._policy.observers if o is not observer))

    @property
    def workers(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def call_limits(self, *, cpu_ms: float | None = None, subrequests: int | None = None) -> Any:
        """Limits for each call made through a binding (``core.Fetcher(..., limits=...)``).

        Each call gets its own budget, shared by the called Worker and everything it
        calls: past ``subrequests`` a subrequest raises TooManySubrequestsError where it
        is made; past ``cpu_ms`` the callee's code is stopped and the call raises
        WorkerCpuLimitError in the caller. What dispatch namespaces use (fastbind.namespaces).
        """
        return self._policy.call_limits(cpu_ms, subrequests)

    def extension(self, kind: type[E]) -> E:
        """This Runtime's instance of extension class ``kind`` (see fastbind.extension)."""
        try:
            return self._extensions[kind]  # type: ignore[return-value]
        except KeyError:
            raise LookupError(f"{kind.__name__} is not a registered extension") from None

    def add_worker(
        self,
        name: str,
        handler: Any,
        *,
        services: Mapping[str, Any] | None = None,
        vars: Mapping[str, Any] | None = None,
        entrypoints: Mapping[str, Any] | None = None,
        durable_objects: Mapping[str, type] | None = None,
        dispatch_namespaces: Mapping[str, str] | None = None,
    ) -> None:
        """Register Worker ``name``: a WorkerEntrypoint subclass or ``async def (request, env, ctx)``.

        ``services`` maps binding names to a Worker name, ``fastbind.service(...)`` or
        ``fastbind.remote(url)``; ``vars`` are plain values, of which each Worker gets its
        own deep copy; ``entrypoints`` names extra WorkerEntrypoint classes that bindings
        may pick (by default, those exported by the module that defines ``handler``);
        ``durable_objects`` maps binding names to Durable Object classes (see
        ``fastbind.durable``); ``dispatch_namespaces`` maps binding names to dispatch
        namespaces (see ``fastbind.namespaces``).
        """
        if not isinstance(name, str) or not name:
            raise ConfigError(f"A Worker name must be a non-empty str, not {name!r}.")
        if name in self._specs:
            raise ConfigError(f'A Worker named "{name}" is already defined.')
        try:
            handle = self._core.WorkerHandle(name, handler)
        except TypeError:
            raise ConfigError(
                f'Worker "{name}" handler must be a WorkerEntrypoint subclass or an async '
                f"function (request, env, ctx), not {handler!r}."
            ) from None
        bindings = {}
        for binding, declaration in (services or {}).items():
            if not isinstance(binding, str) or not binding:
                raise ConfigError(f'Worker "{name}" has a binding with an invalid name {binding!r}.')
            bindings[binding] = normalize_binding(name, binding, declaration)
        values = {}
        for key, value in (vars or {}).items():
            if not isinstance(key, str) or not key:
                raise ConfigError(f'Worker "{name}" has a var with an invalid name {key!r}.')
            if key in bindings:
                raise ConfigError(f'Worker "{name}" defines "{key}" both as a binding and a var.')
            values[key] = _own_copy(name, key, value)
        named = dict(entrypoints or {})
        for ep_name, ep in named.items():
            if not (isinstance(ep, type) and issubclass(ep, WorkerEntrypoint)):
                raise ConfigError(
                    f'Worker "{name}" entrypoint "{ep_name}" must be a WorkerEntrypoint subclass, not {ep!r}.'
                )
        options: dict[str, Any] = {}
        if durable_objects is not None:
            options["durable_objects"] = durable_objects
        if dispatch_namespaces is not None:
            options["dispatch_namespaces"] = dispatch_namespaces
        spec = WorkerSpec(name, handler, bindings, values, named, options)
        for extension in self._extensions.values():
            extension.worker_added(spec)
        self._specs[name] = spec
        self._handles[name] = handle
        self._policy.plan.resolved = False

    @classmethod
    def from_config(cls, path: str | os.PathLike[str]) -> Runtime:
        """A Runtime built from a ``fastbind.toml`` file (format: ``examples/fastbind.toml``).

        Raises ConfigError, naming the file, the Worker and the key, when it is wrong.
        """
        if _config_loader is None:
            raise ConfigError("No config loader is registered; import fastbind.config first.")
        return _config_loader(path, runtime_class=cls)  # type: ignore[no-any-return]

    def validate(self) -> None:
        """Resolve every binding; raise ConfigError naming the first that is wrong."""
        core = self._core
        envs = {}
        self._entrypoint_handles = {}
        for spec in self._specs.values():
            values: dict[str, Any] = dict(spec.vars)
            for binding, declaration in spec.services.items():
                values[binding] = self._bind(spec.name, binding, declaration)
            for extension in self._extensions.values():
                values.update(extension.env_values(spec, self._handles[spec.name]))
            envs[spec.name] = core.Env(spec.name, values)
        for name, env in envs.items():
            self._handles[name].env = env
        for (service, _), handle in self._entrypoint_handles.items():
            handle.env = envs[service]  # a named entrypoint runs with its Worker's env
        rescuers = []
        for extension in self._extensions.values():
            extension.validate()
            rescuer = extension.rescuer()
            if rescuer is not None:
                rescuers.append(rescuer)
        self._policy.set_rescuer(rescuers[0] if rescuers else None)
        self._policy.plan.resolved = True

    def resolve_binding(self, worker: str, binding: str, declaration: Any) -> Any:
        """The env value of binding ``binding`` of ``worker`` declared as ``declaration``
        (what ``services`` takes), resolved as Workers' bindings are.

        For extensions that build envs of their own (dispatch namespaces' Workers).
        ConfigError names ``worker`` and ``binding`` when it is wrong.
        """
        return self._bind(worker, binding, normalize_binding(worker, binding, declaration))

    def fetch_interceptor(self, invocation: Any) -> Any:
        """What serves the global ``fetch()`` of ``invocation`` instead of the network
        (an extension's, see ``Extension.fetch_interceptor``), or None."""
        for hook in self._interceptors:
            interceptor = hook(invocation)
            if interceptor is not None:
                return interceptor
        return None

    def namespace(self, name: str) -> Any:
        """Dispatch namespace ``name`` (``fastbind.namespaces``): its Workers, ``put`` and
        ``delete`` at run time. LookupError when no such namespace is defined."""
        for extension in self._extensions.values():
            found = extension.find_namespace(name)
            if found is not None:
                return found
        raise LookupError(f'No dispatch namespace named "{name}" is defined.')

    def _bind(self, worker: str, binding: str, declaration: Any) -> Any:
        if not isinstance(declaration, ServiceBinding):
            for extension in self._extensions.values():
                value = extension.binding(worker, binding, declaration)
                if value is not NotImplemented:
                    return value
            raise ConfigError(f'Worker "{worker}" binding "{binding}": nothing serves {declaration!r}.')
        handle = self._handles.get(declaration.service)
        if handle is None:
            raise ConfigError(
                f'Worker "{worker}" binding "{binding}" refers to a service '
                f'"{declaration.service}", but no such service is defined.'
                + _did_you_mean(declaration.service, self._specs)
            )
        if declaration.entrypoint is not None:
            handle = self._entrypoint_handle(worker, binding, declaration)
        return self._core.Fetcher(handle, binding, declaration.props or None)

    def _entrypoint_handle(self, worker: str, binding: str, target: ServiceBinding) -> Any:
        assert target.entrypoint is not None
        key = (target.service, target.entrypoint)
        handle = self._entrypoint_handles.get(key)
        if handle is not None:
            return handle
        spec = self._specs[target.service]
        cls = spec.entrypoints.get(target.entrypoint)
        if cls is None:
            module = sys.modules.get(getattr(spec.handler, "__module__", ""), None)
            cls = getattr(module, target.entrypoint, None)
        if not (isinstance(cls, type) and issubclass(cls, WorkerEntrypoint)):
            raise ConfigError(
                f'Worker "{worker}" binding "{binding}" refers to service "{target.service}" '
                f'with a named entrypoint "{target.entrypoint}", but "{target.service}" has '
                "no such named entrypoint." + _did_you_mean(target.entrypoint, _entrypoint_names(spec))
            )
        handle = self._entrypoint_handles[key] = self._core.WorkerHandle(target.service, cls)
        # Resolved after validate() (resolve_binding): the Worker's env is there already.
        handle.env = self._handles[target.service].env
        return handle

    def entry(self, name: str) -> Any:
        """The entry point of top-level requests served by Worker ``name``.

        ``await entry(request)`` is ``await runtime.dispatch(name, request)`` without
        the name's look-up: what a server or an embedder keeps for each request.
        Resolves the bindings first if needed; ConfigError for an unknown Worker.
        """
        if not self._policy.plan.resolved:
            self.validate()
        entry = self._entries.get(name)
        if entry is None:
            handle = self._handles.get(name)
            if handle is None:
                raise ConfigError(f'No Worker named "{name}" is defined.')
            entry = self._entries[name] = self._policy.plan.entry(handle)
        return entry

    def entry_for(self, handle: Any) -> Any:
        """The entry point of top-level invocations of a core WorkerHandle an extension
        made (a Durable Object's alarm): a pipeline of its own, as a request's."""
        if not self._policy.plan.resolved:
            self.validate()
        return self._policy.plan.entry(handle)

    async def dispatch(self, name: str, request: Request) -> Response:
        """Serve one top-level request with Worker ``name`` and return its Response.

        The pipeline lives until the Response's body is consumed or closed; cancelling
        the awaiting task cancels the pipeline; a hung pipeline gets a 500 (see
        ``fastbind.lifecycle`` for the rules).
        """
        entry = self._entries.get(name)
        if entry is None:
            entry = self.entry(name)
        return await entry(request)  # type: ignore[no-any-return]

    def live_counts(self) -> dict[str, int]:
        """Process-wide counters that return to zero when every pipeline has ended."""
        return dict(self._core.live_counts())

    def add_closer(self, closer: Callable[[], Any]) -> None:
        """Call ``closer`` (sync or async) at ``aclose()``."""
        self._closers.append(closer)

    async def aclose(self) -> None:
        """Release what the Runtime holds (the outbound HTTP session, Durable Objects)."""
        closers, self._closers = self._closers, []
        for closer in closers:
            result = closer()
            if asyncio.iscoroutine(result):
                await result
        for extension in self._extensions.values():
            await extension.aclose()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _did_you_mean(name: str, known: Any) -> str:
    """`` Did you mean "x"?`` for the closest of ``known`` to a misspelt ``name``, else ''."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f' Did you mean "{close[0]}"?' if close else ""


def _entrypoint_names(spec: WorkerSpec) -> list[str]:
    """The named entrypoints a binding to ``spec`` could pick: declared ones and the
    WorkerEntrypoint classes of its module."""
    names = list(spec.entrypoints)
    module = sys.modules.get(getattr(spec.handler, "__module__", ""), None)
    if module is not None:
        for attribute, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, WorkerEntrypoint) and value is not WorkerEntrypoint:
                names.append(attribute)
    return names


def _own_copy(worker: str, key: str, value: Any) -> Any:
    """A var as one Worker holds it: a deep copy, so that a dict or list given to two
    Workers (or kept by the caller) is not shared state between them."""
    try:
        return copy.deepcopy(value)
    except Exception as exc:
        raise ConfigError(
            f'Worker "{worker}" var "{key}" cannot be copied ({exc}): vars are plain values '
            "(str, numbers, lists, tables); reach shared objects through a binding."
        ) from None


def current_runtime() -> Runtime | None:
    """The Runtime whose pipeline the running code belongs to, or None outside one."""
    inv = _cores.current_invocation()
    return None if inv is None else inv.pipeline.owner
