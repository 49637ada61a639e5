"""WorkerEntrypoint: the class style of Worker (one instance per invocation)."""

from __future__ import annotations

from typing import Any

__all__ = ("WorkerEntrypoint",)


class WorkerEntrypoint:
    """Subclass it and define ``async def fetch(self, request)``.

    A new instance serves each invocation, with ``self.env`` (the Worker's bindings
    and vars) and ``self.ctx`` (its execution context) set, as in Cloudflare Workers.
    """

    # env and ctx live in slots (the runtime sets them on each new instance without a
    # dict look-up); __dict__ and __weakref__ keep subclasses as free as plain classes.
    __slots__ = ("env", "ctx", "__dict__", "__weakref__")

    env: Any
    ctx: Any

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = ctx
        self.env = env

    async def fetch(self, request: Any) -> Any:
        raise TypeError(
            f"{type(self).__name__} does not implement fetch(); "
            "define `async def fetch(self, request)` to handle HTTP requests"
        )
