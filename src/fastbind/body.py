"""Bodies of Requests and Responses: accepted types, one-shot readers, tee."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator
from typing import Any, Union

import orjson

from .errors import body_used_error
from .headers import TEXT_ITEMS, TEXT_TYPE

__all__ = ("BodyInit", "BodyMixin", "check_body", "take_body", "tee_stream", "with_text_type", "TEXT_TYPE", "TEXT_ITEMS")

BodyInit = Union[bytes, bytearray, memoryview, str, AsyncIterator[bytes], None]
_BYTES_LIKE = (bytes, bytearray, memoryview)
def with_text_type(headers: Any, fresh: bool) -> None:
    """Give a message with a str body the standard's content type unless it has one.

    ``fresh``: ``headers`` were made empty just now (no headers given): they share
    TEXT_ITEMS (copy on write), which costs no list of their own.
    """
    if fresh:
        headers._items = TEXT_ITEMS
        headers._shared = True
    elif not headers.has("content-type"):
        headers.append(*TEXT_TYPE)


def check_body(body: object, owner: str) -> object:
    """Return ``body`` if it is an accepted body object, else raise TypeError."""
    if body is None or type(body) is bytes or type(body) is str:
        return body
    if isinstance(body, (*_BYTES_LIKE, str)) or hasattr(body, "__aiter__"):
        return body
    raise TypeError(
        f"{owner} body must be bytes, bytearray, memoryview, str, an async iterator "
        f"of bytes or None, not {type(body).__name__}"
    )


def is_stream(body: object) -> bool:
    return body is not None and not isinstance(body, (*_BYTES_LIKE, str))


async def _drain(stream: Any) -> bytes:
    chunks = []
    async for chunk in stream:
        if isinstance(chunk, str):
            chunk = chunk.encode()
        elif not isinstance(chunk, _BYTES_LIKE):
            raise TypeError(
                f"A body stream must yield bytes, not {type(chunk).__name__}"
            )
        chunks.append(chunk)
    return b"".join(chunks)


class _TeeBranch:
    """One of two readers of a stream; chunks are shared, never copied."""

    __slots__ = ("_source", "_queues", "_index", "_lock")

    def __init__(self, source: Any, queues: list[list[Any]], index: int, lock: asyncio.Lock) -> None:
        self._source = source
        self._queues = queues
        self._index = index
        self._lock = lock

    def __aiter__(self) -> _TeeBranch:
        return self

    async def __anext__(self) -> bytes:
        queue = self._queues[self._index]
        if not queue:
            async with self._lock:
                if not queue:
                    try:
                        chunk = await self._source.__anext__()
                    except StopAsyncIteration:
                        for q in self._queues:
                            q.append(StopAsyncIteration)
                    else:
                        for q in self._queues:
                            q.append(chunk)
        item = queue.pop(0)
        if item is StopAsyncIteration:
            queue.append(item)
            raise StopAsyncIteration
        return item  # type: ignore[no-any-return]


def tee_stream(stream: Any) -> tuple[_TeeBranch, _TeeBranch]:
    """Split an async iterator into two that each see every chunk."""
    source = stream.__aiter__()
    queues: list[list[Any]] = [[], []]
    lock = asyncio.Lock()
    return _TeeBranch(source, queues, 0, lock), _TeeBranch(source, queues, 1, lock)


def take_body(message: Any) -> Any:
    """Hand ``message``'s body object on (no copy) and mark ``message`` used."""
    body = message.body
    if body is not None:
        if message.body_used:
            raise body_used_error(message)
        message.body_used = True
    return body


class BodyMixin:
    """Readers shared by Request and Response; each body can be read once."""

    __slots__ = ()

    body: Any
    body_used: bool
    headers: Any

    def _take_body(self) -> Any:
        if self.body_used:
            raise body_used_error(self)
        body = self.body
        if body is not None:
            self.body_used = True  # type: ignore[misc]  # a slot of Request and Response
        return body

    async def bytes(self) -> bytes:
        body = self._take_body()
        if body is None:
            return b""
        if type(body) is bytes:
            return body
        if isinstance(body, str):
            return body.encode()
        if isinstance(body, _BYTES_LIKE):
            return bytes(body)
        return await _drain(body)

    async def text(self) -> str:
        body = self._take_body()
        if body is None:
            return ""
        if isinstance(body, str):
            return body
        if isinstance(body, _BYTES_LIKE):
            return str(body, "utf-8")
        return (await _drain(body)).decode()

    async def json(self) -> Any:
        body = self._take_body()
        if body is None:
            raise ValueError("Unexpected end of JSON input: the body is empty")
        if not isinstance(body, (*_BYTES_LIKE, str)):
            body = await _drain(body)
        return orjson.loads(body)

    async def array_buffer(self) -> builtins.bytes:  # ``bytes`` here is the method above
        return await self.bytes()

    def _split_body(self) -> tuple[Any, Any]:
        """Return (body for self, body for a clone); streams are teed."""
        if self.body_used:
            raise body_used_error(self)
        body = self.body
        if is_stream(body):
            a, b = tee_stream(body)
            return a, b
        return body, body
