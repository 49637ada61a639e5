"""Bindings to Workers served by another process: their fetch is an outbound fetch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from yarl import URL

from ..bindings import RemoteBinding
from ..body import BodyInit
from ..core import current_invocation
from ..errors import ConfigError, FastbindError
from ..extension import Extension, register
from ..headers import HeadersInit
from ..request import Request
from ..response import Response
from .client import OutboundClient, check_timeout, outgoing_headers
from .fetch import send
from .websocket import open_websocket, wants_websocket

if TYPE_CHECKING:
    from ..runtime import Runtime
    from .fetch import RedirectMode

__all__ = ("RemoteFetcher", "RemoteBindings")


class RemoteFetcher:
    """``env.X`` for a binding declared with ``fastbind.remote(base_url)``.

    ``fetch`` sends the request to ``base_url`` (its path, if any, prefixed) with
    the path and query of the request's own URL, so a pipeline can span processes.
    It is an outbound fetch of the calling invocation: one subrequest, and a slot
    of the pipeline's connection gate while it waits for the response headers.
    """

    __slots__ = ("_runtime", "_binding", "_base", "_prefix")

    def __init__(self, runtime: Runtime, binding: str, base_url: str) -> None:
        base = URL(base_url)
        if base.scheme not in ("http", "https") or not base.raw_host:
            raise ConfigError(f'Remote binding "{binding}" needs an http(s) URL, not {base_url!r}.')
        self._runtime = runtime
        self._binding = binding
        self._base = str(base.origin())
        self._prefix = base.raw_path.rstrip("/")

    @property
    def binding(self) -> str:
        return self._binding

    @property
    def target(self) -> str:
        """The base URL the requests go to."""
        return self._base + self._prefix

    def url_for(self, url: str) -> str:
        """Where a request for ``url`` is sent: the remote origin, ``url``'s path and query."""
        parsed = URL(url)
        path_qs = parsed.raw_path_qs
        return self._base + self._prefix + (path_qs if path_qs.startswith("/") else "/" + path_qs)

    async def fetch(
        self,
        input: str | Request,
        *,
        method: str | None = None,
        headers: HeadersInit = None,
        body: BodyInit = None,
        redirect: RedirectMode = "follow",
        timeout: float | None = None,
    ) -> Response:
        """Send the request, built as ``fetch()`` would, to the remote Worker."""
        runtime = self._runtime
        invocation = current_invocation()
        if invocation is None:
            raise FastbindError(
                f"env.{self._binding}.fetch() was called outside a fastbind invocation"
            )
        request = Request(input, method=method, headers=headers, body=body)
        if wants_websocket(request.headers):
            wait = check_timeout(timeout) if timeout is not None else runtime.extension(OutboundClient).timeout
            return await open_websocket(runtime, invocation, self.url_for(request.url), request.headers, wait)
        return await send(
            runtime, invocation, self.url_for(request.url), request.method,
            outgoing_headers(request.headers), request.body, redirect, timeout,
        )

    def __repr__(self) -> str:
        return f"<RemoteFetcher {self._binding} -> {self.target}>"


@register
class RemoteBindings(Extension):
    """Serves ``fastbind.remote(url)`` bindings: a RemoteFetcher in the Worker's env."""

    def binding(self, worker: str, name: str, declaration: object) -> object:
        if isinstance(declaration, RemoteBinding):
            return RemoteFetcher(self.runtime, name, declaration.url)
        return NotImplemented
