# Part of _core.pyx: CPU metering of a pipeline's steps, and the task factory that
# gives the tasks a Worker spawns to its invocation.
#
# A *slice* is one step of a task that runs a pipeline's code: a step of the
# dispatching task inside the top-level call, or a step of a task the pipeline's
# Workers spawned. A *metered* pipeline's total is read from the thread CPU clock at the
# two edges of each slice (a system call, so once per step, never per binding call).
# With Limits.measure_cpu every pipeline is metered from its start, and binding calls
# also split each slice between invocations with the cheap monotonic clock (as they do
# once a call with a CPU-limited scope has been made: _call_limits.pxi).
#
# A pipeline with a CPU limit (30 s by default) is not metered from its start: its
# slices are *named* only (an id, the thread's CPU clock, what is left of its budget;
# no clock read), a few stores per step. The watchdog thread looks at the slice running
# at each of its ticks, without the GIL (so that the moment does not depend on when the
# loop's thread lets it go): a named slice it sees is metered from that tick and its
# pipeline from then on; a slice past its pipeline's budget is interrupted. So a
# pipeline is metered once it runs long enough to be seen: a busy loop within a tick, a
# pipeline that spends its CPU in short steps after about a tick of it, most requests
# never.

cdef PipelineContext _slice_pipeline = None
cdef int64_t _slice_cpu_start = 0     # this thread's CPU clock at the slice's start (-1: named only)
cdef int64_t _slice_watch_start = 0   # the watchdog's clock at the same moment (-1: named only)
cdef unsigned long long _slice_id = 0
cdef unsigned long long _interrupted_slice = 0
cdef unsigned long _slice_thread = 0
cdef clockid_t _slice_clock = CLOCK_THREAD_CPUTIME_ID
cdef object _cpu_limit_exceeded = CpuLimitExceeded
# Published for the watchdog's look without the GIL (fastbind_load/fastbind_store).
cdef int64_t _live_slice = 0          # the open slice's id, 0 when none
cdef int64_t _live_clock = 0          # its thread's CPU clock (a clockid_t)
cdef int64_t _live_start = -1         # its start on that clock (-1: named only)
cdef int64_t _live_budget = -1        # its pipeline's budget left as it opened (-1: no limit)
cdef int64_t _seen_slice = 0          # a named slice the watchdog saw running ...
cdef int64_t _seen_at = 0             # ... and when, on its thread's CPU clock
cdef int64_t _over_slice = 0          # a slice the watchdog saw past its budget
# Per-call limits (_call_limits.pxi): the scope of the code running in the open slice,
# since when (the monotonic clock), and whether the watchdog's exception for it is pending.
cdef LimitScope _running_scope = None
cdef int64_t _segment_start = 0
cdef bint _scope_interrupted = False


cdef int64_t _cpu_limit_ns(object cpu_ms) except? -2:
    """Limits.cpu_ms in ns; -1 for no limit (0 or None). int64 ns hold 292 years: a
    larger budget is the same as that."""
    if not cpu_ms:
        return -1
    return <int64_t>min(cpu_ms * 1e6, 9.2e18)


cdef inline int _name_slice(PipelineContext pipeline) noexcept:
    global _slice_pipeline, _slice_id, _slice_thread, _slice_clock
    if _slice_pipeline is not None:
        return 0
    fastbind_store(&_live_slice, 0)
    _slice_pipeline = pipeline
    _slice_id += 1
    _slice_thread = PyThread_get_thread_ident()
    _slice_clock = fastbind_watch_clock()  # readable from the watchdog thread too
    return 1


cdef inline void _publish_slice(PipelineContext pipeline) noexcept:
    global _live_clock, _live_start, _live_budget
    _live_clock = <int64_t>_slice_clock
    _live_start = _slice_watch_start
    _live_budget = pipeline.cpu_limit_ns - pipeline.cpu_ns if pipeline.cpu_limit_ns >= 0 else -1
    fastbind_store(&_live_slice, <int64_t>_slice_id)


cdef int _slice_open(PipelineContext pipeline) noexcept:
    """Start metering a slice of ``pipeline``; 1 if this step opened it, 0 if nested."""
    global _slice_cpu_start, _slice_watch_start
    if not _name_slice(pipeline):
        return 0
    _slice_cpu_start = fastbind_clock_ns(CLOCK_THREAD_CPUTIME_ID)
    if FASTBIND_HAVE_THREAD_CPU_CLOCK:
        _slice_watch_start = _slice_cpu_start
    else:
        _slice_watch_start = fastbind_clock_ns(_slice_clock)
    _publish_slice(pipeline)
    return 1


cdef int _guard_open(PipelineContext pipeline) noexcept:
    """Name a slice of an unmetered ``pipeline`` for the watchdog; 1 if opened, 0 if nested."""
    global _slice_cpu_start, _slice_watch_start
    if not _name_slice(pipeline):
        return 0
    _slice_cpu_start = _slice_watch_start = -1
    _publish_slice(pipeline)
    return 1


cdef void _slice_close(PipelineContext pipeline) noexcept:
    global _slice_pipeline, _interrupted_slice, _running_scope, _scope_interrupted
    fastbind_store(&_live_slice, 0)
    if _slice_cpu_start >= 0:
        pipeline.cpu_ns += fastbind_clock_ns(CLOCK_THREAD_CPUTIME_ID) - _slice_cpu_start
    elif fastbind_load(&_seen_slice) == <int64_t>_slice_id:
        # The watchdog saw this named slice running: its pipeline is metered from
        # now on, and this slice from then (the same clock, where the platform has one).
        pipeline.cpu_enabled = True
        if FASTBIND_HAVE_THREAD_CPU_CLOCK:
            pipeline.cpu_ns += fastbind_clock_ns(CLOCK_THREAD_CPUTIME_ID) - _seen_at
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


cdef int _look() noexcept nogil:
    """The watchdog's look at the slice running now, without the GIL; 1 if it is past
    its budget (``watchdog_tick`` then interrupts it, with the GIL)."""
    global _seen_slice, _seen_at, _over_slice
    cdef int64_t live = fastbind_load(&_live_slice)
    if live == 0:
        return 0
    cdef int64_t clock = _live_clock, start = _live_start, budget = _live_budget
    fastbind_fence()
    if fastbind_load(&_live_slice) != live:
        return 0  # it changed while read
    cdef int64_t now = fastbind_clock_or_none(clock)
    if now < 0:
        return 0
    if start < 0:  # named only: metered from the first look that finds it
        if fastbind_load(&_seen_slice) != live:
            _seen_at = now
            fastbind_store(&_seen_slice, live)
            return 0
        start = _seen_at
    if budget >= 0 and now - start > budget:
        fastbind_store(&_over_slice, live)
        return 1
    return 0


# How the watchdog's thread waits: it must not need the GIL between looks. A thread that
# waits for the GIL while the loop's thread runs short steps waits for seconds: the
# loop's thread lets the GIL go at each poll of the event loop and takes it back at
# once, so the waiting thread neither wins it nor has it dropped for it.
cdef int64_t _wait_interval_ns = 100_000_000   # between looks (jittered)
cdef int64_t _wait_poked = 0                   # come back to Python after the next look
cdef uint64_t _wait_random = 0                 # xorshift state (the watchdog's thread only)


def watchdog_configure(double interval):
    """Set the seconds between ``watchdog_wait``'s looks (also while it waits)."""
    fastbind_store(&_wait_interval_ns, <int64_t>(interval * 1e9))


def watchdog_poke():
    """Make ``watchdog_wait`` come back after its next look (the watchdog's book
    changed). Only stores: safe in a weak reference's callback or a signal handler."""
    fastbind_store(&_wait_poked, 1)


cdef int64_t _jittered(int64_t ns) noexcept nogil:
    # A random point of [ns/2, 3ns/2]: this thread wakes when the loop's thread lets it,
    # and a fixed sleep would then look at the same moment of a Worker's cycle of steps
    # (between two of them) every time.
    global _wait_random
    cdef uint64_t x = _wait_random
    if x == 0:
        x = <uint64_t>fastbind_clock_ns(CLOCK_THREAD_CPUTIME_ID) | 1
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    _wait_random = x
    return ns // 2 + <int64_t>(x % <uint64_t>(ns + 1))


def watchdog_wait(bint every_look):
    """Look at the slice running now at each interval, without the GIL, until a look
    finds it past its pipeline's budget (True: ``watchdog_tick`` then interrupts it, if
    it still runs once the GIL comes), or after one look when ``every_look`` (the
    caller ticks another core or a per-call scope with the GIL), or after a poke."""
    cdef int over = 0
    with nogil:
        while True:
            fastbind_sleep_ns(_jittered(fastbind_load(&_wait_interval_ns)))
            over = _look()
            if over or every_look:
                break
            if fastbind_load(&_wait_poked):
                fastbind_store(&_wait_poked, 0)
                break
    return bool(over)


def watchdog_tick():
    """Interrupt the slice the last look found past its budget, if it still runs, or the
    code of a per-call scope past its own.

    Called by the watchdog thread, holding the GIL: the main thread is then stopped
    between two bytecodes, so the slice it reads is the one that will get the
    exception (a slice that ended first was charged at its end, and its pipeline is
    stopped at its next step). Returns True when it interrupted.
    """
    global _interrupted_slice, _scope_interrupted
    cdef PipelineContext pipeline = _slice_pipeline
    if pipeline is None or _interrupted_slice == _slice_id:
        return False
    if pipeline.cpu_limit_ns >= 0 and fastbind_load(&_over_slice) == <int64_t>_slice_id:
        pipeline.cpu_exceeded = True
        _interrupted_slice = _slice_id
        _scope_interrupted = False  # the pipeline's exception stops the scope's code too
        PyThreadState_SetAsyncExc(_slice_thread, <PyObject*>_cpu_limit_exceeded)
        return True
    return _watch_scope(fastbind_monotonic_ns())


def interrupt_slice(exc):
    """Raise ``exc`` into the slice running now, whatever its budget; True if there was one.

    For the watchdog thread (holding the GIL) when the server's shutdown deadline finds
    the loop's thread stuck in a pipeline's step. Once per slice.
    """
    global _interrupted_slice
    if _slice_pipeline is None or _interrupted_slice == _slice_id:
        return False
    _interrupted_slice = _slice_id
    PyThreadState_SetAsyncExc(_slice_thread, <PyObject*>exc)
    return True


@cython.final
cdef class SliceMeter:
    """Wraps the coroutine of a task spawned by a metered or CPU-limited pipeline:
    meters each step, or names it for the watchdog."""

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
        cdef bint split = pipeline.cpu_measured
        cdef int opened
        if split:
            opened = _meter_enter(slot, None, pipeline)
        elif pipeline.cpu_enabled:
            opened = _slice_open(pipeline)
        else:
            opened = _guard_open(pipeline)
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
            if split:
                _meter_exit(slot, slot.current, pipeline, opened)
            elif opened:
                _slice_close(pipeline)
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
            if inv.pipeline.cpu_enabled or inv.pipeline.cpu_limit_ns >= 0:
                coro = _meter(coro, inv.pipeline)  # metered, or named for the watchdog
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
