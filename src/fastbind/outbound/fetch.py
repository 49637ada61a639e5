"""Global ``fetch()``: outbound HTTP from Workers, counted in the ledger and gated per pipeline."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

from yarl import URL

from ..body import BodyInit
from ..headers import TEXT_TYPE, HeadersInit
from ..core import current_invocation

from ..redirects import check_redirect_mode, location_of, next_hop, redirect_refused
from ..redirects import MAX_REDIRECTS as MAX_REDIRECTS
from ..request import Request, check_cf, check_url
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
from .hop import without_hop
from .websocket import open_websocket, wants_websocket

if TYPE_CHECKING:
    import aiohttp

    from ..runtime import Runtime

__all__ = ("fetch", "send", "MAX_REDIRECTS", "RedirectMode")

RedirectMode = Literal["follow", "manual", "error"]

_NULL_BODY_STATUSES = frozenset((101, 103, 204, 205, 304))
_SCHEMES = frozenset(("http", "https"))
_BYTES_LIKE = (bytes, bytearray, memoryview)


async def fetch(
    input: str | Request,
    *,
    method: str | None = None,
    headers: HeadersInit = None,
    body: BodyInit = None,
    redirect: RedirectMode = "follow",
    timeout: float | None = None,
    cf: Mapping[str, Any] | None = None,
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
    Outside any Worker, fetch is a plain HTTP client on a connection of its own. An
    extension may serve a Worker's fetch() instead of the network (a dispatch namespace's
    outbound Worker receives its Workers' requests, ``Extension.fetch_interceptor``).

    ``redirect``: "follow" (at most 20, then ``TypeError("Too many redirects.")``),
    "manual" (return the 3xx Response) or "error" (raise RedirectError, a FetchError
    and a TypeError); the rule is ``fastbind/redirects.py``, shared with a binding's
    fetch. ``timeout``: seconds allowed for connecting and for each wait for data (the
    headers, then each body chunk); by default the Runtime's ``fetch_timeout``, 30 s.
    ``cf``: accepted as Cloudflare's fetch accepts it (a dict) and checked; nothing
    here acts on it (there is no Cloudflare edge in between). A binding's fetch passes
    it to the callee as ``request.cf``.

    Raises TypeError for a malformed URL or a scheme other than http and https, and
    FetchError, naming the URL, when the network fails.
    """
    check_cf(cf)
    invocation = current_invocation()
    runtime = None if invocation is None else invocation.pipeline.owner
    if runtime is not None:
        # An extension may serve this Worker's fetch() (a dispatch namespace's outbound Worker).
        intercept = runtime.fetch_interceptor(invocation)
        if intercept is not None:
            return await intercept(Request(input, method=method, headers=headers, body=body, cf=cf))  # type: ignore[no-any-return]
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
    check_redirect_mode(redirect)
    client = None if runtime is None else runtime.extension(OutboundClient)
    if timeout is not None:
        timeout = check_timeout(timeout)
    elif client is not None:
        timeout = client.timeout
    else:
        timeout = DEFAULT_FETCH_TIMEOUT_S
    parsed = _parse_url(url)
    target = str(parsed)
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
            location = location_of(status, resp.headers)
            if location is None or redirect == "manual":
                break
            resp.release()  # the connection is reused if the redirect's body was read already
            if redirect == "error":
                raise redirect_refused(target, status, location)
            target, method, headers, data = next_hop(
                target, method, headers, data, status, location, redirects
            )
            # A remote binding's hop headers are signed for the first target only: the
            # redirected request goes without them (as a plain request would).
            headers = without_hop(headers)
            redirects += 1
            parsed = _parse_str_url(target)

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


def _parse_url(target: object) -> URL:
    """``target`` in the URL standard's form, for aiohttp; TypeError as ``Request(target)``
    raises it, or for a scheme other than http and https."""
    return _parse_str_url(check_url(target))


@functools.lru_cache(maxsize=1024)  # Workers fetch the same few URLs again and again
def _parse_str_url(target: str) -> URL:
    url = URL(target, encoded=True)  # serialised by check_url already: sent as it is
    scheme = url.scheme
    if scheme not in _SCHEMES:
        raise TypeError(f'Fetch API cannot load: unsupported scheme "{scheme}"')
    return url


def _payload(body: Any, headers: list[tuple[str, str]]) -> tuple[Any, list[tuple[str, str]]]:
    """What aiohttp sends for ``body``, and the headers to send with it."""
    if body is None or isinstance(body, _BYTES_LIKE):
        return body, headers
    if isinstance(body, str):
        if not any(name == "content-type" for name, _ in headers):
            headers = [*headers, TEXT_TYPE]  # the Fetch API's type for a str body
        return body.encode(), headers
    return _stream_chunks(body), headers


async def _stream_chunks(stream: Any) -> AsyncIterator[bytes | bytearray | memoryview]:
    async for chunk in stream:
        if isinstance(chunk, str):
            chunk = chunk.encode()
        elif not isinstance(chunk, _BYTES_LIKE):
            raise TypeError(f"A request body stream must yield bytes, not {type(chunk).__name__}")
        yield chunk
