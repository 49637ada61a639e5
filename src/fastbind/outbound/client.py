"""The aiohttp side of outbound fetch: one session per Runtime, streamed bodies, clear errors."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from yarl import URL

from ..errors import FetchError
from ..extension import Extension, register
from ..headers import Headers
from ..request import check_timeout

if TYPE_CHECKING:
    import aiohttp

    from ..runtime import Runtime

__all__ = (
    "OutboundClient",
    "NetworkBody",
    "check_timeout",
    "client_timeout",
    "network_error",
    "new_session",
    "outgoing_headers",
    "response_headers",
)

# Never forwarded: they describe one hop's connection, not the request (RFC 9110 7.6.1),
# or aiohttp derives them from the URL and the body it sends.
_HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
    "trailer", "upgrade", "host", "content-length",
))
# The encodings aiohttp's parser decodes (aiohttp/http_parser.py): such a body reaches
# the Worker decoded, so the headers that describe the encoded bytes must go.
_DECODED_ENCODINGS = frozenset(("gzip", "deflate", "br", "zstd"))


def new_session() -> aiohttp.ClientSession:
    """A ClientSession configured as the Fetch API behaves."""
    # aiohttp is imported when first needed (here and below): `import fastbind`
    # does not pay the ~120 ms it takes.
    import aiohttp

    return aiohttp.ClientSession(
        # The per-pipeline gate bounds concurrency; a process-wide pool cap would make
        # unrelated pipelines queue behind each other's long downloads.
        #
        # No DNS cache: with one, aiohttp resolves a host once for all concurrent
        # requests in a task of its own, which the task factory would give to the
        # pipeline that happened to ask first; that pipeline ending would then cancel
        # the lookup under every other one. Names are resolved per new connection
        # (pooled ones need none) and the system resolver caches.
        connector=aiohttp.TCPConnector(limit=0, use_dns_cache=False),
        # fetch() has no cookie jar: a shared one would leak cookies between Workers.
        cookie_jar=aiohttp.DummyCookieJar(),
        # Fetch sends no Content-Type the caller did not give (aiohttp would add one).
        skip_auto_headers=("Content-Type",),
        timeout=aiohttp.ClientTimeout(total=None),  # each fetch gives its own
    )


@register
class OutboundClient(Extension):
    """A Runtime's outbound HTTP: its default timeout and its aiohttp session.

    The session is made on first use, with the loop it was made on: a Runtime may be
    driven by several loops in turn (tests do), and a session cannot outlive its loop.
    ``runtime.aclose()`` closes it.
    """

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.timeout = check_timeout(runtime.options.fetch_timeout, "Runtime fetch_timeout")
        self._session: tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession] | None = None

    def session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        entry = self._session
        if entry is not None and entry[0] is loop:
            return entry[1]
        if entry is not None:
            entry[1].detach()  # made on a loop that has since stopped
        session = new_session()
        self._session = (loop, session)
        return session

    async def aclose(self) -> None:
        entry, self._session = self._session, None
        if entry is None:
            return
        loop, session = entry
        if loop is asyncio.get_running_loop():
            await session.close()
        else:
            # Made on a loop that has since stopped: its sockets cannot be closed from here.
            session.detach()


@functools.lru_cache(maxsize=32)
def client_timeout(seconds: float) -> aiohttp.ClientTimeout:
    """aiohttp's form of a fetch timeout of ``seconds``."""
    import aiohttp

    # ``connect`` covers DNS, TCP and TLS (and is free on a pooled connection);
    # ``sock_read`` every wait for data: the response headers, then each body chunk.
    return aiohttp.ClientTimeout(total=None, connect=seconds, sock_read=seconds)


def outgoing_headers(headers: Headers) -> list[tuple[str, str]]:
    """The request headers to send, without hop-by-hop ones."""
    return [item for item in headers.items() if item[0] not in _HOP_BY_HOP]


def response_headers(raw: Any) -> Headers:
    """A fastbind Headers from aiohttp's parsed response headers."""
    items = list(zip(map(str.lower, raw.keys()), raw.values()))
    encoding = raw.get("Content-Encoding")
    if encoding is not None and encoding.lower() in _DECODED_ENCODINGS:
        items = [it for it in items if it[0] != "content-encoding" and it[0] != "content-length"]
    # aiohttp's parser has validated every name and value, so skip re-checking them.
    headers = Headers.__new__(Headers)
    headers._items = items
    headers._shared = False
    return headers


def network_error(exc: BaseException, url: Any, timeout: float) -> FetchError:
    """A FetchError that says what failed, on which URL, in words."""
    import aiohttp

    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        what = f"timed out after {timeout:g} s while connecting to {url.host}:{url.port}"
    elif isinstance(exc, asyncio.TimeoutError):
        what = f"timed out after {timeout:g} s waiting for the server to send data"
    elif isinstance(exc, aiohttp.ClientConnectorDNSError):
        what = f"could not resolve host {exc.host!r} ({exc.os_error.strerror or exc.os_error})"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        what = f"could not connect to {exc.host}:{exc.port} ({_reason(exc.os_error)})"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        what = "the server closed the connection before sending a complete response"
    elif isinstance(exc, aiohttp.ClientPayloadError):
        what = f"the response body was cut short or malformed ({exc})"
    elif isinstance(exc, aiohttp.ClientResponseError):
        what = f"the server sent an invalid response ({exc.message})"
    else:
        what = str(exc) or type(exc).__name__
    return FetchError(f"Fetch to {url} failed: {what}.")


def _reason(error: OSError) -> str:
    # The event loops word a refused connect as "Connect call failed ('host', port)";
    # the errno says what happened.
    if error.errno is not None and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or str(error)


class NetworkBody:
    """The body of a fetched Response, streamed from the network as it arrives.

    Nothing is buffered beyond what aiohttp has read from the socket. The connection
    goes back to the pool when the body has been read to its end, and is closed when
    ``aclose()`` drops the body early or reading fails or is cancelled.
    """

    __slots__ = ("_response", "_content", "_url", "_timeout", "_session", "_done")

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        url: URL,
        timeout: float,
        owned_session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._response = response
        self._content = response.content
        self._url = url
        self._timeout = timeout
        self._session = owned_session
        self._done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        import aiohttp

        if self._done:
            raise StopAsyncIteration
        try:
            chunk = await self._content.readany()
        except BaseException as exc:
            self._finish(abort=True)
            if self._session is not None:
                await self._close_session()
            if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError)):
                raise network_error(exc, self._url, self._timeout) from exc
            raise
        if self._content.at_eof():
            # The last chunk: give the connection back now, not one more read later.
            self._finish(abort=False)
            if self._session is not None:
                await self._close_session()
        if chunk:
            return chunk
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Drop the rest of the body and close its connection."""
        self._finish(abort=True)
        if self._session is not None:
            await self._close_session()

    @property
    def done(self) -> bool:
        """True once the body was read to its end or dropped."""
        return self._done

    def _finish(self, *, abort: bool) -> None:
        if not self._done:
            self._done = True
            if abort:
                self._response.close()
            else:
                self._response.release()

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def __repr__(self) -> str:
        state = "done" if self._done else "open"
        return f"<NetworkBody {self._url} {state}>"
