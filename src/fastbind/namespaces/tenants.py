"""Tenant Workers in the gateway's own process: loaded on first use, kept in an LRU of
``max_loaded``, reloaded when their files change (looked at, at most, once a second).
``get``'s fast path only reads; a tenant's place in the LRU moves at its first use after
each tick of a coarse clock (twice a second).

A loaded tenant is a core WorkerHandle named ``"<namespace>/<name>"`` (the name its
subrequests carry in the ledger) with an env of its own: the namespace's vars and
bindings, never the dispatcher's. ``get`` hands out one Fetcher per tenant, made once;
with per-call limits or props, a Fetcher for that call.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..bindings import service
from ..errors import ConfigError, WorkerNotFoundError
from .loading import TenantSource, code_signature, load_handler, unload
from .namespace import RELOAD_CHECK_S, DispatchNamespace, check_limits, lower
from .ticker import ticker

if TYPE_CHECKING:
    from .extension import DispatchNamespaces

__all__ = ("InProcessTenants", "Tenant", "Unavailable", "tenant_handle_name")

logger = logging.getLogger("fastbind")
_monotonic = time.monotonic


def tenant_handle_name(namespace: str, name: str) -> str:
    """The Worker name of a tenant in the ledger, ``ctx.worker`` and messages."""
    return f"{namespace}/{name}"


class Unavailable:
    """What ``get`` gives for a name the namespace has no usable Worker of: using it
    raises (WorkerNotFoundError, or the reason the Worker's code did not load)."""

    __slots__ = ("_error",)

    def __init__(self, error: Exception) -> None:
        self._error = error

    @property
    def error(self) -> Exception:
        """What using it raises."""
        return self._error

    def _raise(self, *args: Any, **kwargs: Any) -> Any:
        error = self._error
        raise type(error)(*error.args)

    fetch = _raise

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._raise

    def __repr__(self) -> str:
        return f"<Unavailable: {self._error}>"


NOT_FOUND = Unavailable(WorkerNotFoundError())


class Tenant:
    """One loaded tenant Worker."""

    __slots__ = (
        "name", "source", "vars", "signature", "check_at", "handle", "fetcher", "modules", "limited",
    )

    def __init__(self, name: str, source: TenantSource, vars: dict[str, Any]) -> None:
        self.name = name
        self.source = source
        self.vars = vars
        self.signature: Any = None
        self.check_at = 0.0   # when its files may be looked at again
        self.handle: Any = None
        self.fetcher: Any = None
        self.modules: list[str] = []
        self.limited: tuple[Any, Any] | None = None  # (limits, Fetcher) of the last limited call


class _Table:
    """The tick of the coarse clock that ``InProcessTenants._fresh`` is good for."""

    __slots__ = ("tick",)

    def __init__(self) -> None:
        self.tick = -1


class InProcessTenants:
    """The tenant set of a namespace whose Workers run in this process."""

    def __init__(self, extension: DispatchNamespaces, namespace: DispatchNamespace) -> None:
        self._extension = extension
        self._namespace = namespace
        self._runtime = namespace.runtime
        self._core = self._runtime.core
        options = namespace.options
        self._max = options.max_loaded
        self._cpu_ms = options.cpu_ms
        self._subrequests = options.subrequests
        self._default_limits = (
            None if options.cpu_ms is None and options.subrequests is None
            else self._runtime.call_limits(cpu_ms=options.cpu_ms, subrequests=options.subrequests)
        )
        self._where = f'Dispatch namespace "{options.name}"'
        self._loaded: OrderedDict[str, Tenant] = OrderedDict()  # least recently used first
        self._fresh: dict[str, Any] = {}  # name: Fetcher, for those seen since the last tick
        self._table = _Table()

    def make_get(self) -> Callable[..., Any]:
        """``env.DISPATCHER.get``: a Fetcher for tenant Worker ``name`` (see Dispatcher).

        A plain function over ``_fresh``, the Fetchers of the tenants already seen
        since the coarse clock (ticker.py) last ticked: a call without limits or props
        to one of them is one comparison and one look-up; anything else takes ``_get``.
        """
        fresh = self._fresh
        table = self._table
        slow = self._get
        clock = ticker
        clock.start()

        def get(name: str, limits: Mapping[str, Any] | None = None, props: Any = None) -> Any:
            if table.tick == clock.tick and limits is None and props is None:
                try:
                    return fresh[name]
                except (KeyError, TypeError):
                    pass
            return slow(name, limits, props)

        return get

    def _get(self, name: str, limits: Mapping[str, Any] | None, props: Any) -> Any:
        """``get`` for a tenant not seen since the last tick (then its files may be due
        for a look, and its place in the LRU moves), not loaded, or called with limits
        or props."""
        ticker.start()  # (again, in a process forked from the one that started it)
        tick = ticker.tick
        if self._table.tick != tick:
            self._fresh.clear()  # every tenant passes here again, once per tick
            self._table.tick = tick
        tenant = self._loaded.get(name)
        if tenant is None:
            tenant = self._load(name)
            if tenant is None:
                return NOT_FOUND
        elif name not in self._fresh:
            self._loaded.move_to_end(name)
            now = _monotonic()
            if now >= tenant.check_at:
                tenant = self._recheck(tenant, now)
                if tenant is None:
                    return NOT_FOUND
        self._fresh[name] = tenant.fetcher
        if limits is None and props is None:
            return tenant.fetcher
        return self._fetcher_for(tenant, limits, props)

    def get(self, name: str, limits: Mapping[str, Any] | None = None, props: Any = None) -> Any:
        return self._get(name, limits, props)

    def forget(self, name: str) -> None:
        self._fresh.pop(name, None)
        tenant = self._loaded.pop(name, None)
        if tenant is not None:
            self._unload(tenant)

    def loaded(self) -> tuple[str, ...]:
        return tuple(self._loaded)

    async def aclose(self) -> None:
        for name in list(self._loaded):
            self.forget(name)

    # -- loading ------------------------------------------------------------------------

    def _load(self, name: str) -> Tenant | None:
        found = self._namespace.source(name)
        if found is None:
            return None
        source, own_vars = found
        while len(self._loaded) >= self._max:
            _, oldest = self._loaded.popitem(last=False)
            self._unload(oldest)
        tenant = Tenant(name, source, own_vars)
        tenant.signature = code_signature(source)
        tenant.check_at = _monotonic() + RELOAD_CHECK_S
        self._build(tenant)
        self._loaded[name] = tenant
        return tenant

    def _recheck(self, tenant: Tenant, now: float) -> Tenant | None:
        """Tenant's files looked at again: the same Worker, a new load, or None if gone.

        """
        tenant.check_at = now + RELOAD_CHECK_S
        if tenant.source.path is None:  # code given to put(): it changes by put() only
            return tenant
        signature = code_signature(tenant.source)
        if signature == tenant.signature and signature is not None:
            return tenant
        self.forget(tenant.name)  # changed, or gone: load what is there now
        return self._load(tenant.name)

    def _build(self, tenant: Tenant) -> None:
        """Import the tenant's code and make its handle, env and Fetcher."""
        namespace = self._namespace
        worker = tenant_handle_name(namespace.name, tenant.name)
        core = self._core
        try:
            handler, tenant.modules = load_handler(namespace.name, tenant.name, tenant.source)
            handle = core.WorkerHandle(worker, handler)
            values: dict[str, Any] = dict(namespace.options.vars)
            values.update(tenant.vars)
            for binding, declaration in namespace.options.services.items():
                values[binding] = self._runtime.resolve_binding(worker, binding, declaration)
            handle.env = core.Env(worker, values)
        except ConfigError as exc:
            # Kept (and looked at again once a second) so that a broken Worker is not
            # imported again at every request; using it raises why it is broken.
            logger.error("%s", exc)
            unload(tenant.modules)
            tenant.modules = []
            tenant.fetcher = Unavailable(exc)
            return
        tenant.handle = handle
        tenant.fetcher = core.Fetcher(handle, worker, None, self._default_limits)
        outbound = namespace.options.outbound
        if outbound is not None:
            props = {"namespace": namespace.name, "tenant": tenant.name}
            interceptor = self._runtime.resolve_binding(worker, "outbound", service(outbound, props=props))
            self._extension.intercept(handle.env, interceptor.fetch)

    def _unload(self, tenant: Tenant) -> None:
        self._fresh.pop(tenant.name, None)
        if tenant.handle is not None:
            self._extension.intercept(tenant.handle.env, None)
        unload(tenant.modules)
        tenant.modules = []
        tenant.limited = None

    def _fetcher_for(self, tenant: Tenant, limits: Mapping[str, Any] | None, props: Any) -> Any:
        """A Fetcher for one call with its own limits (the lower of the namespace's and
        the call's) or props."""
        handle = tenant.handle
        if handle is None:
            return tenant.fetcher  # not loaded: it raises why
        last = tenant.limited
        if props is None and last is not None and last[0] == limits:
            return last[1]  # the same limits as the last call (a gateway's usual case)
        try:
            cpu_ms, subrequests = check_limits(self._where + " get()", limits)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        cpu_ms = lower(self._cpu_ms, cpu_ms)
        subrequests = lower(self._subrequests, subrequests)
        call_limits = (
            None if cpu_ms is None and subrequests is None
            else self._runtime.call_limits(cpu_ms=cpu_ms, subrequests=subrequests)
        )
        fetcher = self._core.Fetcher(handle, handle.name, props, call_limits)
        if props is None:
            tenant.limited = (dict(limits or {}), fetcher)
        return fetcher
