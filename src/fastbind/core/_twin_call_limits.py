"""Pure twin: per-call limits, the same rules as ``_call_limits.pxi``.

A Fetcher made with CallLimits opens a *scope* for each call: a CPU and a subrequest
budget shared by the callee's invocation and everything under it. The metering and
the watchdog's part that use it are in ``_twin_metering``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ..errors import TooManySubrequestsError

__all__ = ("CallLimits", "LimitScope", "check_call_limits")

EXCEEDED_CPU = "exceeded_cpu"


def check_call_limits(cpu_ms: Any, subrequests: Any) -> None:
    if cpu_ms is not None and (
        type(cpu_ms) is bool or not isinstance(cpu_ms, (int, float)) or not 0 < cpu_ms < math.inf
    ):
        raise ValueError(f"cpu_ms must be a number > 0 (finite) or None, not {cpu_ms!r}")
    if subrequests is not None and (type(subrequests) is not int or subrequests < 0):
        raise ValueError(f"subrequests must be an int >= 0 or None, not {subrequests!r}")


class CallLimits:
    """The limits of each call made through one binding: ``cpu_ms`` and ``subrequests``
    (None: none), for the callee and everything it calls.

    ``watch`` and ``unwatch`` are called when a call with a CPU limit starts and ends
    (the Runtime gives the CPU watchdog's, so that a busy loop is interrupted).
    """

    __slots__ = ("_cpu_ms", "_subrequests", "cpu_limit_ns", "max_subrequests", "_watch", "_unwatch")

    def __init__(
        self,
        cpu_ms: float | None = None,
        subrequests: int | None = None,
        watch: Callable[[], Any] | None = None,
        unwatch: Callable[[], Any] | None = None,
    ) -> None:
        check_call_limits(cpu_ms, subrequests)
        self._cpu_ms = cpu_ms
        self._subrequests = subrequests
        self.cpu_limit_ns = -1 if cpu_ms is None else int(min(cpu_ms * 1e6, 9.2e18))
        self.max_subrequests = -1 if subrequests is None else subrequests
        self._watch = watch
        self._unwatch = unwatch

    @property
    def cpu_ms(self) -> float | None:
        return self._cpu_ms

    @property
    def subrequests(self) -> int | None:
        return self._subrequests

    def __repr__(self) -> str:
        return f"<CallLimits cpu_ms={self._cpu_ms!r} subrequests={self._subrequests!r}>"


class LimitScope:
    """The budget of one call made with CallLimits (made by the core only)."""

    __slots__ = ("parent", "cpu_limit_ns", "cpu_ns", "max_subrequests", "subrequests",
                 "cpu_exceeded", "unwatch")

    def __init__(self, parent: LimitScope | None, limits: CallLimits) -> None:
        self.parent = parent
        self.cpu_limit_ns = limits.cpu_limit_ns
        self.cpu_ns = 0
        self.max_subrequests = limits.max_subrequests
        self.subrequests = 0
        self.cpu_exceeded = False
        self.unwatch: Callable[[], Any] | None = None

    def __del__(self) -> None:
        close_scope(self)  # a call never awaited still lets the watchdog go


def charge_scope(scope: LimitScope) -> None:
    """One more subrequest in ``scope`` (and the scopes around it), or TooManySubrequestsError."""
    s: LimitScope | None = scope
    while s is not None:
        if s.max_subrequests >= 0 and s.subrequests >= s.max_subrequests:
            raise TooManySubrequestsError()
        s = s.parent
    s = scope
    while s is not None:
        s.subrequests += 1
        s = s.parent


def scope_cpu(s: LimitScope | None, ns: int) -> None:
    while s is not None:
        s.cpu_ns += ns
        if s.cpu_limit_ns >= 0 and s.cpu_ns > s.cpu_limit_ns:
            s.cpu_exceeded = True
        s = s.parent


def scope_exceeded(s: LimitScope | None) -> bool:
    """Whether ``s`` or a scope around it is past its CPU budget."""
    while s is not None:
        if s.cpu_exceeded:
            return True
        s = s.parent
    return False


def scope_past(s: LimitScope | None, running_ns: int) -> LimitScope | None:
    """The first of ``s`` and the scopes around it past its budget once ``running_ns``
    more is counted, or None."""
    while s is not None:
        if s.cpu_limit_ns >= 0 and s.cpu_ns + running_ns > s.cpu_limit_ns:
            return s
        s = s.parent
    return None


def close_scope(scope: LimitScope) -> None:
    """The call that opened ``scope`` has ended: the watchdog need not watch for it."""
    unwatch = scope.unwatch
    if unwatch is not None:
        scope.unwatch = None
        try:
            unwatch()
        except BaseException:
            pass
