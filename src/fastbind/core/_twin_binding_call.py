"""Pure twin: the awaitable that runs an invocation in its caller's task, step by step,
as the BindingCall of ``_binding.pxi`` does (the bindings that make it: ``_twin_bindings``).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from ..errors import CpuLimitExceeded, FastbindError, WorkerCpuLimitError
from ..redirects import REDIRECT_STATUSES
from ..response import Response
from ._twin_call_limits import EXCEEDED_CPU, scope_exceeded
from ._twin_contexts import (
    LIVE,
    SLOT,
    InvocationContext,
    finish_invocation,
    invocation_state,
    new_slot,
    pipeline_state,
    register_borrowed_call,
    set_slot_current,
    slot_current,
)
from ._twin_metering import enter_scope, leave_scope, meter_enter, meter_exit, slice_close, slice_open
from .binding_fetch import redirect_follower
from .python_workers_values import check_python_workers_value
from .rpc_values import hand_over_response, isolate

__all__ = ("BindingCall", "borrowed_call")


class BindingCall:
    """The awaitable a binding returns: runs the child in the caller's task."""

    __slots__ = (
        "_inv", "_request", "_http", "_started", "_driver", "_method", "_args", "_kwargs",
        "_immediate", "_custom", "_borrowed", "_redirect",
    )

    def __init__(
        self,
        inv: InvocationContext,
        request: Any,
        http: bool,
        method: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self._inv = inv
        self._request = request
        self._http = http
        self._started = False
        self._driver: Any = None
        self._method = method
        self._args = args
        self._kwargs = kwargs
        self._immediate: Any = None
        self._custom: Any = None
        self._borrowed = False
        # (fetcher, origin, mode, start_call) of a binding's fetch that handles redirects (binding_fetch.py)
        self._redirect: Any = None

    @property
    def invocation(self) -> InvocationContext:
        return self._inv

    # send/throw/close make it a Coroutine (collections.abc), so create_task() takes it.
    def send(self, value: Any) -> Any:
        if self._driver is None:
            self._driver = self.__await__()
        return self._driver.send(value)

    def throw(self, *exc: Any) -> Any:
        if self._driver is None:
            self._driver = self.__await__()
        return self._driver.throw(*exc)

    def close(self) -> None:
        if self._driver is not None:
            self._driver.close()
        elif not self._started:
            self._started = True
            self._request = None
            if not self._borrowed:
                finish_invocation(self._inv, "canceled")

    def __await__(self) -> Any:
        return self._run()

    def _run(self) -> Any:
        inv = self._inv
        if self._started:
            raise RuntimeError("A binding call can be awaited only once")
        self._started = True
        slot = SLOT.get()
        slot_token = None
        if slot is None:
            if not self._borrowed:
                finish_invocation(inv, "error")
                raise FastbindError("A binding call was awaited outside a fastbind invocation")
            # run() from a task that never dispatched (e.g. a server's body writer).
            slot = new_slot()
            slot_token = SLOT.set(slot)
        request, self._request = self._request, None
        state = invocation_state(inv)
        pipeline = state.pipeline
        pstate = pipeline_state(pipeline)
        pstate.running += 1
        LIVE["invocations"] += 1
        outcome = "error"
        status = None
        try:
            previous = slot_current(slot)
            set_slot_current(slot, inv)
            try:
                if self._borrowed:
                    coro = request if inspect.iscoroutine(request) else request.__await__()
                elif self._method is None:
                    coro = state.handle.invoke(request, inv)
                else:
                    coro = self._call_method(inv, state.handle)
            finally:
                set_slot_current(slot, previous)
            del request
            if coro is None:  # a synchronous RPC method: its value is already there
                result = self._immediate
                self._immediate = None
                coro = _DONE
            # Drive the child step by step so the slot names it while it runs. A
            # measured pipeline's steps are metered and split between invocations; a
            # CPU-limited one's are metered at the root (see _twin_metering).
            send, throw = coro.send, coro.throw
            value: Any = None
            error: BaseException | None = None
            split = False
            guarded_root = state.parent is None
            while coro is not _DONE:
                previous = slot_current(slot)
                # Read at each step: a call with a CPU limit turns splitting on (open_scope).
                split = pstate.cpu_measured
                opened = False
                if split:
                    opened = meter_enter(slot, previous, pipeline)
                    if error is None and state.scope is not None and scope_exceeded(state.scope):
                        error = CpuLimitExceeded()  # stop the scope at its next step
                    enter_scope(state.scope)
                elif guarded_root and pstate.cpu_enabled:
                    opened = slice_open(pipeline)
                if opened and pstate.cpu_exceeded and error is None:
                    error = CpuLimitExceeded()  # stop the pipeline at its next step
                set_slot_current(slot, inv)
                try:
                    future = send(value) if error is None else throw(error)
                except StopIteration as stop:
                    result = stop.value
                    break
                except BaseException as exc:
                    if split and self._over_budget(state, exc):
                        outcome = EXCEEDED_CPU
                        raise WorkerCpuLimitError() from None
                    raise
                finally:
                    if split:
                        meter_exit(slot, inv, pipeline, opened)
                        leave_scope(previous)
                    elif opened:
                        slice_close(pipeline)
                    set_slot_current(slot, previous)
                try:
                    value, error = (yield future), None
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:  # thrown in by the task: pass it down
                    value, error = None, exc
            if split and self._over_budget(state, None):
                outcome = EXCEEDED_CPU
                raise WorkerCpuLimitError()
            if self._borrowed:
                pass
            elif self._http:
                if not isinstance(result, Response):
                    raise TypeError(
                        f'Worker "{state.handle.name}" fetch handler returned '
                        f"{type(result).__name__}, expected a Response"
                    )
                status = _status_of(result)  # the ledger keeps its status
                if state.parent is not None:
                    # A child's Response: the caller gets its own (see the compiled core).
                    result = hand_over_response(result)
            else:
                if state.handle.python_workers:
                    check_python_workers_value(result)
                result = isolate(result)
            outcome = "ok"
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "canceled"
            raise
        finally:
            pstate.running -= 1
            LIVE["invocations"] -= 1
            if not self._borrowed:
                finish_invocation(inv, outcome, status)
            elif slot_token is not None:
                try:
                    SLOT.reset(slot_token)
                except ValueError:  # finished from another context (e.g. closed by the GC)
                    pass
        if self._redirect is not None and status in REDIRECT_STATUSES:
            # A redirect from a binding's fetch: followed as the caller, a new call per hop.
            fetcher, origin, mode, start_call = self._redirect
            self._redirect = None
            follower = redirect_follower(fetcher, origin, mode, result, start_call)
            if follower is not None:
                return (yield from follower.__await__())
        return result

    @staticmethod
    def _over_budget(state: Any, error: BaseException | None) -> bool:
        """Whether the child opened a scope that went past its ``cpu_ms``: whatever it
        answered or raised (a cancellation aside), its caller gets WorkerCpuLimitError."""
        return bool(
            state.owns_scope and state.scope.cpu_exceeded
            and not isinstance(error, asyncio.CancelledError)
        )

    def _call_method(self, inv: InvocationContext, handle: Any) -> Any:
        """Run RPC method ``_method`` on a new instance; its awaitable, or None if sync."""
        args, self._args = self._args, ()
        kwargs, self._kwargs = self._kwargs, None
        if self._custom is not None:
            method = self._custom
            args = (inv, *args)
        else:
            instance = handle.instantiate(inv)
            method = handle.rpc_function(self._method)
            if method is not None:  # a plain function: called unbound, no bound method
                args = (instance, *args)
            else:  # staticmethod, classmethod, callable object: ask the instance
                method = getattr(instance, self._method)  # type: ignore[arg-type]
        result = method(*args, **kwargs) if kwargs else method(*args)
        if inspect.iscoroutine(result):
            return result
        if inspect.isawaitable(result):
            return result.__await__()
        self._immediate = result
        return None


def _status_of(response: Any) -> int | None:
    """A Response's status as the ledger keeps it (as the compiled core's fastbind_status_of)."""
    status = getattr(response, "status", None)
    return status if type(status) is int and 100 <= status <= 999 else None


class _Done:
    """Stands for a child that finished before its first step (a sync RPC method)."""

    def send(self, value: Any) -> Any:
        raise StopIteration

    throw = send

    def close(self) -> None:
        pass


_DONE = _Done()


def borrowed_call(inv: InvocationContext, awaitable: Any) -> BindingCall:
    """``inv.run(awaitable)``: ``awaitable`` awaited as ``inv``, which it neither opens nor
    finishes (no ledger entry, depth or subrequest)."""
    call = BindingCall(inv, awaitable, False)
    call._borrowed = True
    return call


register_borrowed_call(borrowed_call)
