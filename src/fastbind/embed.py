"""Raw embedding API: serve ``(method, url, headers, body)`` and get ``(status, headers, body)``.

For runtimes and servers that have their own request types (an ASGI server, an
``asyncio.Protocol`` on httptools, another language's runtime): they hand fastbind the
parts of a request as their HTTP parser produced them and get the parts of the response
back, with nothing in between but the Request the Worker itself receives::

    raw = RawDispatcher(runtime, "gateway")
    status, headers, body = await raw(b"GET", "https://example.com/me",
                                      [(b"host", b"example.com")], b"")

Each call is one top-level request (``Runtime.dispatch``): a pipeline with its depth,
ledger and lifecycle (DESIGN.md 2.7). ``docs/embedding.md`` has worked examples.

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

from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from typing import TYPE_CHECKING, Union

from . import _core_py, _impl
from .body import check_body
from .headers import Headers
from .request import Request, check_url, normalize_method
from .response import Response
from .runtime import Runtime

__all__ = (
    "RawDispatcher",
    "raw_request",
    "raw_response",
    "RawHeaders",
    "RawRequestBody",
    "RawResponseBody",
    "RawResponse",
)

#: Request headers as a parser gives them: ``(name, value)`` pairs of bytes (ASGI's
#: two-item lists are accepted too).
RawHeaders = Iterable[Sequence[bytes]]
RawRequestBody = Union[bytes, bytearray, memoryview, AsyncIterator[bytes], None]
RawResponseBody = Union[bytes, bytearray, memoryview, AsyncIterator[bytes]]
RawResponse = tuple[int, list[tuple[bytes, bytes]], RawResponseBody]

_STANDARD_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
_METHODS: dict[object, str] = {m: m for m in _STANDARD_METHODS}
_METHODS.update((m.encode(), m) for m in _STANDARD_METHODS)

# Header names repeat from request to request, so their decoded (and encoded) forms
# are kept; the caches are bounded so that clients inventing names cannot grow them.
_NAME_CACHE_SIZE = 512
_COMMON_NAMES = (
    "accept", "accept-encoding", "accept-language", "authorization", "cache-control",
    "connection", "content-encoding", "content-length", "content-type", "cookie", "date",
    "etag", "host", "if-modified-since", "if-none-match", "last-modified", "location",
    "origin", "referer", "server", "set-cookie", "transfer-encoding", "user-agent", "vary",
    "x-forwarded-for", "x-forwarded-proto", "x-request-id",
)
_ENCODED_NAMES: dict[str, bytes] = {n: n.encode() for n in _COMMON_NAMES}

_new_request = Request.__new__
_new_headers = Headers.__new__


class RawDispatcher(_impl.core.RawEntry):
    """Serves raw requests with Worker ``entry`` of ``runtime``; see the module docstring.

    ``await raw(method, url, headers, body)`` returns ``(status, headers, body)``. Errors
    behave as in ``Runtime.dispatch``: an exception in the Worker becomes a 500 response,
    a ConfigError (an unknown ``entry``, a wrong binding) raises, and cancelling the
    awaiting task cancels the pipeline.

    Calling it is the core's work (``RawEntry.__call__``): the parts become the Request
    and the pipeline runs in the awaiting task with no coroutine of its own.
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


if _impl.compiled is not None and issubclass(RawDispatcher, _impl.compiled.RawEntry):
    _impl.compiled.enable_fast_calls(RawDispatcher)


def raw_request(
    method: bytes | str, url: str, headers: RawHeaders, body: RawRequestBody = None
) -> Request:
    """The Request a Worker receives for these raw parts (the contract of this module)."""
    request = _new_request(Request)
    request.method = _METHODS.get(method) or _method(method)
    request.url = _url(url)
    request.headers = _headers(headers)
    if type(body) is bytes:
        request.body = body or None
    else:
        request.body = _body(body)
    request.body_used = False
    return request


def raw_response(response: Response) -> RawResponse:
    """``(status, headers, body)`` of ``response``, which hands its body over."""
    headers: list[tuple[bytes, bytes]] = []
    append = headers.append
    names = _ENCODED_NAMES
    for name, value in response.headers._read():
        raw_name = names.get(name)
        if raw_name is None:
            raw_name = name.encode("latin-1")
            if len(names) < _NAME_CACHE_SIZE:
                names[name] = raw_name
        try:
            raw_value = value.encode("latin-1")
        except UnicodeEncodeError:  # a value made by a Worker, not received from a client
            raw_value = value.encode()
        append((raw_name, raw_value))
    body = response.body
    response.body_used = True
    if body is None:
        body = b""
    elif isinstance(body, str):
        body = body.encode()
    return response.status, headers, body


def _method(method: object) -> str:
    if isinstance(method, (bytes, bytearray, memoryview)):
        method = bytes(method).decode("latin-1")
    return normalize_method(method)


def _url(url: object) -> str:
    # Cheap checks for what an HTTP server builds (scheme://host/target); the full
    # parse is kept for anything else.
    if type(url) is str and url.isprintable() and " " not in url:
        if url.startswith("https://"):
            if len(url) > 8 and url[8] not in "/?#":
                return url
        elif url.startswith("http://") and len(url) > 7 and url[7] not in "/?#":
            return url
    return check_url(url)


def _headers(raw: RawHeaders) -> Headers:
    """Headers of raw pairs, left raw until a Worker reads them (Headers decodes them
    then). The pairs are checked and copied now, as bytes, so that the caller may
    reuse or change what it passed once the call returns."""
    pairs: list[tuple[bytes, bytes]] = []
    append = pairs.append
    try:
        for pair in raw:
            if type(pair) is tuple and len(pair) == 2 and type(pair[0]) is bytes and type(pair[1]) is bytes:
                append(pair)
                continue
            raw_name, raw_value = pair
            if not isinstance(raw_name, _BYTES_LIKE) or not isinstance(raw_value, _BYTES_LIKE):
                raise TypeError
            append((bytes(raw_name), bytes(raw_value)))
    except (TypeError, ValueError):
        raise TypeError(
            f"raw headers must be (name, value) pairs of bytes, not {raw!r}"
        ) from None
    headers = _new_headers(Headers)
    headers._shared = False
    if pairs:
        headers._items = None
        headers._raw = pairs
    else:
        headers._items = []
    return headers


_BYTES_LIKE = (bytes, bytearray, memoryview)


def _body(body: object) -> object:
    checked = check_body(body, "Request")
    if isinstance(checked, (bytes, bytearray, memoryview, str)) and not checked:
        return None
    return checked


# The cores' raw fast paths fall back to the functions above and share their caches.
for _core in (_impl.compiled, _core_py):
    if _core is not None:
        _core.install_raw(raw_request, raw_response, _METHODS, _COMMON_NAMES)
del _core
