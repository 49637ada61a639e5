"""Cloudflare Python Workers compatibility: ``from workers import ...`` code runs on fastbind.

A Python Worker written for Cloudflare imports its SDK as ``workers``::

    from workers import WorkerEntrypoint, Response, Request, fetch

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            data = await request.json()
            result = await self.env.USERS.get_user(data["id"])   # RPC over a binding
            return Response.json(result)

``fastbind.workers.install()`` registers this module under the name ``workers`` (one
line: ``sys.modules.setdefault("workers", fastbind.workers)``, refusing to shadow a
different ``workers`` module already imported), and ``fastbind.workers.load(path)``
imports a Worker's main module and picks its handler the way Cloudflare does:

1. ``load(..., entrypoint="Name")`` takes the class ``Name``, which must subclass
   ``WorkerEntrypoint`` (a named entrypoint).
2. Otherwise a class ``Default`` (a ``WorkerEntrypoint`` subclass) is the Worker.
3. Otherwise a module-level ``on_fetch(request[, env[, ctx]])`` function is, as in
   Python Workers before module-level handlers were retired (compatibility date
   2025-08-14); ``Default`` wins when a module defines both, as it does on Cloudflare
   today.

The module is found as Cloudflare finds ``main``: a module object is used as it is; a
path to a ``.py`` file is executed as the main module with its directory first on
``sys.path`` (so ``from hello import hello`` finds ``hello.py`` beside it); any other
string is a dotted module name for ``importlib.import_module``.

What runs unchanged: fetch handlers in both styles (``async`` or not), ``self.env`` and
``self.ctx`` (``ctx.waitUntil``, ``ctx.passThroughOnException``, ``ctx.props``), the
``Request``/``Response`` API including ``Response.json`` and ``await request.json()``,
``env.X.fetch(...)`` and RPC calls ``await env.X.method(...)`` on service bindings,
and the global ``fetch``, and Durable Objects (``from workers import DurableObject``)
with Cloudflare's names: ``env.NS.idFromName``/``getByName``/..., ``self.ctx.storage``
with ``get``/``put``/``delete``/``list``, ``sql.exec``, ``setAlarm``/``getAlarm``/
``deleteAlarm`` and the ``alarm()`` handler. What needs the Cloudflare runtime
(Workflows, FormData, Blob, the ``js`` module) is not provided, and asking for it names
the missing feature.

The values such a Worker sends over RPC (arguments, results) follow Python Workers'
rules, which refuse more than fastbind's own (tuples, bytearray, complex, instances of
the application's classes): ``core/python_workers_values.py`` has them, docs/rpc.md the
table of both.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from http import HTTPStatus
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .body import BodyInit, BodyMixin
from .durable import DurableObject as _BaseDurableObject
from .entrypoint import WorkerEntrypoint as _BaseEntrypoint
from .errors import ConfigError
from .headers import Headers, HeadersInit
from .outbound.fetch import fetch
from .request import Request
from .response import Response as _BaseResponse
from .response import _ClassOrInstance


__all__ = (
    "WorkerEntrypoint",
    "DurableObject",
    "Request",
    "Response",
    "Headers",
    "Context",
    "fetch",
    "handler",
    "install",
    "load",
    "WorkerHandler",
)

F = TypeVar("F", bound=Callable[..., Any])

#: What ``load`` returns and ``Runtime.add_worker`` takes: a WorkerEntrypoint class or
#: an ``async def (request, env, ctx)`` function.
WorkerHandler = type[_BaseEntrypoint] | Callable[[Request, Any, Any], Awaitable[_BaseResponse]]

# Names of the Python Workers SDK that need the Cloudflare runtime itself.
_NOT_PROVIDED = frozenset((
    "Blob", "BlobEnding", "BlobValue", "File", "FormData", "FormDataValue",
    "JSBody", "WorkflowEntrypoint", "env", "import_from_javascript", "patch_env",
    "python_from_rpc", "python_to_rpc", "waitUntil",
))


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class Context:
    """The ``ctx`` a Python Worker sees: its fastbind invocation, under Cloudflare's names.

    Python Workers call the JavaScript methods by their JavaScript names
    (``self.ctx.waitUntil(...)``); the Python spellings work too. Any other attribute
    (``depth``, ``worker``, ...) is read from the invocation itself.
    """

    __slots__ = ("_invocation",)

    def __init__(self, invocation: Any) -> None:
        self._invocation = invocation

    @property
    def invocation(self) -> Any:
        """The fastbind InvocationContext behind this ``ctx``."""
        return self._invocation

    @property
    def props(self) -> Any:
        """The ``props`` of the binding that called this Worker (empty at the top level)."""
        return self._invocation.props

    def waitUntil(self, awaitable: Awaitable[Any]) -> None:  # noqa: N802 - Cloudflare's name
        """Let ``awaitable`` run on after the response (``Limits.wait_until_s`` at most)."""
        self._invocation.wait_until(awaitable)

    def passThroughOnException(self) -> None:  # noqa: N802 - Cloudflare's name
        """On an uncaught exception, forward the request to the Runtime's origin."""
        self._invocation.pass_through_on_exception()

    wait_until = waitUntil
    pass_through_on_exception = passThroughOnException

    def __getattr__(self, name: str) -> Any:
        return getattr(self._invocation, name)

    def __repr__(self) -> str:
        return f"<workers.Context of {self._invocation!r}>"


def _as_context(ctx: Any) -> Context:
    return ctx if isinstance(ctx, Context) else Context(ctx)


def _awaiting(method: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    """``async`` wrapper of a synchronous fetch handler (Python Workers accept both)."""

    @functools.wraps(method)
    async def fetch(*args: Any, **kwargs: Any) -> Any:
        result = method(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    return fetch


class WorkerEntrypoint(_BaseEntrypoint):
    """Base class of a Python Worker: ``class Default(WorkerEntrypoint)``.

    A fastbind WorkerEntrypoint whose ``ctx`` is a :class:`Context` and whose ``fetch``
    may be a plain ``def``, as Python Workers allow. Public methods are callable over
    RPC through a service binding, synchronous or not.
    """

    ctx: Context
    # What the core reads to apply Python Workers' RPC rules (python_workers_values.py).
    __fastbind_rpc_rules__ = "python_workers"

    def __init__(self, ctx: Any, env: Any) -> None:
        self.ctx = _as_context(ctx)
        self.env = env

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Only ``fetch`` is wrapped: the core drives it as a coroutine, while RPC
        # methods may stay synchronous (the core takes their value as it is) and
        # the class's own calls to them keep returning plain values.
        fetch = cls.__dict__.get("fetch")
        if callable(fetch) and not inspect.iscoroutinefunction(fetch):
            setattr(cls, "fetch", _awaiting(fetch))


class DurableObject(_BaseDurableObject):
    """Base class of a Python Workers Durable Object: ``class Counter(DurableObject)``.

    ``Counter(ctx, env)`` keeps ``self.ctx`` (its state: ``self.ctx.storage``,
    ``self.ctx.blockConcurrencyWhile``, ...) and ``self.env``; public methods are
    callable over RPC through a stub, ``fetch`` serves ``stub.fetch(...)`` and
    ``alarm()`` runs at the time ``self.ctx.storage.setAlarm(...)`` set. A fastbind
    Durable Object underneath (``fastbind.durable``), with Python Workers' RPC rules.
    """

    __fastbind_rpc_rules__ = "python_workers"

    def __init__(self, ctx: Any, env: Any) -> None:
        super().__init__(ctx, env)


class Response(_BaseResponse):
    """A fastbind Response that also takes the Python Workers signature.

    ``Response(body=None, status=200, status_text="", headers=None)``: ``status`` may be
    given by position and as an ``http.HTTPStatus``; ``status_text`` is kept on the
    object (servers send the standard reason phrase). ``Response.json(data, status,
    status_text, headers)`` (alias ``from_json``) builds a JSON response, while
    ``await response.json()`` reads one, as in Python Workers.
    """

    __slots__ = ("status_text",)

    status_text: str

    def __init__(
        self,
        body: BodyInit = None,
        status: HTTPStatus | int | None = None,
        status_text: str = "",
        headers: HeadersInit = None,
    ) -> None:
        super().__init__(body, status=200 if status is None else int(status), headers=headers)
        self.status_text = status_text

    @classmethod
    def from_json(
        cls,
        data: Any,
        status: HTTPStatus | int = HTTPStatus.OK,
        status_text: str = "",
        headers: HeadersInit = None,
    ) -> Response:
        """A Response whose body is ``data`` as ``json.dumps`` writes it, as Python Workers
        do (``content-type: application/json``); the native ``Response.json`` keeps
        orjson's compact form."""
        resp = cls(json.dumps(data).encode(), status, status_text, headers)
        if not resp.headers.has("content-type"):
            resp.headers.append("content-type", "application/json")
        return resp

    # ``Response.json(data)`` builds a response, ``await resp.json()`` reads one.
    json: _ClassOrInstance[_JsonBuilder, Callable[[], Coroutine[Any, Any, Any]]] = _ClassOrInstance(
        from_json.__func__, BodyMixin.json  # type: ignore[attr-defined]
    )


class _JsonBuilder(Protocol):
    def __call__(
        self,
        data: Any,
        status: HTTPStatus | int = ...,
        status_text: str = ...,
        headers: HeadersInit = ...,
    ) -> Response: ...


def handler(func: F) -> F:
    """Python Workers' ``@handler``: converts JavaScript arguments, so here it is a no-op."""
    return func


def install() -> ModuleType:
    """Register this module as ``workers``, so ``from workers import Response`` works.

    Returns the module. Raises ImportError when a different module already holds the
    name (for example Cloudflare's ``workers-runtime-sdk``), rather than shadowing it.
    """
    this = sys.modules[__name__]
    current = sys.modules.setdefault("workers", this)
    if current is not this:
        raise ImportError(
            f'sys.modules["workers"] is already {current!r}; fastbind.workers.install() '
            "will not replace it. Import fastbind.workers directly, or remove that module "
            "from sys.modules first."
        )
    return this


def load(
    module_or_path: ModuleType | str | os.PathLike[str], *, entrypoint: str | None = None
) -> WorkerHandler:
    """Import a Python Worker's main module and return its handler for ``Runtime.add_worker``.

    The rule (the module docstring has the details): ``entrypoint`` if given, else the
    ``Default`` WorkerEntrypoint class, else the module-level ``on_fetch`` function.
    Raises ConfigError naming the module when none of them is there.
    """
    install()
    module = _import_main(module_or_path)
    where = f'Python Worker module "{module.__name__}"'
    if entrypoint is not None:
        return _entrypoint_class(module, entrypoint, where)
    if hasattr(module, "Default"):
        return _entrypoint_class(module, "Default", where)
    on_fetch = getattr(module, "on_fetch", None)
    if on_fetch is not None:
        if not callable(on_fetch):
            raise ConfigError(f"{where}: on_fetch must be a function, not {on_fetch!r}.")
        return _adapt_on_fetch(on_fetch)
    raise ConfigError(
        f'{where} defines neither a "Default" WorkerEntrypoint class nor an "on_fetch" '
        "function, so it has no fetch handler."
    )


def _entrypoint_class(module: ModuleType, name: str, where: str) -> type[_BaseEntrypoint]:
    cls = getattr(module, name, None)
    if cls is None:
        raise ConfigError(f'{where} has no entrypoint class "{name}".')
    if not (isinstance(cls, type) and issubclass(cls, _BaseEntrypoint)):
        raise ConfigError(f'{where}: "{name}" must be a WorkerEntrypoint subclass, not {cls!r}.')
    return cls


def _import_main(spec: ModuleType | str | os.PathLike[str]) -> ModuleType:
    if isinstance(spec, ModuleType):
        return spec
    text = os.fspath(spec)
    if text.endswith(".py") or os.sep in text or (os.altsep and os.altsep in text):
        return _import_file(Path(text))
    return importlib.import_module(text)


def _import_file(path: Path) -> ModuleType:
    path = path.resolve()
    if not path.is_file():
        raise ConfigError(f'Python Worker main module "{path}" does not exist.')
    # One process may hold many Workers whose main modules share a file name
    # (entry.py); a name derived from the full path keeps them apart, and loading
    # the same file twice gives the same module, as an import would.
    digest = hashlib.blake2s(str(path).encode(), digest_size=4).hexdigest()
    name = f"{path.stem}_{digest}"
    loaded = sys.modules.get(name)
    if loaded is not None:
        return loaded
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(0, directory)  # Cloudflare imports siblings of main as top-level modules
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f'Python Worker main module "{path}" cannot be imported.')
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # named entrypoints are found through sys.modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _adapt_on_fetch(on_fetch: Callable[..., Any]) -> Callable[[Request, Any, Any], Awaitable[_BaseResponse]]:
    """``on_fetch(request[, env[, ctx]])``, sync or async, as ``async def (request, env, ctx)``."""
    try:
        params = inspect.signature(on_fetch).parameters.values()
    except (TypeError, ValueError):
        arity = 3
    else:
        kinds = [p.kind for p in params]
        if inspect.Parameter.VAR_POSITIONAL in kinds:
            arity = 3
        else:
            arity = min(3, sum(1 for kind in kinds if kind in _POSITIONAL))

    @functools.wraps(on_fetch)
    async def fetch(request: Request, env: Any, ctx: Any) -> _BaseResponse:
        result = on_fetch(*(request, env, _as_context(ctx))[:arity])
        if inspect.isawaitable(result):
            result = await result
        return result  # type: ignore[no-any-return]

    fetch.__fastbind_rpc_rules__ = "python_workers"  # type: ignore[attr-defined]
    return fetch


def __getattr__(name: str) -> Any:
    if name in _NOT_PROVIDED:
        raise AttributeError(
            f'fastbind.workers does not provide "{name}": it needs the Cloudflare runtime. '
            "fastbind runs fetch handlers, Request, Response, fetch and service bindings "
            "(with RPC) of Python Workers."
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
