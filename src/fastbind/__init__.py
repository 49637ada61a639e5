"""fastbind: many Workers in one process, calling each other through service bindings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any as _Any

from . import config as _config  # noqa: F401 - registers Runtime.from_config's file loader
from . import core as _cores
from . import durable as _durable  # noqa: F401 - registers the Durable Objects extension
from . import namespaces as _namespaces  # noqa: F401 - registers dispatch namespaces
from . import outbound as _outbound  # noqa: F401 - registers fetch, remote bindings, pass-through
from .bindings import remote, service
from .durable import DurableObject
from .embed import RawDispatcher
from .entrypoint import WorkerEntrypoint
from .errors import (
    ConfigError,
    CpuLimitExceeded,
    DurableObjectUnavailableError,
    FastbindError,
    FetchError,
    SubrequestDepthError,
    TooManySubrequestsError,
    WorkerCpuLimitError,
    WorkerMemoryLimitError,
    WorkerNotFoundError,
)
from .hangwatch import WorkerHangError
from .headers import Headers
from .limits import Limits
from .outbound.fetch import fetch
from .request import Request
from .response import Response
from .runtime import PipelineObserver, PipelineReport, Runtime
from .websocket import WebSocket, WebSocketPair

if TYPE_CHECKING:
    from .core._twin import InvocationContext

__version__ = "0.1.0"

__all__ = (
    "Runtime",
    "WorkerEntrypoint",
    "Request",
    "Response",
    "Headers",
    "Limits",
    "PipelineReport",
    "PipelineObserver",
    "FastbindError",
    "SubrequestDepthError",
    "TooManySubrequestsError",
    "ConfigError",
    "CpuLimitExceeded",
    "WorkerCpuLimitError",
    "WorkerMemoryLimitError",
    "WorkerNotFoundError",
    "DurableObjectUnavailableError",
    "WorkerHangError",
    "DurableObject",
    "service",
    "remote",
    "current_invocation",
    "core_info",
    "fetch",
    "FetchError",
    "RawDispatcher",
    "WebSocket",
    "WebSocketPair",
)


def current_invocation() -> InvocationContext | None:
    """The InvocationContext whose code runs now (the ``ctx`` of that Worker), or None."""
    return _cores.current_invocation()  # type: ignore[no-any-return]


def core_info() -> dict[str, _Any]:
    """Which core runs new Runtimes, on which interpreter, and whether its fast paths are on.

    ``core`` is "compiled" or "pure"; ``fast_paths`` says whether the compiled core's
    techniques that rely on CPython internals are on (FASTBIND_FAST_PATHS); ``clock``
    is the ledger's clock ("tsc" or "monotonic").
    """
    return {"version": __version__, **_cores.info()}
