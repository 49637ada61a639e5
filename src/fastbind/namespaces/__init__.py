"""Dispatch namespaces: one gateway Worker routes each request to a tenant Worker chosen
at run time, as Cloudflare's Workers for Platforms does.

    from fastbind.namespaces import add_namespace

    add_namespace(rt, "customers", "tenants/", outbound="egress", limits={"cpu_ms": 50})
    rt.add_worker("gateway", gateway, dispatch_namespaces={"DISPATCHER": "customers"})

    async def gateway(request, env, ctx):
        name = URL(request.url).host.split(".")[0]
        return await env.DISPATCHER.get(name, limits={"subrequests": 5}).fetch(request)

Tenant Workers are loaded from the directory on first use (``acme.py`` or the package
``acme/`` is Worker ``acme``), kept in an LRU (``max_loaded``), reloaded when their
files change, and added or removed at run time with ``runtime.namespace(name).put``
and ``.delete``. The Runtime knows them only through the extension in
``extension.py``. docs/namespaces.md has the rules and the trust model.
"""

from .extension import DispatchNamespaces, add_namespace
from .namespace import DispatchNamespace, Dispatcher, NamespaceOptions
from .process import ProcessFetcher
from .tenants import Unavailable

__all__ = (
    "DispatchNamespace",
    "DispatchNamespaces",
    "Dispatcher",
    "NamespaceOptions",
    "ProcessFetcher",
    "Unavailable",
    "add_namespace",
)
