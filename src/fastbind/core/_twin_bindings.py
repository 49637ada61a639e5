"""Pure twin, part 2: Worker handles, service bindings and RPC stubs, and the task factory.

The same behaviour as ``_binding.pxi`` (its BindingCall, the awaitable that runs a child,
is ``_twin_binding_call``) and the task factory of ``_metering.pxi``.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from types import FunctionType
from typing import Any

from ..entrypoint import WorkerEntrypoint
from ..errors import CpuLimitExceeded, FastbindError
from ..request import Request
from ..request import forward_request as _forward
from ._twin_call_limits import CallLimits, scope_exceeded
from ._twin_binding_call import BindingCall
from ._twin_contexts import (
    SLOT,
    ExecutionSlot,
    InvocationContext,
    PipelineContext,
    child_of,
    hidden_field,
    invocation_state,
    new_slot,
    open_scope,
    pipeline_state,
    slot_current,
)
from ._twin_metering import enter_scope, leave_scope, meter_enter, meter_exit, slice_close, slice_open
from .binding_fetch import FOLLOW, fetch_with_options
from .props import props_of
from .python_workers_values import check_python_workers_value
from .rpc_values import RESERVED_METHODS, SCALAR_TYPES, isolate, reserved_message, unknown_message

__all__ = (
    "WorkerHandle",
    "Fetcher",
    "RpcMethod",
    "call_child",
    "start_binding_call",
    "SliceMeter",
    "TaskFactory",
    "make_task_factory",
)

IMPLEMENTATION = "py"


class WorkerHandle:
    """What the core needs to invoke one Worker: its name, handler and env."""

    __slots__ = ("_name", "_handler", "_is_class", "_fast_init", "env", "_rpc", "python_workers")

    def __init__(self, name: str, handler: Any) -> None:
        self._name = name
        self._handler = handler
        self.env: Any = None
        if isinstance(handler, type) and issubclass(handler, WorkerEntrypoint):
            self._is_class = True
            # Skipping __new__ and __init__ is only safe when nobody overrode them.
            self._fast_init = (
                handler.__init__ is WorkerEntrypoint.__init__
                and handler.__new__ is object.__new__
                and not inspect.isabstract(handler)
            )
        elif inspect.iscoroutinefunction(handler) or handler is None:
            self._is_class = False
            self._fast_init = False
        else:
            raise TypeError(name)
        self._rpc: dict[str, Any] = {}
        # A Worker of the ``workers`` module: its RPC arguments and results follow Python
        # Workers' rules (python_workers_values.py) on top of fastbind's own.
        self.python_workers = getattr(handler, "__fastbind_rpc_rules__", None) == "python_workers"

    @staticmethod
    def for_target(name: str, env: Any, python_workers: bool = False) -> WorkerHandle:
        """A handle for an in-process target that is not a Worker (e.g. a Durable Object)."""
        handle = WorkerHandle(name, None)
        handle.env = env
        handle.python_workers = python_workers
        return handle

    @property
    def name(self) -> str:
        return self._name

    @property
    def handler(self) -> Any:
        return self._handler

    def has_rpc_method(self, name: str) -> bool:
        """Whether the Worker's class has a public method ``name`` callable over RPC."""
        if name in self._rpc:
            return True
        attr = getattr(self._handler, name, None) if self._is_class else None
        if callable(attr) and not isinstance(attr, type):
            # Only methods that exist: names may come from clients. The value is the
            # plain function behind the method, called with the instance, or None.
            static = inspect.getattr_static(self._handler, name, None)
            self._rpc[name] = static if type(static) is FunctionType else None
            return True
        return False

    def rpc_function(self, name: str) -> Any:
        """The plain function behind method ``name`` (known to has_rpc_method), or None."""
        return self._rpc.get(name)

    def instantiate(self, ctx: InvocationContext) -> Any:
        cls = self._handler
        if self._fast_init:
            inst = object.__new__(cls)
            inst.ctx = ctx
            inst.env = self.env
            return inst
        return cls(ctx, self.env)

    def invoke(self, request: Any, ctx: InvocationContext) -> Any:
        if self._is_class:
            return self.instantiate(ctx).fetch(request)
        return self._handler(request, self.env, ctx)

    def __repr__(self) -> str:
        return f"<WorkerHandle {self._name}>"


def _caller(what: str) -> InvocationContext:
    slot = SLOT.get()
    caller = None if slot is None else slot_current(slot)
    if caller is None:
        raise FastbindError(f"{what} was called outside a fastbind invocation")
    return caller  # type: ignore[no-any-return]


class Fetcher:
    """A service binding: ``env.X``. ``fetch`` runs the bound Worker in place.

    Any other public name is an RPC method of the bound WorkerEntrypoint
    (``await env.USERS.get_user(42)``); its stub is cached in the instance dict so
    later look-ups are plain attribute loads. Its own fields are hidden (every other
    name is an RPC stub's, as on the compiled core).
    """

    __slots__ = ("_state", "__dict__")

    def __init__(
        self, target: WorkerHandle, binding: str, props: Any = None, limits: CallLimits | None = None
    ) -> None:
        if limits is not None and not isinstance(limits, CallLimits):
            raise TypeError(f"limits must be a CallLimits or None, not {type(limits).__name__}")
        # ``limits``: each call gets a budget of its own (_twin_call_limits).
        set_fetcher_state(self, (target, binding, props_of(props), limits))

    def __getattr__(self, name: str) -> RpcMethod:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        method = RpcMethod(self, name)
        target = fetcher_state(self)[0]
        if name not in RESERVED_METHODS and not name.startswith("_") and target.has_rpc_method(name):
            # Only real methods are cached: names can come from clients.
            self.__dict__[name] = method
        return method

    def fetch(
        self, input: Any, *, method: Any = None, headers: Any = None, body: Any = None,
        redirect: Any = "follow", timeout: Any = None, cf: Any = None,
    ) -> Any:
        """Run the bound Worker's fetch handler with a Request built as fetch() would,
        with the global fetch's options and defaults (binding_fetch.py)."""
        target, binding, props, limits = fetcher_state(self)
        if (method is not None or headers is not None or body is not None or timeout is not None
                or cf is not None or redirect != "follow"):
            return fetch_with_options(self, binding, input, method, headers, body, redirect,
                                      timeout, cf, start_binding_call)
        caller = _caller(f"env.{binding}.fetch()")
        request = _forward(input) if type(input) is Request else Request(input)
        inv = child_of(caller, target, "binding", props)
        if limits is not None:
            open_scope(inv, limits)
        call = BindingCall(inv, request, True)
        call._redirect = (self, input, FOLLOW, start_binding_call)
        return call

    def __repr__(self) -> str:
        target, binding, _, limits = fetcher_state(self)
        if limits is not None:
            return f"<Fetcher {binding} -> {target.name} {limits!r}>"
        return f"<Fetcher {binding} -> {target.name}>"


fetcher_state, set_fetcher_state = hidden_field(Fetcher, "_state")


class RpcMethod:
    """``env.X.name``: calling it runs method ``name`` of the bound Worker in place."""

    __slots__ = ("_fetcher", "_name", "_error")

    def __init__(self, fetcher: Fetcher, name: str) -> None:
        self._fetcher = fetcher
        self._name = name
        # Decided once per binding and name: the class's methods do not change per call.
        if name in RESERVED_METHODS or name.startswith("_"):
            self._error: str | None = reserved_message(name)
        elif not fetcher_state(fetcher)[0].has_rpc_method(name):
            self._error = unknown_message(name)
        else:
            self._error = None

    def __call__(self, *args: Any, **kwargs: Any) -> BindingCall:
        if self._error is not None:
            raise TypeError(self._error)
        target, binding, props, limits = fetcher_state(self._fetcher)
        caller = _caller(f"env.{binding}.{self._name}()")
        if invocation_state(caller).handle.python_workers:
            for value in (*args, *kwargs.values()):
                check_python_workers_value(value)
        for value in args:  # scalars, the usual arguments, pass as they are
            if type(value) not in SCALAR_TYPES:
                args = tuple([isolate(v) for v in args])
                break
        if kwargs:
            kwargs = {k: isolate(v) for k, v in kwargs.items()}
        inv = child_of(caller, target, "rpc", props)
        if limits is not None:
            open_scope(inv, limits)
        return BindingCall(inv, None, False, self._name, args, kwargs)

    def __repr__(self) -> str:
        return f"<RpcMethod {fetcher_state(self._fetcher)[1]}.{self._name}>"


def start_binding_call(fetcher: Fetcher, request: Request, mode: int, origin: Any) -> BindingCall:
    """A binding call of ``fetcher`` with ``request`` as it is (binding_fetch.py's
    ``start_call``): redirects followed (mode 1), refused (2) or returned (0)."""
    target, binding, props, limits = fetcher_state(fetcher)
    caller = _caller(f"env.{binding}.fetch()")
    inv = child_of(caller, target, "binding", props)
    if limits is not None:  # each hop a call of its own, with its own budget
        open_scope(inv, limits)
    call = BindingCall(inv, request, True)
    if mode:
        call._redirect = (fetcher, origin, mode, start_binding_call)
    return call


def call_child(
    target: WorkerHandle,
    kind: str,
    function: Any,
    args: tuple[Any, ...] = (),
    props: Any = None,
    http: bool = False,
) -> BindingCall:
    """Run ``function(ctx, *args)`` as a child invocation of the running one.

    The child gets depth + 1, counts as one subrequest of ``kind`` of the caller, is
    recorded in the ledger and follows the lifecycle rules, exactly as a binding call;
    ``http`` requires a Response result, otherwise the result is isolated as RPC values.
    """
    slot = SLOT.get()
    caller = None if slot is None else slot_current(slot)
    if caller is None:
        raise FastbindError(f'A call to "{target.name}" was made outside a fastbind invocation')
    props = props_of(props)
    inv = child_of(caller, target, kind, props)
    call = BindingCall(inv, None, http, kind, args, None)
    call._custom = function
    return call


class SliceMeter:
    """Wraps the coroutine of a task spawned by a metered pipeline: meters each step."""

    __slots__ = ("_coro", "_pipeline", "_slot")

    def __init__(self, coro: Any, pipeline: PipelineContext) -> None:
        self._coro = coro
        self._pipeline = pipeline
        self._slot: ExecutionSlot | None = None

    def __await__(self) -> Any:
        return self

    def __next__(self) -> Any:
        return self._step(None, None)

    def send(self, value: Any) -> Any:
        return self._step(value, None)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        return self._step(None, typ if val is None else val)

    def close(self) -> None:
        self._coro.close()

    def _step(self, value: Any, exc: Any) -> Any:
        if self._slot is None:
            self._slot = SLOT.get()
        slot = self._slot
        pipeline = self._pipeline
        split = pipeline_state(pipeline).cpu_measured
        opened = meter_enter(slot, None, pipeline) if split else slice_open(pipeline)  # type: ignore[arg-type]
        current = slot_current(slot)
        scope = None if current is None else invocation_state(current).scope
        if exc is None and (
            (opened and pipeline_state(pipeline).cpu_exceeded) or scope_exceeded(scope)
        ):
            exc = CpuLimitExceeded()
        enter_scope(scope)
        try:
            if exc is None:
                return self._coro.send(value)
            return self._coro.throw(exc)
        finally:
            if split:
                meter_exit(slot, slot_current(slot), pipeline, opened)  # type: ignore[arg-type]
            elif opened:
                slice_close(pipeline)
            leave_scope(None)


class TaskFactory:
    """A loop task factory that accounts new tasks to the spawning invocation.

    Each task spawned inside an invocation runs with its own ExecutionSlot, so two
    tasks never share the ``current`` that binding calls swap.
    """

    __slots__ = ("previous",)
    fastbind_implementation = IMPLEMENTATION

    def __init__(self, previous: Any = None) -> None:
        self.previous = previous

    def __call__(self, loop: Any, coro: Any, **kwargs: Any) -> Any:
        context = kwargs.get("context")
        slot = SLOT.get() if context is None else context.get(SLOT)
        inv = None if slot is None else slot_current(slot)
        if inv is not None:
            if context is None:
                context = contextvars.copy_context()
            context.run(SLOT.set, new_slot(inv))
            kwargs["context"] = context
            pipeline = invocation_state(inv).pipeline
            pstate = pipeline_state(pipeline)
            if pstate.cpu_enabled or pstate.cpu_limit_ns >= 0:
                coro = SliceMeter(coro, pipeline)  # metered, or named for the watchdog
        previous = self.previous
        if previous is not None:
            task = previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        if inv is not None:
            invocation_state(inv).pipeline.adopt(task)
        return task


def make_task_factory(previous: Any) -> TaskFactory:
    return TaskFactory(previous)
