"""What Python Workers refuse to send over RPC, refused the same way, for Workers of the ``workers`` module.

A Worker loaded through ``fastbind.workers`` (a ``workers.WorkerEntrypoint``, a
``workers.DurableObject``, an ``on_fetch`` function) follows Python Workers' rules for
the values it sends: its RPC arguments, and its RPC methods' results. Cloudflare
converts them with the SDK's ``python_to_rpc`` (pyodide's ``to_js``), then workerd's
structured clone; so here:

- tuple and bytearray, at any depth in lists and dict values, raise the SDK's own
  ``TypeError("<class 'tuple'> cannot be sent over RPC.")``; an awaitable raises
  ``TypeError("Awaitable <class '...'> cannot be sent over RPC.")``;
- what ``to_js`` converts passes: None, bool, int, float, str, bytes, memoryview,
  list, dict, set, ``datetime.datetime`` (a JS Date), a Request or Response;
- anything else (complex, range, ``datetime.date``, frozenset, instances of the
  application's classes, dataclasses, enums) reaches workerd's serialiser as a Python
  proxy and is refused with its ``DataCloneError`` (a TypeError here), whose text
  begins as workerd's does.

Functions (which the SDK sends as stubs) and exceptions (which it sends as JS Errors)
are refused as fastbind's native rules refuse them: code that passes here passes there. Native Workers keep fastbind's wider rules (``rpc_values.py``); docs/rpc.md has
both in one table.
"""

from __future__ import annotations

import datetime
import inspect
from typing import Any

from ..request import Request
from ..response import Response

__all__ = ("DataCloneError", "check_python_workers_value")

_PASS = frozenset((type(None), bool, int, float, str, bytes, memoryview, datetime.datetime))


class DataCloneError(TypeError):
    """workerd's refusal of a value its serialiser cannot clone (a DOMException there)."""


def check_python_workers_value(value: Any) -> None:
    """Raise what Python Workers raise when ``value`` is sent over RPC; None if it may be."""
    kind = type(value)
    if kind in _PASS:
        return
    if kind is tuple or kind is bytearray:
        raise TypeError(f"{kind} cannot be sent over RPC.")
    if inspect.isawaitable(value):
        raise TypeError(f"Awaitable {kind} cannot be sent over RPC.")
    if kind is list or kind is set:
        for item in value:
            check_python_workers_value(item)
        return
    if kind is dict:
        for item in value.values():
            check_python_workers_value(item)
        return
    if isinstance(value, (Request, Response)):
        return
    if isinstance(value, (int, float, str)) and not hasattr(value, "__dict__"):
        return  # bool and other plain subclasses convert as their base
    raise DataCloneError(
        f'DataCloneError: Could not serialize object of type "{kind.__name__}". '
        "This type does not support serialization."
    )
