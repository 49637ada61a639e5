"""Global ``fetch()``: outbound HTTP from Workers, counted in the ledger and gated per pipeline."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from yarl import URL

from ..body import BodyInit
from ..core import current_invocation
from ..errors import FetchError
from ..headers import HeadersInit
from ..request import Request, check_url
from ..response import Response
from ..runtime import DEFAULT_FETCH_TIMEOUT_S
from .client import (
    NetworkBody,
    OutboundClient,
    check_timeout,
    client_timeout,
    network_error,
    new_session,
    outgoing_headers,
    response_headers,
)
from .gate import Admission
from .websocket import open_websocket, wants_websocket

if TYPE_CHECKING:
    import aiohttp

    from ..runtime import Runtime

__all__ = ("fetch", "send", "MAX_REDIRECTS", "RedirectMode")

RedirectMode = Literal["follow", "manual", "error"]

MAX_REDIRECTS = 20  # the Fetch standard's limit
_REDIRECT_MODES = frozenset(("follow", "manual", "error"))
_REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
_NULL_BODY_STATUSES = frozenset((101, 103, 204, 205, 304))
_SCHEMES = frozenset(("http", "https"))
_URL_FORBIDDEN = frozenset("\r\n\0 \t")  # as Request's check_url: no whitespace, no NUL
_BYTES_LIKE = (bytes, bytearray, memoryview)
# Dropped when a redirect turns the request into a bodiless GET (Fetch standard,
# "HTTP-redirect fetch", step 12).
_BODY_HEADERS = frozenset((
    "content-encoding", "content-language", "content-location", "content-type",
))
# Never carried to another origin by a redirect: they would hand it the caller's secrets.
_CREDENTIAL_HEADERS = frozenset(("authorization", "proxy-authorization", "cookie"))
_TEXT_CONTENT_TYPE = ("content-type", "text/plain;charset=UTF-8")


async def fetch(
    input: str | Request,
    *,
    method: str | None = None,
    headers: HeadersInit = None,
    body: BodyInit = None,
    redirect: RedirectMode = "follow",
    timeout: float | None = None,
) -> Response:
    """Send an HTTP request to the network; return its Response once the headers are in.

    The arguments build a Request as ``Request(input, method=..., headers=...,
    body=...)`` does; a request body may be bytes-like, str or an async iterator of
    bytes (sent chunked). The Response body streams from the network: it is read
    only when the caller reads it, and its connection is released once it is read
    to the end or ``await resp.aclose()`` drops it.

    Inside a Worker, the fetch and every redirect it follows count as subrequests
    of the calling invocation (``TooManySubrequestsError`` past the budget) and wait
    at the pipeline's connection gate: at most ``Limits.open_connections`` fetches
    of one pipeline wait for response headers at once, the others queue in order.
    Outside any Worker, fetch is a plain HTTP client on a connection of its own.

    ``redirect``: "follow" (at most 20, then ``TypeError("Too many redirects.")``),
    "manual" (return the 3xx Response) or "error" (raise FetchError).
    ``timeout``: seconds allowed for connecting and for each wait for data (the
    headers, then each body chunk); by default the Runtime's ``fetch_timeout``, 30 s.

    Raises TypeError for a malformed URL or a scheme other than http and https, and
    FetchError, naming the URL, when the network fails.
    """
    invocation = current_invocation()
    runtime = None if invocation is None else invocation.pipeline.owner
    if type(input) is str and method is None and headers is None and body is None:
        # The common ``fetch(url)``: there is no Request to build or copy.
        return await send(runtime, invocation, input, "GET", [], None, redirect, timeout)
    request = Request(input, method=method, headers=headers, body=body)
    if wants_websocket(request.headers):
        client = None if runtime is None else runtime.extension(OutboundClient)
        wait = check_timeout(timeout) if timeout is not None else (
            client.timeout if client is not None else DEFAULT_FETCH_TIMEOUT_S)
        return await open_websocket(runtime, invocation, request.url, request.headers, wait)
    return await send(
        runtime, invocation, request.url, request.method, outgoing_headers(request.headers),
        request.body, redirect, timeout,
    )


async def send(
    runtime: Runtime | None,
    invocation: Any,
    url: str,
    method: str,
    headers: list[tuple[str, str]],
    body: Any,
    redirect: RedirectMode = "follow",
    timeout: float | None = None,
) -> Response:
    """Send one outbound request, following its redirects as ``redirect`` says.

    ``headers`` are the pairs to send (see ``outgoing_headers``); ``body`` is
    bytes-like, str, an async iterator of bytes or None. Each request is charged to
    ``invocation`` and gated when it is not None. The session is ``runtime``'s, or
    one made for this request alone (closed with its body) when there is no Runtime.
    """
    if redirect not in _REDIRECT_MODES:
        raise TypeError(f'fetch() redirect must be "follow", "manual" or "error", not {redirect!r}')
    client = None if runtime is None else runtime.extension(OutboundClient)
    if timeout is not None:
        timeout = check_timeout(timeout)
    elif client is not None:
        timeout = client.timeout
    else:
        timeout = DEFAULT_FETCH_TIMEOUT_S
    target = url
    parsed = _parse_url(url)
    data, headers = _payload(body, headers)
    owned = None
    if client is not None:
        session = client.session()
    else:
        session = owned = new_session()
    try:
        # Redirects are followed here, not by aiohttp, so that each hop is counted and gated.
        redirects = 0
        while True:
            resp = await _hop(session, invocation, method, parsed, target, headers, data, timeout)
            status = resp.status
            location = resp.headers.get("Location") if status in _REDIRECT_STATUSES else None
            if location is None or redirect == "manual":
                break
            resp.release()  # the connection is reused if the redirect's body was read already
            if redirect == "error":
                raise FetchError(
                    f'Fetch to {parsed} was redirected ({status} to {location}) and redirect is "error".'
                )
            if redirects == MAX_REDIRECTS:
                raise TypeError("Too many redirects.")
            redirects += 1
            next_url = _redirect_url(parsed, location, status)
            if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
                method = "GET"
                data = None
                headers = [h for h in headers if h[0] not in _BODY_HEADERS]
            elif data is not None and not isinstance(data, _BYTES_LIKE):
                raise FetchError(
                    f"Fetch to {parsed} was redirected ({status} to {next_url}), but its streamed "
                    'body was sent already and cannot be sent again; send bytes or use redirect="manual".'
                )
            if next_url.origin() != parsed.origin():
                headers = [h for h in headers if h[0] not in _CREDENTIAL_HEADERS]
            parsed = next_url
            target = str(next_url)

        response = Response.__new__(Response)
        response.status = status
        response.headers = response_headers(resp.headers)
        response.body_used = False
        if method == "HEAD" or status in _NULL_BODY_STATUSES:
            resp.release()
            response.body = None
        else:
            response.body = NetworkBody(resp, parsed, timeout, owned)
            owned = None  # the body closes it once read or dropped
        return response
    finally:
        if owned is not None:
            await owned.close()


async def _hop(
    session: aiohttp.ClientSession,
    invocation: Any,
    method: str,
    url: URL,
    target: str,
    headers: list[tuple[str, str]],
    data: Any,
    timeout: float,
) -> aiohttp.ClientResponse:
    """One request, back once its response headers are in.

    Inside a Worker it is a subrequest of ``invocation`` and holds a slot of the
    pipeline's gate while it waits for the headers.
    """
    import aiohttp  # when first needed, as in http_client.new_session

    admission = Admission(invocation, target)
    try:
        async with admission:
            resp = await session.request(
                method, url, headers=admission.traced(headers) or None, data=data, allow_redirects=False,
                timeout=client_timeout(timeout),
            )
            admission.status = resp.status
            return resp
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise network_error(exc, url, timeout) from exc


def _parse_url(target: str) -> URL:
    """``target`` parsed, or TypeError as ``Request(target)`` and the Fetch API raise it."""
    if type(target) is not str:
        check_url(target)  # raises the TypeError that names the type
        target = str(target)
    return _parse_str_url(target)


@functools.lru_cache(maxsize=1024)  # Workers fetch the same few URLs again and again
def _parse_str_url(target: str) -> URL:
    try:
        if not _URL_FORBIDDEN.isdisjoint(target):
            raise ValueError(target)
        url = URL(target)
        host = url.raw_host
        url.port  # noqa: B018 -- yarl checks the port only when it is read
    except (ValueError, TypeError):
        raise TypeError(f"Invalid URL: {target}") from None
    scheme = url.scheme
    if not scheme:
        raise TypeError(f"Invalid URL: {target}")
    if scheme not in _SCHEMES:
        raise TypeError(f'Fetch API cannot load: unsupported scheme "{scheme}"')
    if not host:
        raise TypeError(f"Invalid URL: {target}")
    return url


def _redirect_url(url: URL, location: str, status: int) -> URL:
    try:
        next_url = url.join(URL(location))
        host = next_url.raw_host
    except ValueError:
        host = None
    if not host or next_url.scheme not in _SCHEMES:
        raise FetchError(f"Fetch to {url} was redirected ({status}) to an invalid URL {location!r}.")
    return next_url


def _payload(body: Any, headers: list[tuple[str, str]]) -> tuple[Any, list[tuple[str, str]]]:
    """What aiohttp sends for ``body``, and the headers to send with it."""
    if body is None or isinstance(body, _BYTES_LIKE):
        return body, headers
    if isinstance(body, str):
        if not any(name == "content-type" for name, _ in headers):
            headers = [*headers, _TEXT_CONTENT_TYPE]  # the Fetch API's type for a str body
        return body.encode(), headers
    return _stream_chunks(body), headers


async def _stream_chunks(stream: Any) -> AsyncIterator[bytes | bytearray | memoryview]:
    async for chunk in stream:
        if isinstance(chunk, str):
            chunk = chunk.encode()
        elif not isinstance(chunk, _BYTES_LIKE):
            raise TypeError(f"A request body stream must yield bytes, not {type(chunk).__name__}")
        yield chunk
