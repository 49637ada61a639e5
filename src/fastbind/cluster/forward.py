"""The caller's side of a Durable Object call that runs in another process.

``Forwarder`` is the router of a Runtime's Durable Objects (``DurableObjects.router``):
for an object another process owns, a stub's call becomes one hop request to that
process, with the pipeline's depth, id and CPU left, as a remote binding's request
carries them (``outbound/hop.py``): an RPC call to a process of this node goes on the
node's call channel, unsigned (``channel.py``); a fetch, a stream or a WebSocket goes
as HTTP/1.1 over the node's unix socket, and any call to another node over TCP, signed. The call stays a child invocation of its caller, in the
caller's ledger as any Durable Object call; what the object returns or raises comes
back as it would in one process (``wire.py`` for RPC values). The input gate's order
holds because the owner runs every call of an object through the object's one gate.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from yarl import URL

from ..errors import CpuLimitExceeded, DurableObjectUnavailableError, FastbindError, SubrequestDepthError
from ..headers import Headers
from ..outbound.hop import ERROR, Hop, HopKey, caller_chain, path_of, remaining_cpu_ms, without_hop
from ..outbound.websocket import connect_websocket, wants_websocket
from ..policy import observed_headers
from ..request import Request
from ..response import Response
from . import wire
from .peers import PeerGone, PeerPool, PeerResponse, PeerUnreachable
from .members import Membership
from .channel import CallChannel
from .placement import Owner, Placement, calls_path, socket_path

if TYPE_CHECKING:
    from ..durable.ids import DurableObjectId
    from ..durable.namespace import DurableObjectNamespace

__all__ = ("Forwarder", "object_target", "parse_object_target")

logger = logging.getLogger("fastbind.cluster")

# Not sent on: they describe one connection, or the peer connection sets them.
_NOT_SENT = frozenset((
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "host", "content-length",
))
# Slots of one node come back within a second or two when the supervisor restarts one:
# a call that could not connect (so never ran) waits that long for it.
_SLOT_RESTART_WAIT_S = 5.0
_RPC_PATH = b"/.fastbind/rpc/"
_KNOWN_MAX = 4096  # objects whose owner and target are kept (a hash and a quote less per call)


def object_target(ns: DurableObjectNamespace, oid: DurableObjectId) -> str:
    """The ``fastbind-object`` value naming ``oid``: namespace, id, and its name if any."""
    target = f"{quote(ns.key, safe='')}/{oid}"
    return target if oid.name is None else f"{target}/{quote(oid.name, safe='')}"


def parse_object_target(value: str) -> tuple[str, str, str | None]:
    """(namespace key, id, name or None) of a ``fastbind-object`` value (ValueError if malformed)."""
    parts = value.split("/")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ValueError(f"not a Durable Object target: {value!r}")
    name = unquote(parts[2], errors="surrogatepass") if len(parts) == 3 else None
    return unquote(parts[0]), parts[1], name


class Forwarder:
    """Runs the calls of objects owned elsewhere where they live (the router of
    ``DurableObjects``), and carries hops on to the slot that owns an object."""

    def __init__(self, placement: Placement, key: HopKey) -> None:
        self.placement = placement
        self.key = key
        self._pools: dict[str, PeerPool] = {}
        self._channels: dict[int, CallChannel] = {}
        self._routes: dict[tuple[str, str], Any] = {}
        # (namespace key, id bytes, name) -> (owner, fastbind-object value), for this membership
        self._known: dict[tuple[str, bytes, str | None], tuple[Owner, str]] = {}
        self._ws_sessions: dict[str, Any] = {}

    # -- DurableObjects.router ----------------------------------------------------------

    def route(self, ns: DurableObjectNamespace, oid: DurableObjectId) -> Any:
        placement = self.placement
        owner = self._where(ns, oid)[0]
        if owner.node is None and owner.slot == placement.slot:
            return None
        peer = self._peer_name(owner)
        bound = self._routes.get((ns.key, peer))
        if bound is None:
            pool = self._pool(owner)

            async def forward(ctx: Any, oid: DurableObjectId, method: str | None, args: tuple[Any, ...],
                              kwargs: dict[str, Any] | None) -> Any:
                return await self.call(ns, owner, pool, ctx, oid, method, args, kwargs)

            bound = self._routes[(ns.key, peer)] = forward
        return bound

    def _where(self, ns: DurableObjectNamespace, oid: DurableObjectId) -> tuple[Owner, str]:
        """The owner of ``oid`` and its ``fastbind-object`` value, worked out once."""
        key = (ns.key, oid.raw, oid.name)
        known = self._known.get(key)
        if known is None:
            if len(self._known) >= _KNOWN_MAX:
                self._known.clear()
            known = self._known[key] = (self.placement.owner(oid.raw), object_target(ns, oid))
        return known

    # -- peers --------------------------------------------------------------------------

    @staticmethod
    def _peer_name(owner: Owner) -> str:
        return f"slot {owner.slot}" if owner.node is None else f'node "{owner.node.name}"'

    def _pool(self, owner: Owner) -> PeerPool:
        name = self._peer_name(owner)
        pool = self._pools.get(name)
        if pool is None:
            if owner.node is None:
                assert self.placement.run_dir is not None
                pool = PeerPool(f"process slot {owner.slot}", path=socket_path(self.placement.run_dir, owner.slot))
            else:
                url = URL(owner.node.url)  # (the port is the scheme's when the url gives none)
                ssl = _ssl.create_default_context() if url.scheme == "https" else None
                pool = PeerPool(f'node "{owner.node.name}" ({owner.node.url})', host=url.host, port=url.port,
                                ssl=ssl)
            self._pools[name] = pool
        return pool

    def use_membership(self, membership: Membership) -> None:
        """Route by ``membership`` from now on (a DNS name listed other nodes).

        The connections to a node that left, or whose address changed, are let go once
        the calls on them have ended; those to the others are kept.
        """
        before = self.placement.membership
        self.placement.membership = membership
        self._routes.clear()
        self._known.clear()
        for node in before.nodes if before is not None else ():
            now = membership.node(node.name)
            if now is None or now.url != node.url:
                pool = self._pools.pop(self._peer_name(Owner(node, 0)), None)
                if pool is not None:
                    pool.retire()

    def slot_pool(self, slot: int) -> PeerPool:
        """The connections to slot ``slot`` of this node."""
        return self._pool(Owner(None, slot))

    # -- one call -----------------------------------------------------------------------

    async def call(
        self, ns: DurableObjectNamespace, owner: Owner, pool: PeerPool, ctx: Any, oid: DurableObjectId,
        method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any] | None,
    ) -> Any:
        """Run one call (``ctx``: its child invocation) on the object, where it lives."""
        pipeline = ctx.pipeline
        hop = Hop(ctx.depth, pipeline.pipeline_id, remaining_cpu_ms(pipeline), self._where(ns, oid)[1],
                  method, self.placement.fingerprint)
        traced = observed_headers(pipeline, ctx.ledger_index) if pipeline.observed else []
        label = f"Durable Object {ns.class_name}:{oid}"
        if method is None:
            request: Request = args[0]
            if wants_websocket(request.headers):
                return await self._websocket(owner, request, hop, traced)
            url = request.url
            body = request.body
            if body is not None:
                request.body_used = True
            headers = [(n, v) for n, v in request.headers.items() if n not in _NOT_SENT]
            head = self._head(request.method, url.encode("latin-1", "replace"), path_of(url), hop,
                              without_hop(headers) + traced)
            answer = await self._send(owner, pool, label, head, body, request.method == "HEAD")
            self._raise_for(answer, label, ctx)
            return _response(answer)
        payload = await wire.encode((list(args), kwargs or {}))
        path = _RPC_PATH + method.encode()
        extra = traced + [("content-type", wire.CONTENT_TYPE)]
        if owner.node is None:
            # A process of this node: on the call channel, with the other calls, unsigned
            # (its socket is private to the node's processes: channel.py).
            head = self._head("POST", path, path.decode(), hop, extra, signed=False)
            answer = await self._send(owner, self._channel(owner.slot), label, head, payload, False)
        else:
            head = self._head("POST", path, path.decode(), hop, extra)
            answer = await self._send(owner, pool, label, head, payload, False)
        self._raise_for(answer, label, ctx)
        data = answer.body if isinstance(answer.body, bytes) else b"".join([c async for c in answer.body])
        return wire.decode(data)

    def _channel(self, slot: int) -> CallChannel:
        channel = self._channels.get(slot)
        if channel is None:
            assert self.placement.run_dir is not None
            channel = self._channels[slot] = CallChannel(
                f"process slot {slot}", calls_path(self.placement.run_dir, slot))
        return channel

    def _head(self, method: str, target: bytes, path: str, hop: Hop, headers: list[tuple[str, str]],
              signed: bool = True) -> bytes:
        lines = [f"{method} ", target.decode("latin-1"), " HTTP/1.1\r\nhost: fastbind\r\n"]
        for name, value in self.key.sign(hop, method, path) if signed else hop.headers():
            lines += [name, ": ", value, "\r\n"]
        for name, value in headers:
            lines += [name, ": ", value, "\r\n"]
        return "".join(lines).encode("latin-1", "replace")

    async def _send(self, owner: Owner, pool: PeerPool | CallChannel, label: str, head: bytes, body: Any,
                    head_only: bool) -> PeerResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SLOT_RESTART_WAIT_S
        pause = 0.02
        while True:
            try:
                if isinstance(pool, CallChannel):
                    return await pool.request(head, body)
                return await pool.request(head, body, head_only)
            except PeerUnreachable as exc:
                # Never sent, so safe to try again: a slot comes back when restarted; a
                # node that is down is reported at once (its objects stay where they are).
                if owner.node is not None or loop.time() + pause > deadline or hasattr(body, "__aiter__"):
                    raise DurableObjectUnavailableError(_unavailable(label, owner, exc)) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)
            except PeerGone as exc:
                raise DurableObjectUnavailableError(
                    f"{label}: {exc}; the call may or may not have run there."
                ) from None

    def _raise_for(self, answer: PeerResponse, label: str, ctx: Any) -> None:
        """Raise what an answer made by the receiving fastbind itself stands for."""
        reason = answer.header(ERROR)
        if reason is None:
            return
        body = answer.body if isinstance(answer.body, bytes) else b""
        if reason == "exception":
            raise wire.decode_exception(body, label)
        if reason == "depth":
            raise SubrequestDepthError(chain=caller_chain(ctx.parent), target=label, limit=None)
        if reason == "cpu":
            raise CpuLimitExceeded()
        text = body.decode("utf-8", "replace").strip()
        if reason in ("misdirected", "unavailable"):
            raise DurableObjectUnavailableError(f"{label}: {text}")
        raise FastbindError(f"{label}: the owner refused the call: {text}")

    async def _websocket(self, owner: Owner, request: Request, hop: Hop, traced: list[tuple[str, str]]) -> Response:
        import aiohttp

        url = request.url
        name = self._peer_name(owner)
        client = self._ws_sessions.get(name)
        if client is None:
            connector: aiohttp.BaseConnector
            if owner.node is None:
                assert self.placement.run_dir is not None
                connector = aiohttp.UnixConnector(path=socket_path(self.placement.run_dir, owner.slot))
            else:
                connector = aiohttp.TCPConnector(limit=0, use_dns_cache=False)
            client = self._ws_sessions[name] = aiohttp.ClientSession(connector=connector)
        # The node's address now (it may have changed under the same name).
        base = "http://fastbind" if owner.node is None else owner.node.url
        path = path_of(url)
        signed = self.key.sign(hop, "GET", path)
        return await connect_websocket(
            client, base + path, request.headers, 30.0, lambda sent: without_hop(sent) + signed + traced,
        )

    async def aclose(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._routes.clear()
        sessions, self._ws_sessions = self._ws_sessions, {}
        for session in sessions.values():
            await session.close()


def _unavailable(label: str, owner: Owner, exc: BaseException) -> str:
    if owner.node is not None:
        return (
            f'{label} lives on node "{owner.node.name}" ({owner.node.url}), which cannot be reached '
            f"({exc}). It is not started anywhere else, so that there is never a second copy of it: "
            "its calls fail until that node is back."
        )
    return f"{label} lives in process slot {owner.slot} of this node, which did not come back in time ({exc})."


def _response(answer: PeerResponse) -> Response:
    response = Response.__new__(Response)
    response.status = answer.status
    headers = Headers.__new__(Headers)
    headers._items = [(n, v) for n, v in answer.headers if n not in _NOT_SENT and n != ERROR]
    headers._shared = False
    response.headers = headers
    response.body = answer.body or None
    response.body_used = False
    return response
