# Part of _core.pyx: CPU metering of a pipeline's steps, and the task factory that
# gives the tasks a Worker spawns to its invocation.
#
# A *slice* is one step of a task that runs a pipeline's code: a step of the
# dispatching task inside the top-level call, or a step of a task the pipeline's
# Workers spawned. The pipeline's total is read from the thread CPU clock at the two
# edges of each slice (a system call, so once per step, never per binding call);
# inside a slice, binding calls split it between invocations with the cheap monotonic
# clock. None of this runs for pipelines without ``cpu_ms`` or ``measure_cpu``.

cdef PipelineContext _slice_pipeline = None
cdef int64_t _slice_cpu_start = 0     # this thread's CPU clock at the slice's start
cdef int64_t _slice_watch_start = 0   # the watchdog's clock at the same moment
cdef unsigned long long _slice_id = 0
cdef unsigned long long _interrupted_slice = 0
cdef unsigned long _slice_thread = 0
cdef clockid_t _slice_clock = CLOCK_THREAD_CPUTIME_ID
cdef object _cpu_limit_exceeded = CpuLimitExceeded
# Per-call limits (_call_limits.pxi): the scope of the code running in the open slice,
# since when (the monotonic clock), and whether the watchdog's exception for it is pending.
cdef LimitScope _running_scope = None
cdef int64_t _segment_start = 0
cdef bint _scope_interrupted = False


cdef int _slice_open(PipelineContext pipeline) noexcept:
    """Start metering a slice of ``pipeline``; 1 if this step opened it, 0 if nested."""
    global _slice_pipeline, _slice_cpu_start, _slice_watch_start, _slice_id, _slice_thread, _slice_clock
    if _slice_pipeline is not None:
        return 0
    _slice_pipeline = pipeline
    _slice_id += 1
    _slice_thread = PyThread_get_thread_ident()
    _slice_clock = fastbind_watch_clock()  # readable from the watchdog thread too
    _slice_cpu_start = fastbind_clock_ns(CLOCK_THREAD_CPUTIME_ID)
    if FASTBIND_HAVE_THREAD_CPU_CLOCK:
        _slice_watch_start = _slice_cpu_start
    else:
        _slice_watch_start = fastbind_clock_ns(_slice_clock)
    return 1


cdef void _slice_close(PipelineContext pipeline) noexcept:
    global _slice_pipeline, _interrupted_slice, _running_scope, _scope_interrupted
    pipeline.cpu_ns += fastbind_clock_ns(CLOCK_THREAD_CPUTIME_ID) - _slice_cpu_start
    if pipeline.cpu_limit_ns >= 0 and pipeline.cpu_ns > pipeline.cpu_limit_ns:
        pipeline.cpu_exceeded = True
    if _interrupted_slice == _slice_id or _scope_interrupted:
        # The watchdog asked to interrupt this slice; if the exception has not been
        # raised yet (the slice ended first), withdraw it so no other code gets it.
        PyThreadState_SetAsyncExc(_slice_thread, NULL)
        _interrupted_slice = 0
        _scope_interrupted = False
    _slice_pipeline = None
    _running_scope = None


cdef inline int _meter_enter(ExecutionSlot slot, InvocationContext leaving, PipelineContext pipeline) noexcept:
    global _segment_start
    cdef int opened = _slice_open(pipeline)
    cdef int64_t now = fastbind_monotonic_ns()
    if leaving is not None and not opened:
        _charge_cpu(leaving, now - slot.segment_start)
    slot.segment_start = _segment_start = now
    return opened


cdef inline void _meter_exit(ExecutionSlot slot, InvocationContext leaving, PipelineContext pipeline, int opened) noexcept:
    global _segment_start
    cdef int64_t now = fastbind_monotonic_ns()
    if leaving is not None:
        _charge_cpu(leaving, now - slot.segment_start)
    slot.segment_start = _segment_start = now
    if opened:
        _slice_close(pipeline)


cdef inline void _charge_cpu(InvocationContext inv, int64_t ns) noexcept:
    inv.cpu_ns += ns
    if inv.scope is not None:
        _scope_cpu(inv.scope, ns)


def watchdog_tick():
    """Interrupt the running slice if its pipeline is past ``cpu_ms``.

    Called by the watchdog thread, holding the GIL: the main thread is then stopped
    between two bytecodes, so the slice it reads is the one that will get the
    exception. Returns True when it interrupted.
    """
    global _interrupted_slice, _scope_interrupted
    cdef PipelineContext pipeline = _slice_pipeline
    if pipeline is None or _interrupted_slice == _slice_id:
        return False
    cdef int64_t used
    if pipeline.cpu_limit_ns >= 0:
        used = pipeline.cpu_ns + fastbind_clock_ns(_slice_clock) - _slice_watch_start
        if used > pipeline.cpu_limit_ns:
            pipeline.cpu_exceeded = True
            _interrupted_slice = _slice_id
            _scope_interrupted = False  # the pipeline's exception stops the scope's code too
            PyThreadState_SetAsyncExc(_slice_thread, <PyObject*>_cpu_limit_exceeded)
            return True
    return _watch_scope(fastbind_monotonic_ns())


@cython.final
cdef class SliceMeter:
    """Wraps the coroutine of a task spawned by a metered pipeline: meters each step."""

    def __init__(self):
        raise TypeError("SliceMeter is created by the task factory only")

    def __await__(self):
        return self

    def __next__(self):
        return self._step(None, None)

    def send(self, value):
        return self._step(value, None)

    def throw(self, typ, val=None, tb=None):
        return self._step(None, typ if val is None else val)

    def close(self):
        return self.coro.close()

    cdef object _step(self, object value, object exc):
        if self.slot is None:
            self.slot = _current_slot()
        global _running_scope
        cdef ExecutionSlot slot = self.slot
        cdef PipelineContext pipeline = self.pipeline
        cdef int opened = _meter_enter(slot, None, pipeline)
        cdef InvocationContext current = slot.current
        if exc is None and (
            opened and pipeline.cpu_exceeded
            or current is not None and current.scope is not None and _scope_exceeded(current.scope)
        ):
            exc = _cpu_limit_exceeded()
        _running_scope = None if current is None else current.scope
        try:
            if exc is None:
                return self.coro.send(value)
            return self.coro.throw(exc)
        finally:
            _meter_exit(slot, slot.current, pipeline, opened)
            _leave_scope(None)


@cython.final
cdef class TaskFactory:
    """A loop task factory that accounts new tasks to the spawning invocation.

    Each task spawned inside an invocation runs with its own ExecutionSlot, so two
    tasks never share the ``current`` that binding calls swap.
    """

    fastbind_implementation = IMPLEMENTATION

    def __init__(self, previous=None):
        self.previous = previous

    def __call__(self, loop, coro, **kwargs):
        context = kwargs.get("context")
        cdef ExecutionSlot slot
        if context is None:
            slot = _current_slot()
        else:
            slot = context.get(_SLOT)
        cdef InvocationContext inv = None if slot is None else slot.current
        if inv is not None:
            if context is None:
                context = _copy_context()
            slot = ExecutionSlot.__new__(ExecutionSlot)
            slot.current = inv
            context.run(_SLOT.set, slot)
            kwargs["context"] = context
            if inv.pipeline.cpu_enabled:
                coro = _meter(coro, inv.pipeline)
        if self.previous is not None:
            task = self.previous(loop, coro, **kwargs)
        else:
            task = _Task(coro, loop=loop, **kwargs)
        if inv is not None:
            inv.pipeline.adopt(task)
        return task


cdef SliceMeter _meter(object coro, PipelineContext pipeline):
    cdef SliceMeter meter = SliceMeter.__new__(SliceMeter)
    meter.coro = coro
    meter.pipeline = pipeline
    return meter


def make_task_factory(previous):
    return TaskFactory(previous)
