"""Raw embedding API: serve ``(method, url, headers, body)`` and get ``(status, headers, body)``.

For runtimes and servers that have their own request types (an ASGI server, an
``asyncio.Protocol`` on httptools, another language's runtime): they hand fastbind the
parts of a request as their HTTP parser produced them and get the parts of the response
back, with nothing in between but the Request the Worker itself receives::

    raw = RawDispatcher(runtime, "gateway")
    status, headers, body = await raw(b"GET", "https://example.com/me",
                                      [(b"host", b"example.com")], b"")

Each call is one top-level request (``Runtime.dispatch``): a pipeline with its depth,
ledger and lifecycle. ``docs/embedding.md`` has worked examples.

The contract, which lets the fast path skip the validation ``Request(...)`` does:

- ``method`` is an HTTP method token, ``bytes`` or ``str`` (the common ones are
  recognised without decoding).
- ``url`` is the absolute URL of the request. An ``http``/``https`` URL is checked only
  for a host and for spaces and control characters; any other is fully checked.
- ``headers`` are ``(name, value)`` pairs of ``bytes`` as an HTTP parser gives them
  (h11, httptools and ASGI servers all reject CR, LF and NUL, which fastbind does not
  check again). Names are lower-cased, both are decoded as latin-1 (byte for byte).
- ``body`` is ``bytes``, ``bytearray``, ``memoryview``, an async iterator of bytes (a
  streamed body) or None; it reaches the Worker as it is (an empty one as None),
  also on a GET or HEAD, which ``Request(...)`` would refuse: whether to accept such
  a request is the host's decision.

The response comes back as ``status`` (int), ``headers`` (``list[tuple[bytes,
bytes]]``, lower-case names; values encoded as latin-1, or UTF-8 when a value holds a
character latin-1 cannot) and ``body``: ``bytes``, ``bytearray`` or ``memoryview`` as
the Worker made it (a ``str`` is encoded to UTF-8, None is ``b""``), or an async
iterator of bytes. A streamed body keeps the pipeline alive until it has been read to
its end or closed with ``await body.aclose()``, so a host must do one or the other.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING

from .core import compiled
from .http.raw import (
    RawHeaders,
    RawRequestBody,
    RawResponse,
    RawResponseBody,
    raw_request,
    raw_response,
)
from .runtime import Runtime

# The entry point's base: the C one (fastbind/http/_raw.pyx) with the compiled core.
if TYPE_CHECKING or compiled is None:
    from .http.raw import RawEntry
else:
    from .http._raw import RawEntry

__all__ = (
    "RawDispatcher",
    "raw_request",
    "raw_response",
    "RawHeaders",
    "RawRequestBody",
    "RawResponseBody",
    "RawResponse",
)


class RawDispatcher(RawEntry):
    """Serves raw requests with Worker ``entry`` of ``runtime``; see the module docstring.

    ``await raw(method, url, headers, body)`` returns ``(status, headers, body)``. Errors
    behave as in ``Runtime.dispatch``: an exception in the Worker becomes a 500 response,
    a ConfigError (an unknown ``entry``, a wrong binding) raises, and cancelling the
    awaiting task cancels the pipeline.

    Calling it is the core's work: the parts become the Request and the pipeline runs
    in the awaiting task with no coroutine of its own.
    """

    __slots__ = ()

    def __init__(self, runtime: Runtime, entry: str) -> None:
        if not isinstance(runtime, Runtime):
            raise TypeError(f"RawDispatcher needs a fastbind.Runtime, not {type(runtime).__name__}")
        if not isinstance(entry, str) or not entry:
            raise TypeError(f"RawDispatcher entry must be a Worker name (str), not {entry!r}")
        super().__init__(runtime, entry)

    if TYPE_CHECKING:

        @property
        def runtime(self) -> Runtime: ...

        @property
        def entry(self) -> str:
            """The name of the Worker that serves every request."""

        def __call__(
            self, method: bytes | str, url: str, headers: RawHeaders, body: RawRequestBody = None
        ) -> Awaitable[RawResponse]: ...

    def __repr__(self) -> str:
        return f"<RawDispatcher {self.entry!r}>"


if compiled is not None and not TYPE_CHECKING:
    from .http._raw import enable_fast_calls

    enable_fast_calls(RawDispatcher)  # CPython 3.11 gives no subclass its base's entry point
