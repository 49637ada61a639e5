"""fastbind: many Workers in one process, calling each other through service bindings."""

from __future__ import annotations

from typing import TYPE_CHECKING

# The submodule fastbind.remote shares its name with the function remote(): it is
# loaded first, so that binding the function below wins and a later
# `import fastbind.remote` (Runtime does one for remote bindings) finds it loaded
# instead of rebinding fastbind.remote to the module.
from . import remote as _remote_module  # noqa: F401
from .bindings import remote, service
from .durable import DurableObject
from .embed import RawDispatcher
from .entrypoint import WorkerEntrypoint
from .env import Env
from .errors import (
    ConfigError,
    CpuLimitExceeded,
    FastbindError,
    FetchError,
    SubrequestDepthError,
    TooManySubrequestsError,
)
from .fetch import fetch
from .hangwatch import WorkerHangError
from .headers import Headers
from .limits import Limits
from .request import Request
from .response import Response
from .runtime import PipelineReport, Runtime

if TYPE_CHECKING:
    from ._core_py import InvocationContext

__version__ = "0.1.0"

__all__ = (
    "Runtime",
    "WorkerEntrypoint",
    "Request",
    "Response",
    "Headers",
    "Limits",
    "Env",
    "PipelineReport",
    "FastbindError",
    "SubrequestDepthError",
    "TooManySubrequestsError",
    "ConfigError",
    "CpuLimitExceeded",
    "WorkerHangError",
    "DurableObject",
    "service",
    "remote",
    "current_invocation",
    "fetch",
    "FetchError",
    "RawDispatcher",
)


def current_invocation() -> InvocationContext | None:
    """The InvocationContext whose code runs now (the ``ctx`` of that Worker), or None."""
    from . import _impl

    return _impl.core.current_invocation()
