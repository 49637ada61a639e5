"""How Durable Objects, outbound fetch and remote bindings, and pass-through plug into a Runtime.

The Runtime imports none of them. Each defines an ``Extension`` subclass and registers
it here when its module is imported (``fastbind/__init__.py`` imports them all); every
Runtime then makes one instance of each registered class, in registration order, and
calls its hooks at the points below. ``runtime.extension(Kind)`` gives an extension's
own code its instance for a Runtime (where it keeps, say, an HTTP session).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from .bindings import WorkerSpec
    from .request import Request
    from .response import Response
    from .runtime import Runtime

__all__ = ("Extension", "FetchInterceptor", "Rescuer", "register", "registered")

# Serves the global fetch() of an invocation instead of the network: takes the Request
# the Worker's fetch() built, returns the Response that fetch() gives it.
FetchInterceptor = Callable[["Request"], Awaitable["Response"]]

E = TypeVar("E", bound="Extension")


class Rescuer(Protocol):
    """Serves a top-level request whose Worker failed (``ctx.pass_through_on_exception()``)."""

    def snapshot(self, request: Request) -> Any:
        """What to keep of each top-level request before its Worker sees it."""

    async def rescue(self, snapshot: Any, error: Exception) -> Response:
        """The answer to give instead of a 500, from what ``snapshot`` kept."""


class Extension:
    """One plug-in's part of one Runtime; every hook does nothing unless overridden.

    Made when the Runtime is: check the Runtime's options (``runtime.options``) in
    ``__init__`` and raise TypeError or ValueError naming the wrong one.
    """

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def worker_added(self, spec: WorkerSpec) -> None:
        """Check what ``add_worker`` gave this extension (in ``spec.options``).

        Raise ConfigError when it is wrong, or when a name it will put in the Worker's
        env is a binding or a var of that Worker already.
        """

    def binding(self, worker: str, name: str, declaration: object) -> object:
        """The env value of a service binding declaration of a kind this extension
        serves (``fastbind.remote(...)``, say), or NotImplemented."""
        return NotImplemented

    def env_values(self, spec: WorkerSpec, handle: Any) -> Mapping[str, object]:
        """Values to add to the env of Worker ``spec`` (whose core handle is ``handle``)
        when the Runtime resolves its bindings."""
        return {}

    def validate(self) -> None:
        """Check this extension's configuration against the Runtime's Workers."""

    def rescuer(self) -> Rescuer | None:
        """What serves failed requests that pass through (at most one extension has one)."""
        return None

    def fetch_interceptor(self, invocation: Any) -> FetchInterceptor | None:
        """What serves the global ``fetch()`` of ``invocation`` (the running one) instead
        of the network, or None. Asked at each fetch(), so it must be cheap."""
        return None

    def find_namespace(self, name: str) -> object | None:
        """The namespace named ``name`` this extension serves (``runtime.namespace(name)``), or None."""
        return None

    async def aclose(self) -> None:
        """Release what this extension holds for its Runtime."""


_registered: list[type[Extension]] = []


def register(kind: type[E]) -> type[E]:
    """Make every Runtime created from now on have an instance of ``kind`` (a decorator)."""
    if not (isinstance(kind, type) and issubclass(kind, Extension)):
        raise TypeError(f"register() takes an Extension subclass, not {kind!r}")
    if kind not in _registered:
        _registered.append(kind)
    return kind


def registered() -> tuple[type[Extension], ...]:
    return tuple(_registered)
