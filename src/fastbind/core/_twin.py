"""Pure-Python twin of the compiled core (``fastbind.core._core``): the same names and
the same behaviour, in parts that mirror the compiled core's (``_twin_contexts``,
``_twin_metering``, ``_twin_call_limits``, ``_twin_binding_call`` with ``_twin_bindings``,
``_twin_dispatch``). Runs on any Python 3.11+."""

from __future__ import annotations

import time
from typing import Any

from ._twin_bindings import (
    IMPLEMENTATION,
    Fetcher,
    RpcMethod,
    SliceMeter,
    TaskFactory,
    WorkerHandle,
    call_child,
    make_task_factory,
    start_binding_call,
)
from ._twin_binding_call import BindingCall
from ._twin_call_limits import CallLimits, LimitScope
from ._twin_coarse_clock import CoarseClock
from ._twin_contexts import (
    ExecutionSlot,
    InvocationContext,
    OpenSubrequest,
    PipelineContext,
    SubrequestRecord,
    current_invocation,
    live_counts,
)
from ._twin_dispatch import DispatchPlan, Entry
from ._twin_metering import (
    interrupt_slice,
    watchdog_configure,
    watchdog_poke,
    watchdog_tick,
    watchdog_wait,
)
from .env import Env

__all__ = (
    "IMPLEMENTATION",
    "Env",
    "CallLimits",
    "LimitScope",
    "ExecutionSlot",
    "WorkerHandle",
    "PipelineContext",
    "SubrequestRecord",
    "OpenSubrequest",
    "InvocationContext",
    "Fetcher",
    "RpcMethod",
    "BindingCall",
    "TaskFactory",
    "SliceMeter",
    "DispatchPlan",
    "Entry",
    "call_child",
    "start_binding_call",
    "current_invocation",
    "fast_paths",
    "live_counts",
    "make_task_factory",
    "watchdog_configure",
    "watchdog_poke",
    "watchdog_wait",
    "watchdog_tick",
    "interrupt_slice",
    "CoarseClock",
)


def fast_paths() -> dict[str, Any]:
    """What this core does: the twin has no fast paths and stamps with the monotonic clock."""
    return {
        "built": False,
        "on": False,
        "clock": "monotonic",
        "thread_cpu_clock": hasattr(time, "pthread_getcpuclockid"),
    }
