"""Raw HTTP conversion in Python: parser-level parts to a Request, a Response to parts.

The contract is ``fastbind.embed``'s (its module docstring). ``fastbind/http/_raw.pyx``
does the same in C for the common shapes and falls back to these functions for the
rest; ``RawEntry`` here is the entry point of builds without the compiled core.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from typing import Any, Union

from ..body import check_body
from ..headers import Headers
from ..request import Request, check_url, normalize_method
from ..response import Response

__all__ = (
    "RawEntry",
    "raw_request",
    "raw_response",
    "RawHeaders",
    "RawRequestBody",
    "RawResponseBody",
    "RawResponse",
    "METHODS",
    "COMMON_NAMES",
)

#: Request headers as a parser gives them: ``(name, value)`` pairs of bytes (ASGI's
#: two-item lists are accepted too).
RawHeaders = Iterable[Sequence[bytes]]
RawRequestBody = Union[bytes, bytearray, memoryview, AsyncIterator[bytes], None]
RawResponseBody = Union[bytes, bytearray, memoryview, AsyncIterator[bytes]]
RawResponse = tuple[int, list[tuple[bytes, bytes]], RawResponseBody]

_STANDARDMETHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
METHODS: dict[object, str] = {m: m for m in _STANDARDMETHODS}
METHODS.update((m.encode(), m) for m in _STANDARDMETHODS)

# Header names repeat from request to request, so their decoded (and encoded) forms
# are kept; the caches are bounded so that clients inventing names cannot grow them.
_NAME_CACHE_SIZE = 512
COMMON_NAMES = (
    "accept", "accept-encoding", "accept-language", "authorization", "cache-control",
    "connection", "content-encoding", "content-length", "content-type", "cookie", "date",
    "etag", "host", "if-modified-since", "if-none-match", "last-modified", "location",
    "origin", "referer", "server", "set-cookie", "transfer-encoding", "user-agent", "vary",
    "x-forwarded-for", "x-forwarded-proto", "x-request-id",
)
_ENCODED_NAMES: dict[str, bytes] = {n: n.encode() for n in COMMON_NAMES}

_new_request = Request.__new__
_new_headers = Headers.__new__




class RawEntry:
    """Serves raw requests with Worker ``entry`` of ``runtime`` (the pure build's entry point)."""

    __slots__ = ("_runtime", "_entry", "_target")

    def __init__(self, runtime: Any, entry: str) -> None:
        self._runtime = runtime
        self._entry = entry
        self._target: Any = None

    @property
    def runtime(self) -> Any:
        return self._runtime

    @property
    def entry(self) -> str:
        return self._entry

    def __call__(
        self, method: bytes | str, url: str, headers: RawHeaders, body: RawRequestBody = None
    ) -> Awaitable[RawResponse]:
        target = self._target
        if target is None:  # an unknown Worker raises ConfigError here, at each call
            target = self._target = self._runtime.entry(self._entry)
        return target.converted(raw_request(method, url, headers, body), raw_response)  # type: ignore[no-any-return]


def raw_request(
    method: bytes | str, url: str, headers: RawHeaders, body: RawRequestBody = None
) -> Request:
    """The Request a Worker receives for these raw parts (the contract of this module)."""
    request = _new_request(Request)
    request.method = METHODS.get(method) or _method(method)
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
    # check_url returns a URL already in its standard form as it is, after one match.
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
