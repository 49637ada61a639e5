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
    "ResourceLimitError",
    "WorkerCpuLimitError",
    "WorkerMemoryLimitError",
    "WorkerNotFoundError",
    "DurableObjectUnavailableError",
    "BODY_USED_MESSAGE",
    "body_used_error",
    "CPU_LIMIT_MESSAGE",
    "MEMORY_LIMIT_MESSAGE",
    "WORKER_NOT_FOUND_MESSAGE",
)

# The exact wording Cloudflare Workers uses; users grep their logs for it.
BODY_USED_MESSAGE = (
    "Body has already been used. It can only be used once. "
    "Use tee() first if you need to read it twice."
)
# fastbind's own hint, a note below that message: the message names tee(), which
# Cloudflare's streams have and fastbind's Request and Response do not.
_BODY_USED_HINTS = {
    "Request": (
        "fastbind: a Request has no tee(). Its body is read once, and passing the Request "
        "to env.X.fetch() or fetch() hands its body on: to read it as well, pass "
        "request.clone() and keep the original (or read the clone)."
    ),
    "Response": (
        "fastbind: a Response has no tee(). Its body is read once: to read it twice, "
        "call response.clone() first and read the clone."
    ),
}
DEPTH_MESSAGE = (
    "Subrequest depth limit exceeded. This request recursed through Workers too many "
    "times. This can happen e.g. if you have a Worker or Durable Object that calls other "
    "Workers or objects recursively."
)
TOO_MANY_SUBREQUESTS_MESSAGE = "Too many subrequests."
CPU_LIMIT_MESSAGE = "Worker exceeded CPU time limit."
MEMORY_LIMIT_MESSAGE = "Worker exceeded memory limit."
WORKER_NOT_FOUND_MESSAGE = "Worker not found."


def body_used_error(owner: object) -> TypeError:
    """The TypeError of a body read twice: Cloudflare's exact message, and a note that
    names ``clone()`` for ``owner`` (a Request or Response, or its class name)."""
    error = TypeError(BODY_USED_MESSAGE)
    name = owner if isinstance(owner, str) else type(owner).__name__
    hint = _BODY_USED_HINTS.get(name)
    if hint is None:
        hint = _BODY_USED_HINTS["Response" if "Response" in name else "Request"]
    error.add_note(hint)
    return error


class FastbindError(Exception):
    """Base class of every error fastbind raises on its own account."""


class SubrequestDepthError(FastbindError):
    """A binding call would run a Worker deeper than ``Limits.depth``.

    ``chain`` names the Workers of the calls that led there, the top-level one first,
    ``target`` the Worker the refused call was to, ``limit`` the depth limit (the core
    fills them in; the message stays Cloudflare's).
    """

    def __init__(
        self, message: str = DEPTH_MESSAGE, *, chain: tuple[str, ...] = (), target: str | None = None,
        limit: int | None = None,
    ) -> None:
        super().__init__(message)
        self.chain = chain
        self.target = target
        self.limit = limit

    def describe(self) -> str:
        """One line for a log: the limit and the chain, repeats collapsed."""
        if not self.chain:
            return str(self)
        refused = f'; its call to "{self.target}" was refused' if self.target else ""
        return (
            f"Subrequest depth limit exceeded (Limits.depth = {self.limit}): "
            f"{collapse_chain(self.chain)}{refused}."
        )


def collapse_chain(chain: tuple[str, ...], keep: int = 2) -> str:
    """``a -> b -> ... -> z (32)``: the first and last ``keep`` names of a long chain."""
    if len(chain) <= 2 * keep + 1:
        return " -> ".join(chain)
    return " -> ".join((*chain[:keep], "...", *chain[-keep:])) + f" ({len(chain)})"


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


class ResourceLimitError(FastbindError):
    """A Worker called with limits of its own (a dispatch namespace's Worker) went past one.

    Raised in its caller, which may answer for it; uncaught, the top-level request is
    answered with 503, as for a pipeline past ``Limits.cpu_ms``.
    """


class WorkerCpuLimitError(ResourceLimitError):
    """The called Worker and what it called used more CPU than the call's ``cpu_ms``."""

    def __init__(self, message: str = CPU_LIMIT_MESSAGE) -> None:
        super().__init__(message)


class WorkerMemoryLimitError(ResourceLimitError):
    """A Worker running in a process of its own went past its memory cap; it was stopped."""

    def __init__(self, message: str = MEMORY_LIMIT_MESSAGE) -> None:
        super().__init__(message)


class WorkerNotFoundError(FastbindError):
    """A dispatch namespace has no Worker of the name asked for."""

    def __init__(self, message: str = WORKER_NOT_FOUND_MESSAGE) -> None:
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


class DurableObjectUnavailableError(FastbindError):
    """A call could not reach the process or node that owns its Durable Object.

    The object is never started anywhere else instead (that would make a second copy),
    so its calls fail with this error until its owner is back. ``retryable`` is True,
    as on Cloudflare's errors of the kind: the same call may succeed later.
    """

    retryable = True
