"""Bindings to Workers served by another process: their fetch is an outbound fetch.

With a cluster secret (``FASTBIND_CLUSTER_SECRET``, ``hop.py``) the request also
carries the pipeline: its depth, id and CPU left, signed, so that the Worker at the
other end runs one level deeper in the same pipeline and a loop through processes
stops at ``Limits.depth`` as it does in one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from yarl import URL

from ..bindings import RemoteBinding
from ..body import BodyInit
from ..core import current_invocation
from ..errors import ConfigError, CpuLimitExceeded, FastbindError, SubrequestDepthError
from ..extension import Extension, register
from ..headers import HeadersInit
from ..request import Request
from ..response import Response
from .client import OutboundClient, check_timeout, outgoing_headers
from .fetch import send
from .hop import ERROR, Hop, HopKey, caller_chain, key_from_env, path_of, remaining_cpu_ms, without_hop
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
        url = self.url_for(request.url)
        key = runtime.extension(RemoteBindings).key
        hop: list[tuple[str, str]] = []
        if key is not None:
            hop = self._hop(key, invocation, request.method, url)
        if wants_websocket(request.headers):
            wait = check_timeout(timeout) if timeout is not None else runtime.extension(OutboundClient).timeout
            return await open_websocket(runtime, invocation, url, request.headers, wait, hop)
        sent = outgoing_headers(request.headers)
        response = await send(
            runtime, invocation, url, request.method, without_hop(sent) + hop if hop else sent,
            request.body, redirect, timeout,
        )
        if hop:
            await self._raise_for(response, invocation)
        return response

    def _hop(self, key: HopKey, invocation: object, method: str, url: str) -> list[tuple[str, str]]:
        """The signed hop headers of a call from ``invocation``: the depth it would run
        the remote Worker at is checked here first, as a binding call's is."""
        depth: int = invocation.depth  # type: ignore[attr-defined]
        pipeline = invocation.pipeline  # type: ignore[attr-defined]
        if depth >= pipeline.max_depth:
            raise SubrequestDepthError(chain=caller_chain(invocation), target=self._binding, limit=pipeline.max_depth)
        hop = Hop(depth + 1, pipeline.pipeline_id, remaining_cpu_ms(pipeline))
        return key.sign(hop, method, path_of(url))

    async def _raise_for(self, response: Response, invocation: object) -> None:
        """Raise what an answer of the remote fastbind itself stands for (not its Worker's)."""
        reason = response.headers.get(ERROR)
        if reason is None:
            return
        if reason == "depth":
            await response.aclose()
            pipeline = invocation.pipeline  # type: ignore[attr-defined]
            raise SubrequestDepthError(chain=caller_chain(invocation), target=self._binding, limit=pipeline.max_depth)
        if reason == "cpu":
            await response.aclose()
            raise CpuLimitExceeded()
        if reason == "refused":
            text = (await response.text()).strip()
            raise FastbindError(f"env.{self._binding}: {self.target} refused the call: {text}")

    def __repr__(self) -> str:
        return f"<RemoteFetcher {self._binding} -> {self.target}>"


@register
class RemoteBindings(Extension):
    """Serves ``fastbind.remote(url)`` bindings: a RemoteFetcher in the Worker's env.

    ``key`` signs the hops its bindings make and checks those the Runtime's server
    receives: the key of ``FASTBIND_CLUSTER_SECRET`` (None when it is not set; a
    cluster sets its own).
    """

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime)
        self.key: HopKey | None = key_from_env()

    def binding(self, worker: str, name: str, declaration: object) -> object:
        if isinstance(declaration, RemoteBinding):
            return RemoteFetcher(self.runtime, name, declaration.url)
        return NotImplemented
