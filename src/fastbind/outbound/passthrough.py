"""``ctx.pass_through_on_exception()``: a failed top-level request goes to the origin."""

# ``Runtime(origin=...)`` takes one of:
#   * an http(s) URL string: the request goes there with ``fastbind.fetch`` (redirects
#     returned, not followed), to the origin's scheme, host and port, the origin's
#     path (if any) prefixed to the request's path and query, as remote bindings do;
#   * the name of a Worker of the same Runtime: the request is dispatched to it as a
#     new top-level request (its own pipeline, limits and report);
#   * an async callable ``(request) -> Response``.
# A string with "://" is a URL, any other string a Worker name.

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Union

from yarl import URL

from ..body import is_stream
from ..errors import ConfigError
from ..extension import Extension, register
from ..lifecycle import logger
from ..request import Request
from ..response import Response
from .fetch import fetch

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ("Origin", "OriginalRequest", "PassThrough", "check_origin", "origin_url", "pass_through")

Origin = Union[str, Callable[[Request], Awaitable[Response]]]

_TEXT = {"content-type": "text/plain; charset=utf-8"}

# Set while a request is passed through: an origin Worker that fails in turn gets a
# 500, not a second pass-through (which could loop forever).
_passing_through: ContextVar[bool] = ContextVar("fastbind.passing_through", default=False)


class OriginalRequest:
    """The top-level request as ``dispatch`` received it, before its Worker could change it."""

    __slots__ = ("request", "method", "url", "headers", "body")

    def __init__(self, request: Request) -> None:
        self.request = request  # to see, later, whether a streamed body was read
        self.method = request.method
        self.url = request.url
        self.headers = request.headers.copy()  # copy-on-write: free unless changed
        self.body = request.body

    def replay(self, url: str | None = None) -> Request | None:
        """A Request equal to the original (to ``url`` if given); None if its stream was read."""
        body = self.body
        if is_stream(body):
            if self.request.body_used:
                return None
            self.request.body_used = True  # the stream goes to the origin now
        request = Request.__new__(Request)
        request.method = self.method
        request.url = self.url if url is None else url
        request.headers = self.headers.copy()
        request.body = body
        request.body_used = False
        return request


def check_origin(origin: Any, workers: Collection[str]) -> None:
    """Raise ConfigError unless ``origin`` is None, an http(s) URL, a Worker name or a callable."""
    if origin is None or callable(origin):
        return
    if not isinstance(origin, str):
        raise ConfigError(
            "Runtime origin must be an http(s) URL, the name of a Worker or an async "
            f"callable (request) -> Response, not {type(origin).__name__}."
        )
    if "://" in origin:
        try:
            url = URL(origin)
            host = url.raw_host
        except ValueError:
            host = None
        if not host or url.scheme not in ("http", "https"):
            raise ConfigError(f"Runtime origin {origin!r} is not a valid http(s) URL.")
    elif origin not in workers:
        raise ConfigError(
            f'Runtime origin "{origin}" is neither an http(s) URL nor the name of a Worker '
            "of this Runtime."
        )


def origin_url(origin: str, url: str) -> str:
    """Where ``url`` goes at ``origin``: its scheme, host, port and path prefix, ``url``'s path and query."""
    base = URL(origin)
    path_qs = URL(url).raw_path_qs
    if not path_qs.startswith("/"):
        path_qs = "/" + path_qs
    return str(base.origin()) + base.raw_path.rstrip("/") + path_qs


async def pass_through(runtime: Runtime, original: OriginalRequest) -> Response:
    """Serve ``original`` from ``runtime``'s origin instead of failing with a 500.

    A streamed body that the Worker read cannot be sent again: that is a 500. An
    origin that fails is a 502. Both are logged on the ``fastbind`` logger.
    """
    origin = runtime.options.origin
    if _passing_through.get():
        logger.error("The origin itself failed while serving a passed-through request")
        return Response("Internal Server Error", status=500, headers=_TEXT)
    is_url = isinstance(origin, str) and "://" in origin
    request = original.replay(origin_url(origin, original.url) if is_url else None)
    if request is None:
        logger.error(
            "Cannot pass %s %s through to the origin: its streamed body was already read",
            original.method, original.url,
        )
        return Response("Internal Server Error", status=500, headers=_TEXT)
    token = _passing_through.set(True)
    try:
        if is_url:
            return await fetch(request, redirect="manual")
        if isinstance(origin, str):
            return await runtime.dispatch(origin, request)
        response = await origin(request)
        if not isinstance(response, Response):
            raise TypeError(
                f"The origin {origin!r} returned {type(response).__name__}, expected a Response"
            )
        return response
    except Exception:
        logger.exception("The origin failed to serve %s %s", original.method, original.url)
        return Response("Bad Gateway", status=502, headers=_TEXT)
    finally:
        _passing_through.reset(token)


@register
class PassThrough(Extension):
    """``Runtime(origin=...)``: where requests of Workers that pass through go on failure."""

    def validate(self) -> None:
        check_origin(self.runtime.options.origin, self.runtime.workers)

    def rescuer(self) -> PassThrough | None:
        return None if self.runtime.options.origin is None else self

    def snapshot(self, request: Request) -> OriginalRequest:
        return OriginalRequest(request)

    async def rescue(self, snapshot: OriginalRequest, error: Exception) -> Response:
        return await pass_through(self.runtime, snapshot)
