"""The platform's own Workers: the gateway that dispatches, and the tenants' outbound Worker."""

from __future__ import annotations

from typing import Any

from yarl import URL

from fastbind import Request, Response, WorkerCpuLimitError, WorkerNotFoundError, fetch


async def gateway(request: Request, env: Any, ctx: Any) -> Response:
    """acme.localhost -> the namespace's Worker "acme"; a paid plan gets more CPU."""
    tenant = (URL(request.url).host or "").split(".")[0]
    limits = {"cpu_ms": 200} if request.headers.get("x-plan") == "paid" else None
    try:
        response: Response = await env.CUSTOMERS.get(tenant, limits=limits).fetch(request)
    except WorkerNotFoundError:
        return Response(f"No site named {tenant!r} here.", status=404)
    except WorkerCpuLimitError:
        return Response(f"The site {tenant!r} took too long.", status=503)
    return response


async def egress(request: Request, env: Any, ctx: Any) -> Response:
    """Every fetch() of a tenant: only the hosts allowed, with the tenant named."""
    host = URL(request.url).host
    if host not in env.ALLOWED:
        return Response(f"{ctx.props['tenant']} may not fetch {host}.", status=403)
    return await fetch(request.url, method=request.method, headers={"x-tenant": ctx.props["tenant"]})
