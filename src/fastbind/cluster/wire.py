"""RPC values between processes: what ``isolate`` lets cross in one process, as bytes.

A forwarded Durable Object RPC call sends its arguments, and gets its result or the
exception it raised, in this encoding: JSON (orjson) where a value has a JSON form,
and ``{"$": tag, "v": ...}`` for the rest, so every value ``core/rpc_values.isolate``
accepts arrives as the same type with the same content:

| value | on the wire |
|---|---|
| None, bool, str, int (64-bit), float (finite), list | as JSON |
| dict with str keys (none "$") | a JSON object |
| other dict, tuple, set, frozenset, bytes, bytearray, complex, big int, nan/inf | tagged |
| datetime, date | ISO text, tagged |
| Enum member, dataclass instance | class as ``module:qualname`` and value or fields |
| Request, Response | method, URL, status, headers and body (read whole) |
| async iterator (a stream) | read whole; arrives as a stream of one chunk |
| exception | class, message, args and attributes |

Classes are looked up among the modules already imported by the receiver (both
processes load the same Workers), never imported on a peer's word, and must be a
dataclass, an Enum or an exception class. Reading a stream whole is a difference from
one process, where it is handed over unread; docs/scaling.md says so.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import sys
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..errors import FastbindError
from ..headers import Headers
from ..request import Request
from ..response import Response

__all__ = ("encode", "decode", "encode_exception", "decode_exception", "CONTENT_TYPE")

CONTENT_TYPE = "application/x-fastbind-rpc"
_INT64 = (-(2**63), 2**63 - 1)
_FLOAT_SPECIAL = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


class _Streams:
    """Streamed bodies met while encoding: read after the walk, put in ``blobs``."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: list[tuple[dict[str, Any], Any]] = []


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _tree(value: Any, streams: _Streams) -> Any:
    kind = type(value)
    if value is None or kind is bool or kind is str:
        return value
    if kind is int:
        return value if _INT64[0] <= value <= _INT64[1] else {"$": "i", "v": str(value)}
    if kind is float:
        return value if value == value and value not in (float("inf"), float("-inf")) else {"$": "f", "v": str(value)}
    if kind is list:
        return [_tree(v, streams) for v in value]
    if kind is dict:
        if all(type(k) is str for k in value) and "$" not in value:
            return {k: _tree(v, streams) for k, v in value.items()}
        return {"$": "d", "v": [[_tree(k, streams), _tree(v, streams)] for k, v in value.items()]}
    if kind is tuple:
        return {"$": "t", "v": [_tree(v, streams) for v in value]}
    if kind is set or kind is frozenset:
        return {"$": "s" if kind is set else "fs", "v": [_tree(v, streams) for v in value]}
    if kind is bytes:
        return {"$": "b", "v": _b64(value)}
    if kind is bytearray or kind is memoryview:
        return {"$": "ba" if kind is bytearray else "b", "v": _b64(bytes(value))}
    if kind is complex:
        return {"$": "c", "v": [value.real, value.imag]}
    if kind is datetime.datetime:
        return {"$": "dt", "v": value.isoformat()}
    if kind is datetime.date:
        return {"$": "da", "v": value.isoformat()}
    if isinstance(value, enum.Enum):
        return {"$": "e", "c": _class_name(kind), "v": _tree(value.value, streams)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _tree(getattr(value, f.name), streams) for f in dataclasses.fields(value)}
        return {"$": "dc", "c": _class_name(kind), "v": fields}
    if isinstance(value, Request):
        message: dict[str, Any] = {"$": "rq", "m": value.method, "u": value.url, "h": list(value.headers.items())}
        _body(message, value, streams)
        return message
    if isinstance(value, Response):
        message = {"$": "rs", "s": value.status, "h": list(value.headers.items())}
        _body(message, value, streams)
        return message
    if hasattr(value, "__aiter__"):
        node = {"$": "st"}
        streams.pending.append((node, value))
        return node
    raise TypeError(
        f"Cannot pass a value of type {kind.__qualname__} to a Durable Object in another "
        "process: use None, bool, int, float, str, bytes, datetime, date, tuple, list, dict, "
        "set, an Enum, a dataclass, a Request, a Response or a stream"
    )


def _body(node: dict[str, Any], message: Request | Response, streams: _Streams) -> None:
    if message.body_used:
        raise TypeError(f"Cannot pass a {type(message).__name__} whose body was read already")
    body = message.body
    if body is None:
        return
    if isinstance(body, (bytes, bytearray, memoryview)):
        node["b"] = _b64(bytes(body))
    elif isinstance(body, str):
        node["b"] = _b64(body.encode())
    else:
        streams.pending.append((node, message))


def _exception_tree(exc: BaseException, streams: _Streams) -> dict[str, Any]:
    try:
        args = _tree(list(exc.args), streams)
    except TypeError:
        args = None
    attributes = {}
    for name, value in vars(exc).items():
        if not name.startswith("_"):
            try:
                attributes[name] = _tree(value, streams)
            except TypeError:
                pass
    return {"$": "x", "c": _class_name(type(exc)), "m": str(exc), "a": args, "d": attributes}


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


async def _read_streams(streams: _Streams) -> None:
    for node, source in streams.pending:
        if isinstance(source, (Request, Response)):
            node["b"] = _b64(await source.bytes())
        else:
            node["v"] = _b64(b"".join([bytes(chunk) async for chunk in source]))


async def encode(value: Any) -> bytes:
    """``value`` as bytes (TypeError for one that cannot cross; streams are read whole)."""
    streams = _Streams()
    tree = _tree(value, streams)
    if streams.pending:
        await _read_streams(streams)
    return orjson.dumps(tree)


def encode_exception(exc: BaseException) -> bytes:
    """``exc`` as bytes: its class, message, and what of its args and attributes can cross."""
    streams = _Streams()  # a stream in an exception's args is left out, not read
    tree = _exception_tree(exc, streams)
    return orjson.dumps(tree)


def decode(data: bytes) -> Any:
    """The value ``encode`` made ``data`` from."""
    return _value(orjson.loads(data))


def decode_exception(data: bytes, where: str) -> BaseException:
    """The exception ``encode_exception`` made ``data`` from; ``where`` names the object
    it was raised in, for a class this process does not have."""
    value = _value(orjson.loads(data), where)
    if not isinstance(value, BaseException):
        return FastbindError(f"{where} raised an error that could not be read back")
    return value


def _value(node: Any, where: str = "") -> Any:
    kind = type(node)
    if kind is list:
        return [_value(v, where) for v in node]
    if kind is not dict:
        return node
    tag = node.get("$")
    if tag is None:
        return {k: _value(v, where) for k, v in node.items()}
    v = node.get("v")
    if tag == "d":
        return {_value(k, where): _value(item, where) for k, item in v}
    if tag == "t":
        return tuple(_value(item, where) for item in v)
    if tag == "s":
        return {_value(item, where) for item in v}
    if tag == "fs":
        return frozenset(_value(item, where) for item in v)
    if tag == "b":
        return base64.b64decode(v)
    if tag == "ba":
        return bytearray(base64.b64decode(v))
    if tag == "i":
        return int(v)
    if tag == "f":
        return _FLOAT_SPECIAL[v]
    if tag == "c":
        return complex(v[0], v[1])
    if tag == "dt":
        return datetime.datetime.fromisoformat(v)
    if tag == "da":
        return datetime.date.fromisoformat(v)
    if tag == "e":
        cls = _find_class(node["c"], enum.Enum)
        return cls(_value(v, where))
    if tag == "dc":
        cls = _find_class(node["c"], None)
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{node['c']} is not a dataclass here")
        instance = object.__new__(cls)  # type: ignore[arg-type]
        for name, item in v.items():
            object.__setattr__(instance, name, _value(item, where))
        return instance
    if tag == "rq":
        body = node.get("b")
        return Request(node["u"], method=node["m"], headers=Headers(node["h"]),
                       body=None if body is None else base64.b64decode(body))
    if tag == "rs":
        body = node.get("b")
        return Response(None if body is None else base64.b64decode(body), status=node["s"],
                        headers=Headers(node["h"]))
    if tag == "st":
        return _one_chunk(base64.b64decode(v or ""))
    if tag == "x":
        return _exception(node, where)
    raise ValueError(f"unknown RPC value tag {tag!r}")


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


def _find_class(name: str, base: type | None) -> Any:
    module_name, _, qualname = name.partition(":")
    module = sys.modules.get(module_name)
    if module is None:
        raise TypeError(f"class {name} is not loaded in this process")
    value: Any = module
    for part in qualname.split("."):
        value = getattr(value, part, None)
    if not isinstance(value, type) or (base is not None and not issubclass(value, base)):
        raise TypeError(f"{name} is not a class of the expected kind here")
    return value


def _exception(node: dict[str, Any], where: str) -> BaseException:
    message = node.get("m", "")
    try:
        cls = _find_class(node["c"], BaseException)
        args = node.get("a")
        exc = cls(*_value(args, where)) if args is not None else cls(message)
        for name, value in (node.get("d") or {}).items():
            try:
                setattr(exc, name, _value(value, where))
            except (AttributeError, TypeError, ValueError):
                pass
    except Exception:  # a class this process lacks or cannot rebuild: its name and message
        exc = FastbindError(f"{node.get('c', '?')}: {message}")
        exc.add_note(f"raised in {where}; its class could not be rebuilt in this process")
    rebuilt: BaseException = exc
    return rebuilt
