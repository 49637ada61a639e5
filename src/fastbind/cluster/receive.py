"""The receiving side of a hop: what a fastbind server does with a request that has hop headers.

The server hands every request that carries a ``fastbind-*`` hop header here (and only
those: others go straight to the served Worker). A hop whose signature is good goes
on with its caller's pipeline: a remote binding's request runs the served Worker at
the caller's depth + 1, with the pipeline's id and what is left of its CPU budget; a
forwarded Durable Object call runs on the object if this process owns it, is carried
on to the slot of this node that does, or is refused when the object belongs to
another node (the sender's membership differs). Anything else is refused with 403:
hop headers are never ignored, so a forged depth cannot slip through as a fresh
pipeline.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..durable.extension import DurableObjects
from ..errors import CPU_LIMIT_MESSAGE
from ..headers import Headers
from ..outbound.hop import ERROR, SECRET_ENV, Hop, HopKey, HopRefused, path_of, read_trusted, without_hop
from ..outbound.remote import RemoteBindings
from ..outbound.websocket import wants_websocket
from ..response import Response
from . import wire
from .forward import Forwarder, parse_object_target
from .placement import Owner

if TYPE_CHECKING:
    from ..durable.ids import DurableObjectId
    from ..durable.namespace import DurableObjectNamespace
    from ..request import Request
    from ..runtime import Runtime

__all__ = ("HopReceiver",)

logger = logging.getLogger("fastbind.cluster")

_TEXT = "text/plain; charset=utf-8"
_RPC_HEADERS = (("content-type", wire.CONTENT_TYPE),)
_ENTRIES_MAX = 4096  # cached entry points of forwarded calls (per object and method)


def _refusal(status: int, reason: str, message: str) -> Response:
    return Response(f"fastbind: {message}\n", status=status, headers=[("content-type", _TEXT), (ERROR, reason)])


class HopReceiver:
    """``await receiver(request)``: the answer to one request that carries hop headers."""

    def __init__(self, runtime: Runtime, entry: str) -> None:
        self._runtime = runtime
        self._entry = runtime.entry(entry)
        self._durable = runtime.extension(DurableObjects)
        self._remote = runtime.extension(RemoteBindings)
        self._entries: dict[tuple[str, bytes, str | None], Any] = {}
        # (fastbind-object, fastbind-rpc) -> (membership, sender's fingerprint, entry) of
        # the objects of this process that calls came for: a call for a known object
        # skips parsing its id and finding its owner.
        self._objects: dict[tuple[str, str | None], tuple[Any, str | None, Any]] = {}

    async def __call__(self, request: Request) -> Response:
        key: HopKey | None = self._remote.key
        if key is None:
            return _refusal(403, "refused", (
                "this request has fastbind hop headers (fastbind-depth, ...), which are accepted only "
                f"from cluster peers, and this server trusts none: set {SECRET_ENV} on both sides."
            ))
        try:
            hop = key.verify(request.method, path_of(request.url), request.headers.items())
        except HopRefused as exc:
            logger.warning("refused a hop from a peer that is not trusted: %s", exc)
            return _refusal(403, "refused", f"{exc}; the request is refused.")
        return await self.serve(request, hop)

    async def trusted(self, request: Request) -> Response:
        """Answer a hop from a process of this node (its call channel): not signed."""
        try:
            hop = read_trusted(request.headers.items())
        except HopRefused as exc:
            return _refusal(400, "refused", f"{exc}; the request is refused.")
        return await self.serve(request, hop)

    async def serve(self, request: Request, hop: Hop) -> Response:
        """Answer a request whose hop is trusted."""
        headers = Headers.__new__(Headers)
        headers._items = without_hop(request.headers.items())
        headers._shared = False
        request.headers = headers
        limit = self._runtime.limits.depth
        if hop.depth > limit:
            return _refusal(508, "depth", f"the hop's depth {hop.depth} is past this server's limit {limit}.")
        if hop.object is not None:
            return await self._object_call(request, hop)
        response = await self._entry.continued(request, hop.depth, hop.pipeline_id, hop.cpu_ms)
        return _marked(_unmarked(response))

    async def _object_call(self, request: Request, hop: Hop) -> Response:
        assert hop.object is not None
        router = self._durable.router
        if not isinstance(router, Forwarder):
            return _refusal(421, "misdirected", "this server is not part of a cluster; it owns no forwarded objects.")
        membership = router.placement.membership
        cache_key = (hop.object, hop.rpc)
        known = self._objects.get(cache_key)
        if known is None or known[0] is not membership or known[1] != hop.members:
            found = self._find(hop, router)
            if isinstance(found, Response):
                return found
            ns, oid, owner = found
            if owner.slot != router.placement.slot:
                return await self._relay(router, owner, ns, oid, request, hop)
            if len(self._objects) >= _ENTRIES_MAX:
                self._objects.clear()
            known = self._objects[cache_key] = (membership, hop.members, self._object_entry(ns, oid, hop.rpc))
        return _marked(await known[2].continued(request, hop.depth, hop.pipeline_id, hop.cpu_ms))

    def _find(self, hop: Hop, router: Forwarder) -> Response | tuple[DurableObjectNamespace, DurableObjectId, Owner]:
        """The namespace, id and owner of a forwarded call's object, or the Response
        that refuses it (this process is not where the sender thinks it lives)."""
        assert hop.object is not None
        try:
            key, text, name = parse_object_target(hop.object)
        except ValueError as exc:
            return _refusal(400, "refused", str(exc))
        ns = self._durable.find(key)
        if ns is None:
            return _refusal(404, "refused", f'this server has no Durable Object namespace "{key}".')
        try:
            oid = ns._ids.of_raw(ns.id_from_string(text).raw, name)
        except ValueError as exc:
            return _refusal(400, "refused", str(exc))
        placement = router.placement
        if hop.members != placement.fingerprint:
            return _refusal(421, "misdirected", (
                f"the sender's cluster membership ({hop.members}) differs from this node's "
                f"({placement.fingerprint}): nodes must share one member list; no object is served "
                "across a difference."
            ))
        owner = placement.owner(oid.raw)
        if owner.node is not None:
            return _refusal(421, "misdirected", f'Durable Object {ns.class_name}:{oid} belongs to node "{owner.node.name}".')
        return ns, oid, owner

    def _object_entry(self, ns: DurableObjectNamespace, oid: DurableObjectId, method: str | None) -> Any:
        cache_key = (ns.key, oid.raw, method)
        entry = self._entries.get(cache_key)
        if entry is not None:
            return entry

        async def call_object(request: Request, env: Any, ctx: Any) -> Response:
            try:
                if method is None:
                    return _unmarked(await ns.serve_call(ctx, oid, None, (request,), None))
                args, kwargs = wire.decode(await request.bytes())
                result = await ns.serve_call(ctx, oid, method, tuple(args), kwargs or None)
                return Response(await wire.encode(result), headers=_RPC_HEADERS)
            except Exception as exc:  # the caller raises it, as in one process
                return Response(wire.encode_exception(exc), status=500,
                                headers=[("content-type", wire.CONTENT_TYPE), (ERROR, "exception")])

        handle = ns._core.WorkerHandle(f"{ns.class_name}:{oid}", call_object)
        handle.env = ns._worker_handle.env
        if len(self._entries) >= _ENTRIES_MAX:
            self._entries.clear()
        entry = self._entries[cache_key] = self._runtime.entry_for(handle)
        return entry

    async def _relay(self, router: Forwarder, owner: Owner, ns: DurableObjectNamespace, oid: DurableObjectId,
                     request: Request, hop: Hop) -> Response:
        """Carry a hop that reached the wrong process of this node on to the slot that owns
        its object (a hop between nodes lands on any of them); its answer comes back as is."""
        if wants_websocket(request.headers):
            return await router._websocket(owner, request, hop, [])
        label = f"Durable Object {ns.class_name}:{oid}"
        url = request.url
        headers = [(n, v) for n, v in request.headers.items() if n not in ("host", "content-length", "transfer-encoding", "connection")]
        head = router._head(request.method, url.encode("latin-1", "replace"), path_of(url), hop, headers)
        body = request.body
        if body is not None:
            request.body_used = True
        answer = await router._send(owner, router.slot_pool(owner.slot), label, head, body, request.method == "HEAD")
        response = Response.__new__(Response)
        response.status = answer.status
        response.headers = Headers([(n, v) for n, v in answer.headers
                                    if n not in ("content-length", "transfer-encoding", "connection", "keep-alive")])
        response.body = answer.body or None
        response.body_used = False
        return response


def _unmarked(response: Response) -> Response:
    """A Worker's or an object's own answer, without a ``fastbind-error`` it may carry
    (passed on from another fastbind server): only this server's own answers say it."""
    if ERROR in response.headers:
        response.headers.delete(ERROR)
    return response


def _marked(response: Response) -> Response:
    """``response``, with ``fastbind-error: cpu`` when the pipeline ran out of CPU here:
    the budget was the whole pipeline's, so the caller stops too."""
    if response.status == 503 and response.body == CPU_LIMIT_MESSAGE:
        response.headers.set(ERROR, "cpu")
    return response


