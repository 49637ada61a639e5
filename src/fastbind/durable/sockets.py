"""WebSockets a Durable Object holds: ``ctx.accept_websocket``, tags, and its handlers.

An object that accepts a socket gets each of its events through its input gate, one at a
time like any call: ``websocket_message(ws, message)``, ``websocket_close(ws, code,
reason, was_clean)``, ``websocket_error(ws, error)`` (Cloudflare's ``webSocketMessage``
and the rest, which are found too). An object holding open sockets is not evicted.

The events run in a task of the call that accepted the socket, as that call's
invocation: the request that opened the socket stays open while it lives (its answer was
the 101), and what the handlers do (bindings, fetches) counts there. Cloudflare makes each
event an invocation of its own; here the accepting call's budget and depth hold for them.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import TYPE_CHECKING, Any

from ..lifecycle import logger
from ..websocket import OPEN, CloseEvent, ErrorEvent, WebSocket

if TYPE_CHECKING:
    from .namespace import _LiveObject

__all__ = ("ObjectSockets", "MAX_TAGS", "MAX_TAG_LENGTH")

MAX_TAGS = 10  # as Cloudflare's
MAX_TAG_LENGTH = 256
_HANDLERS = {
    "message": ("websocket_message", "webSocketMessage"),
    "close": ("websocket_close", "webSocketClose"),
    "error": ("websocket_error", "webSocketError"),
}


class ObjectSockets:
    """The sockets one live object holds, with their tags."""

    __slots__ = ("_live", "_tags", "_pumps")

    def __init__(self, live: _LiveObject) -> None:
        self._live = live
        self._tags: dict[WebSocket, tuple[str, ...]] = {}
        self._pumps: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tags)

    def accept(self, ws: WebSocket, tags: Any = ()) -> None:
        if not isinstance(ws, WebSocket):
            raise TypeError(f"accept_websocket() takes a WebSocket, not {type(ws).__name__}")
        if ws.accepted or ws in self._tags:
            raise TypeError("This WebSocket was accepted already; accept each end once")
        checked = tuple(tags)
        if len(checked) > MAX_TAGS:
            raise ValueError(f"A WebSocket may have at most {MAX_TAGS} tags, not {len(checked)}")
        for tag in checked:
            if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_LENGTH:
                raise ValueError(
                    f"A WebSocket tag must be a str of 1 to {MAX_TAG_LENGTH} characters, not {tag!r}"
                )
        ws.accept()
        self._tags[ws] = checked
        pump = asyncio.get_running_loop().create_task(self._pump(ws))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)

    def get(self, tag: str | None = None) -> list[WebSocket]:
        """The open sockets, or those with ``tag``, in the order they were accepted."""
        return [ws for ws, tags in self._tags.items()
                if ws.ready_state == OPEN and (tag is None or tag in tags)]

    async def _pump(self, ws: WebSocket) -> None:
        try:
            while True:
                event = await ws.receive()
                if isinstance(event, CloseEvent):
                    await self._deliver("close", ws, event.code, event.reason, event.was_clean)
                    return
                if isinstance(event, ErrorEvent):
                    await self._deliver("error", ws, event.error)
                else:
                    await self._deliver("message", ws, event)
        finally:
            self._tags.pop(ws, None)
            live = self._live
            if not self._tags and not live.calls:
                live.namespace._arm_idle_timer(live)

    async def _deliver(self, event: str, ws: WebSocket, *args: Any) -> None:
        live = self._live
        handler = None
        for name in _HANDLERS[event]:
            handler = getattr(live.instance, name, None)
            if handler is not None:
                break
        if handler is None:
            if event == "message":
                logger.warning(
                    "Durable Object %s got a WebSocket message but defines no websocket_message()",
                    live.label,
                )
            return
        async with live.namespace.admitted(live):
            try:
                result = handler(ws, *args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("Durable Object %s: %s handler raised", live.label, event)
