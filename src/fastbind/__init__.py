"""fastbind: many Workers in one process, calling each other through service bindings."""

from __future__ import annotations

from .bindings import remote, service
from .entrypoint import WorkerEntrypoint
from .env import Env
from .errors import (
    ConfigError,
    CpuLimitExceeded,
    FastbindError,
    SubrequestDepthError,
    TooManySubrequestsError,
)
from .headers import Headers
from .limits import Limits
from .request import Request
from .response import Response
from .runtime import PipelineReport, Runtime
from .errors import FetchError
from .fetch import fetch

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
    "service",
    "remote",
    "current_invocation",
    "fetch",
    "FetchError",
)


def current_invocation() -> object | None:
    """The InvocationContext whose code runs now (the ``ctx`` of that Worker), or None."""
    from . import _impl

    return _impl.core.current_invocation()
