"""What crosses an RPC boundary: immutable values as they are, mutable ones copied."""

from __future__ import annotations

import dataclasses
import datetime
import enum
from typing import Any

from ..body import take_body
from ..headers import Headers
from ..request import Request, forward_request
from ..response import Response

__all__ = (
    "isolate", "hand_over_response", "RESERVED_METHODS", "SCALAR_TYPES", "reserved_message", "unknown_message",
)

# Names a Fetcher keeps for itself, and the handlers the runtime calls (a Durable
# Object's alarm and WebSocket events, in Cloudflare's and in Python spelling); `_`-names
# are private too.
RESERVED_METHODS = frozenset((
    "fetch", "connect", "dup", "constructor",
    "alarm", "webSocketMessage", "webSocketClose", "webSocketError",
    "web_socket_message", "web_socket_close", "web_socket_error",
))

# Types whose values ``isolate`` hands over as they are, without looking further.
SCALAR_TYPES = _SCALARS = frozenset((
    type(None), bool, int, float, complex, str, bytes, datetime.datetime, datetime.date,
))


def reserved_message(name: str) -> str:
    return f"'{name}' is a reserved method and cannot be called over RPC."


def unknown_message(name: str) -> str:
    return f'The RPC receiver does not implement the method "{name}".'


def isolate(value: Any) -> Any:
    """Return ``value`` as the other side of an RPC call may hold it.

    Immutable values (None, bool, int, float, complex, str, bytes, datetime and date,
    enums, and tuples and frozensets of them) pass as they are; dict, list, set, bytearray, memoryview and
    dataclass instances are copied, recursively, so caller and callee never share
    mutable state; a Request or Response is handed over (the sender's becomes used)
    and a stream (async iterator) is handed over as it is. Anything else raises
    TypeError naming its type.
    """
    kind = type(value)
    if kind in _SCALARS or isinstance(value, enum.Enum):
        return value
    if kind is tuple:
        items = tuple(isolate(v) for v in value)
        return value if all(a is b for a, b in zip(items, value)) else items
    if kind is frozenset:
        return frozenset(isolate(v) for v in value)
    if kind is dict:
        return {isolate(k): isolate(v) for k, v in value.items()}
    if kind is list:
        return [isolate(v) for v in value]
    if kind is set:
        return {isolate(v) for v in value}
    if kind is bytearray:
        return bytearray(value)
    if kind is memoryview:
        return value.tobytes()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        copy = object.__new__(kind)
        for field in dataclasses.fields(value):
            object.__setattr__(copy, field.name, isolate(getattr(value, field.name)))
        return copy
    if isinstance(value, Request):
        return forward_request(value)
    if isinstance(value, Response):
        return hand_over_response(value)
    if hasattr(value, "__aiter__"):
        return value
    raise TypeError(
        f"Cannot pass a value of type {kind.__qualname__} over RPC: use None, bool, int, "
        "float, str, bytes, datetime, date, tuple, list, dict, set, a dataclass, a Request, "
        "a Response or a stream"
    )


def hand_over_response(src: Response) -> Response:
    """What the receiver of a Response gets (the caller of a binding, the caller of an RPC
    method that returned one): of the sender's class (a ``workers.Response`` arrives as
    one, its ``status_text`` kept), the same status and body object, the headers copied
    on write, ``src`` marked used (as a forwarded Request); its socket, the slots of a
    subclass and its instance dict go with it. The compiled core does the same in C for
    an exact Response."""
    kind = type(src)
    resp = kind.__new__(kind)
    resp.status = src.status
    resp.headers = Headers(src.headers) if type(src.headers) is not Headers else src.headers.copy()
    resp.body = take_body(src)
    resp.body_used = False
    web_socket = src.web_socket
    if web_socket is not None:  # an upgrade's answer: its socket goes with it
        resp._web_socket = web_socket
    if kind is not Response:
        for klass in kind.__mro__:
            if klass is Response:
                break
            slots = klass.__dict__.get("__slots__", ())  # its own (getattr would find Response's)
            for name in (slots,) if isinstance(slots, str) else slots:
                if name not in ("__dict__", "__weakref__") and hasattr(src, name):
                    setattr(resp, name, getattr(src, name))
        extra = getattr(src, "__dict__", None)
        if extra:
            resp.__dict__.update(extra)
    return resp
