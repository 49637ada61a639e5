"""The exceptions fastbind raises; the messages copied from Cloudflare are kept exact."""

from __future__ import annotations

__all__ = (
    "FastbindError",
    "SubrequestDepthError",
    "TooManySubrequestsError",
    "ConfigError",
    "FetchError",
    "RedirectError",
    "CpuLimitExceeded",
    "MissingBindingError",
    "BodyReadError",
    "BODY_USED_MESSAGE",
    "CPU_LIMIT_MESSAGE",
)

# The exact wording Cloudflare Workers uses; users grep their logs for it.
BODY_USED_MESSAGE = (
    "Body has already been used. It can only be used once. "
    "Use tee() first if you need to read it twice."
)
DEPTH_MESSAGE = (
    "Subrequest depth limit exceeded. This request recursed through Workers too many "
    "times. This can happen e.g. if you have a Worker or Durable Object that calls other "
    "Workers or objects recursively."
)
TOO_MANY_SUBREQUESTS_MESSAGE = "Too many subrequests."
CPU_LIMIT_MESSAGE = "Worker exceeded CPU time limit."


class FastbindError(Exception):
    """Base class of every error fastbind raises on its own account."""


class SubrequestDepthError(FastbindError):
    """A binding call would run a Worker deeper than ``Limits.depth``."""

    def __init__(self, message: str = DEPTH_MESSAGE) -> None:
        super().__init__(message)


class TooManySubrequestsError(FastbindError):
    """An invocation tried to make more than ``Limits.subrequests`` subrequests."""

    def __init__(self, message: str = TOO_MANY_SUBREQUESTS_MESSAGE) -> None:
        super().__init__(message)


class ConfigError(FastbindError):
    """The set of Workers, their bindings or the config file is wrong."""


class CpuLimitExceeded(BaseException):
    """A pipeline used more CPU than ``Limits.cpu_ms``; it is being stopped.

    A BaseException, like CancelledError: ``except Exception`` in a Worker must not
    swallow it, or a busy loop could outlive its budget. It is raised into the
    pipeline's code, by a watchdog thread when that code does not yield.
    """

    def __init__(self, message: str = CPU_LIMIT_MESSAGE) -> None:
        super().__init__(message)


class MissingBindingError(AttributeError, KeyError):
    """``env.NAME`` or ``env["NAME"]`` for a name the Worker has not bound."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class BodyReadError(FastbindError):
    """A request body could not be read to its end (the client went away, a limit)."""


class FetchError(FastbindError):
    """An outbound fetch failed on the network: refused, unresolvable, timed out, cut short."""


class RedirectError(FetchError, TypeError):
    """A redirect fetch() would not follow: redirect="error", a Location that is no
    http(s) URL, or a streamed body that cannot be sent again. A TypeError, as the
    Fetch API's network errors are."""
