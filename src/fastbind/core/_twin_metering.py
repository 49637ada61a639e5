"""Pure twin: CPU metering of a pipeline's steps, and what the watchdog thread looks at,
by the same rules as ``_metering.pxi`` (whose task factory is in ``_twin_bindings``).

One difference: the compiled core meters a CPU-limited pipeline from the moment its
watchdog, looking without the GIL, finds it running. Pure Python cannot look without
the GIL (it would only ever look between steps), so the twin meters every step of a
CPU-limited pipeline from its start; the limit is enforced the same way.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from ..errors import CpuLimitExceeded
from ._twin_call_limits import LimitScope, scope_cpu, scope_past
from ._twin_contexts import (
    ExecutionSlot,
    invocation_state,
    now_ns,
    pipeline_state,
    set_slot_segment_start,
    slot_segment_start,
)

__all__ = (
    "slice_open",
    "slice_close",
    "meter_enter",
    "meter_exit",
    "charge_cpu",
    "enter_scope",
    "leave_scope",
    "watchdog_configure",
    "watchdog_poke",
    "watchdog_wait",
    "watchdog_tick",
    "interrupt_slice",
)


class _SliceState:
    pipeline: Any = None
    cpu_start = 0
    watch_start = 0
    slice_id = 0
    interrupted = 0
    thread = 0
    clock = time.CLOCK_THREAD_CPUTIME_ID
    # Per-call limits (_twin_call_limits): the scope of the code running in the open
    # slice, since when, and whether the watchdog's exception for it is pending.
    running_scope: LimitScope | None = None
    segment_start = 0
    scope_interrupted = False


_slice = _SliceState()
# The watchdog reads the loop thread's CPU clock where the platform names it; elsewhere
# (macOS) the process's, as the compiled core does.
_thread_clock = getattr(time, "pthread_getcpuclockid", None)


def _async_exc(thread: int, exc: Any) -> None:
    """PyThreadState_SetAsyncExc through ctypes: what only the watchdog needs.

    Where ctypes cannot reach the C API (interpreters other than CPython), a pipeline
    past its CPU budget is stopped at its next step rather than interrupted.
    """
    try:
        import ctypes

        set_async = ctypes.pythonapi.PyThreadState_SetAsyncExc
    except (ImportError, AttributeError):
        return
    set_async.argtypes = (ctypes.c_ulong, ctypes.py_object if exc is not None else ctypes.c_void_p)
    set_async(thread, exc)


def slice_open(pipeline: Any) -> bool:
    """Start metering a slice of ``pipeline``; True if this step opened it."""
    if _slice.pipeline is not None:
        return False
    _slice.pipeline = pipeline
    _slice.slice_id += 1
    _slice.thread = threading.get_ident()
    _slice.cpu_start = time.thread_time_ns()
    if _thread_clock is not None:
        _slice.clock = _thread_clock(_slice.thread)
        _slice.watch_start = _slice.cpu_start
    else:
        _slice.clock = time.CLOCK_PROCESS_CPUTIME_ID
        _slice.watch_start = time.clock_gettime_ns(_slice.clock)
    return True


def slice_close(pipeline: Any) -> None:
    state = pipeline_state(pipeline)
    state.cpu_ns += time.thread_time_ns() - _slice.cpu_start
    if state.cpu_limit_ns >= 0 and state.cpu_ns > state.cpu_limit_ns:
        state.cpu_exceeded = True
    if _slice.interrupted == _slice.slice_id or _slice.scope_interrupted:
        # The slice ended before the watchdog's exception was raised: withdraw it.
        _async_exc(_slice.thread, None)
        _slice.interrupted = 0
        _slice.scope_interrupted = False
    _slice.pipeline = None
    _slice.running_scope = None


def meter_enter(slot: ExecutionSlot, leaving: Any, pipeline: Any) -> bool:
    opened = slice_open(pipeline)
    now = now_ns()
    if leaving is not None and not opened:
        charge_cpu(invocation_state(leaving), now - slot_segment_start(slot))
    set_slot_segment_start(slot, now)
    _slice.segment_start = now
    return opened


def meter_exit(slot: ExecutionSlot, leaving: Any, pipeline: Any, opened: bool) -> None:
    now = now_ns()
    if leaving is not None:
        charge_cpu(invocation_state(leaving), now - slot_segment_start(slot))
    set_slot_segment_start(slot, now)
    _slice.segment_start = now
    if opened:
        slice_close(pipeline)


def charge_cpu(state: Any, ns: int) -> None:
    state.cpu_ns += ns
    if state.scope is not None:
        scope_cpu(state.scope, ns)


def enter_scope(scope: LimitScope | None) -> None:
    """A metered step runs code of ``scope`` (None: outside any) from now on."""
    _slice.running_scope = scope


def leave_scope(now_running: Any) -> None:
    """A metered step hands the thread back to ``now_running``'s code: if the watchdog's
    exception for the scope left has not been raised yet, withdraw it (the scope is
    marked exceeded: its code is stopped at its next step)."""
    _slice.running_scope = None if now_running is None else invocation_state(now_running).scope
    if _slice.scope_interrupted:
        _async_exc(_slice.thread, None)
        _slice.scope_interrupted = False


_wait_interval = 0.1
_wait_random = random.Random()


def watchdog_configure(interval: float) -> None:
    """Set the seconds between ``watchdog_wait``'s ticks (see _metering.pxi)."""
    global _wait_interval
    _wait_interval = interval


def watchdog_poke() -> None:
    """The compiled core's wait comes back when poked; the twin's after each tick."""


def watchdog_wait(every_look: bool) -> bool:
    """Sleep an interval (jittered); the twin looks in ``watchdog_tick``, with the GIL."""
    time.sleep(_wait_interval * (0.5 + _wait_random.random()))
    return False


def watchdog_tick() -> bool:
    """Interrupt the running slice if its pipeline is past ``cpu_ms`` (see _metering.pxi)."""
    pipeline = _slice.pipeline
    if pipeline is None or _slice.interrupted == _slice.slice_id:
        return False
    state = pipeline_state(pipeline)
    if state.cpu_limit_ns >= 0:
        used = state.cpu_ns + time.clock_gettime_ns(_slice.clock) - _slice.watch_start
        if used > state.cpu_limit_ns:
            state.cpu_exceeded = True
            _slice.interrupted = _slice.slice_id
            _slice.scope_interrupted = False  # the pipeline's exception stops the scope's code too
            _async_exc(_slice.thread, CpuLimitExceeded)
            return True
    # The scope whose code runs now (per-call limits).
    if _slice.running_scope is None or _slice.scope_interrupted:
        return False
    past = scope_past(_slice.running_scope, now_ns() - _slice.segment_start)
    if past is None:
        return False
    past.cpu_exceeded = True
    _slice.scope_interrupted = True
    _async_exc(_slice.thread, CpuLimitExceeded)
    return True


def interrupt_slice(exc: Any) -> bool:
    """Raise ``exc`` into the slice running now, whatever its budget (see _metering.pxi)."""
    if _slice.pipeline is None or _slice.interrupted == _slice.slice_id:
        return False
    _slice.interrupted = _slice.slice_id
    _async_exc(_slice.thread, exc)
    return True
