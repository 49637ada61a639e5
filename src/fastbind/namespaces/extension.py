"""Dispatch namespaces in a Runtime: the extension that declares them, binds them into
Workers' envs (``dispatch_namespaces``), routes tenants' ``fetch()`` to their outbound
Worker, and stops what they hold at ``aclose()``."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..extension import Extension, FetchInterceptor, register
from .namespace import DispatchNamespace, check_options
from .process import ProcessTenants
from .tenants import InProcessTenants, tenant_handle_name

if TYPE_CHECKING:
    from ..bindings import WorkerSpec
    from ..runtime import Runtime

__all__ = ("DispatchNamespaces", "add_namespace")


@register
class DispatchNamespaces(Extension):
    """A Runtime's dispatch namespaces (``add_namespace``, ``runtime.namespace(name)``)."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self._namespaces: dict[str, DispatchNamespace] = {}
        # Tenants whose fetch() goes to an outbound Worker, by their env (one per tenant,
        # kept here with it, so its id is not reused while the entry is here).
        self._outbound: dict[int, tuple[Any, FetchInterceptor]] = {}

    def add(self, name: str, directory: str | Path | None = None, **options: Any) -> DispatchNamespace:
        """Declare dispatch namespace ``name`` (see ``add_namespace``)."""
        checked = check_options(name, directory, **options)
        if name in self._namespaces:
            raise ConfigError(f'A dispatch namespace named "{name}" is already defined.')
        namespace = DispatchNamespace(self.runtime, checked)
        if checked.isolation == "process":
            namespace.attach(ProcessTenants(self, namespace))
        else:
            namespace.attach(InProcessTenants(self, namespace))
        self._namespaces[name] = namespace
        return namespace

    @property
    def namespaces(self) -> Mapping[str, DispatchNamespace]:
        return dict(self._namespaces)

    def find_namespace(self, name: str) -> DispatchNamespace | None:
        return self._namespaces.get(name)

    def tenant_of(self, worker: str) -> str:
        """The tenant a ledger's Worker name stands for (``"namespace/name"``), or "" when
        it is not a tenant of these namespaces (a Worker of the Runtime is never one)."""
        namespace, slash, _ = worker.partition("/")
        if slash and namespace in self._namespaces and worker not in self.runtime.workers:
            return worker
        return ""

    # -- Workers that dispatch ------------------------------------------------------------

    def worker_added(self, spec: WorkerSpec) -> None:
        declared = spec.options.get("dispatch_namespaces")
        if declared is None:
            return
        if not isinstance(declared, Mapping):
            raise ConfigError(
                f'Worker "{spec.name}" dispatch_namespaces must map binding names to '
                f"namespace names, not {type(declared).__name__}."
            )
        checked = {}
        for binding, namespace in declared.items():
            if not isinstance(binding, str) or not binding:
                raise ConfigError(
                    f'Worker "{spec.name}" has a dispatch namespace binding with an invalid name {binding!r}.'
                )
            if not isinstance(namespace, str) or not namespace:
                raise ConfigError(
                    f'Worker "{spec.name}" dispatch namespace binding "{binding}" must name a '
                    f"namespace (a str), not {namespace!r}."
                )
            if binding in spec.services or binding in spec.vars:
                raise ConfigError(
                    f'Worker "{spec.name}" defines "{binding}" both as a dispatch namespace '
                    "and as a binding or var."
                )
            checked[binding] = namespace
        spec.options["dispatch_namespaces"] = checked

    def env_values(self, spec: WorkerSpec, handle: Any) -> dict[str, Any]:
        values = {}
        for binding, name in (spec.options.get("dispatch_namespaces") or {}).items():
            namespace = self._namespaces.get(name)
            if namespace is None:
                close = difflib.get_close_matches(name, list(self._namespaces), n=1)
                hint = f' Did you mean "{close[0]}"?' if close else ""
                raise ConfigError(
                    f'Worker "{spec.name}" dispatch namespace binding "{binding}" refers to '
                    f'namespace "{name}", but no such namespace is defined.{hint}'
                )
            values[binding] = namespace.dispatcher
        return values

    def validate(self) -> None:
        """Every namespace's outbound Worker and bindings must resolve."""
        workers = self.runtime.workers
        for namespace in self._namespaces.values():
            options = namespace.options
            if options.outbound is not None and options.outbound not in workers:
                close = difflib.get_close_matches(options.outbound, workers, n=1)
                hint = f' Did you mean "{close[0]}"?' if close else ""
                raise ConfigError(
                    f'Dispatch namespace "{options.name}" outbound Worker "{options.outbound}" '
                    f"is not defined.{hint}"
                )
            worker = tenant_handle_name(options.name, "*")
            for binding, declaration in options.services.items():
                self.runtime.resolve_binding(worker, binding, declaration)

    # -- tenants' outbound fetch ------------------------------------------------------------

    def intercept(self, env: Any, fetch: FetchInterceptor | None) -> None:
        """Send the fetch() of the Worker whose env is ``env`` to ``fetch`` (None: no more)."""
        if fetch is None:
            self._outbound.pop(id(env), None)
        else:
            self._outbound[id(env)] = (env, fetch)

    def fetch_interceptor(self, invocation: Any) -> FetchInterceptor | None:
        if not self._outbound:
            return None
        try:
            env = invocation.env  # the running invocation's own: always readable here
        except AttributeError:
            return None
        found = self._outbound.get(id(env))
        return None if found is None else found[1]

    async def aclose(self) -> None:
        for namespace in self._namespaces.values():
            await namespace.tenants.aclose()


def add_namespace(
    runtime: Runtime,
    name: str,
    directory: str | Path | None = None,
    *,
    outbound: str | None = None,
    limits: Mapping[str, Any] | None = None,
    max_loaded: int | None = None,
    isolation: str = "none",
    memory_mb: int | None = None,
    idle_s: float | None = None,
    vars: Mapping[str, Any] | None = None,
    services: Mapping[str, Any] | None = None,
) -> DispatchNamespace:
    """Declare dispatch namespace ``name`` in ``runtime``; bind it into a Worker with
    ``add_worker(..., dispatch_namespaces={"DISPATCHER": name})``.

    ``directory`` holds one module (``acme.py``) or package (``acme/``) per tenant Worker;
    ``outbound`` names a Worker of ``runtime`` that receives every ``fetch()`` the tenants
    make (its ``ctx.props`` say which namespace and tenant); ``limits`` (``cpu_ms``,
    ``subrequests``) applies to every call, with any the call gives; ``max_loaded`` bounds
    the tenants held at once (1,000; 32 processes with ``isolation="process"``); ``vars``
    and ``services`` are what every tenant's env holds. ``isolation="process"`` runs each
    tenant in a process of its own, capped at ``memory_mb`` (256) and stopped after
    ``idle_s`` (60) seconds unused. docs/namespaces.md has the whole.
    """
    extra: dict[str, Any] = {}
    if memory_mb is not None:
        extra["memory_mb"] = memory_mb
    if idle_s is not None:
        extra["idle_s"] = idle_s
    return runtime.extension(DispatchNamespaces).add(
        name, directory, outbound=outbound, limits=limits, max_loaded=max_loaded,
        isolation=isolation, vars=vars, services=services, **extra,
    )
