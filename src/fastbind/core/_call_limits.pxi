# Part of _core.pyx: per-call limits (a dispatch namespace's ``limits``).
#
# A Fetcher made with CallLimits opens a *scope* for each call: a CPU and a subrequest
# budget shared by the callee's invocation and everything under it (its binding and RPC
# calls, outbound fetches, the tasks it starts). Children inherit their caller's scope;
# a scope opened inside another charges both. Nothing here runs for invocations outside
# a scope: the common binding call pays one pointer test.
#
# Subrequests: the (n + 1)-th subrequest made in a scope of ``subrequests = n`` raises
# TooManySubrequestsError in the code that made it, as the per-invocation budget does.
# CPU: a scope with ``cpu_ms`` turns on the pipeline's metering (from then on), and each
# metered step charges the running invocation's scope with its share of the slice (the
# monotonic clock, as invocations are charged). Past the budget the scope's code is
# stopped (CpuLimitExceeded at its next step, or from the watchdog in a busy loop), and
# the call that opened the scope raises WorkerCpuLimitError in its caller.

cdef object _worker_cpu_limit_error = WorkerCpuLimitError
cdef str _EXCEEDED_CPU = "exceeded_cpu"


@cython.final
cdef class CallLimits:
    """The limits of each call made through one binding: ``cpu_ms`` and ``subrequests``
    (None: none), for the callee and everything it calls.

    ``watch`` and ``unwatch`` are called when a call with a CPU limit starts and ends
    (the Runtime gives the CPU watchdog's, so that a busy loop is interrupted).
    """

    def __init__(self, cpu_ms=None, subrequests=None, watch=None, unwatch=None):
        _check_call_limits(cpu_ms, subrequests)
        self.cpu_ms = cpu_ms
        self.subrequests = subrequests
        self.cpu_limit_ns = -1 if cpu_ms is None else <int64_t>min(cpu_ms * 1e6, 9.2e18)
        self.max_subrequests = -1 if subrequests is None else subrequests
        self._watch = watch
        self._unwatch = unwatch

    def __repr__(self):
        return f"<CallLimits cpu_ms={self.cpu_ms!r} subrequests={self.subrequests!r}>"


def _check_call_limits(cpu_ms, subrequests):
    if cpu_ms is not None and (
        type(cpu_ms) is bool or not isinstance(cpu_ms, (int, float))
        or not 0 < cpu_ms < float("inf")
    ):
        raise ValueError(f"cpu_ms must be a number > 0 (finite) or None, not {cpu_ms!r}")
    if subrequests is not None and (type(subrequests) is not int or subrequests < 0):
        raise ValueError(f"subrequests must be an int >= 0 or None, not {subrequests!r}")


@cython.final
@cython.no_gc
cdef class LimitScope:
    """The budget of one call made with CallLimits (made by the core only)."""

    def __init__(self):
        raise TypeError("LimitScope is created by the runtime only")

    def __dealloc__(self):
        _close_scope(self)  # a call never awaited still lets the watchdog go


cdef int _open_scope(InvocationContext inv, CallLimits limits) except -1:
    """Give ``inv`` (just made by a call with ``limits``) a scope of its own."""
    cdef LimitScope scope = LimitScope.__new__(LimitScope)
    scope.parent = inv.scope  # the caller's, if it runs in one
    scope.cpu_limit_ns = limits.cpu_limit_ns
    scope.max_subrequests = limits.max_subrequests
    inv.scope = scope
    inv.owns_scope = True
    if scope.cpu_limit_ns >= 0:
        inv.pipeline.cpu_enabled = inv.pipeline.cpu_measured = True  # the scope's CPU is counted at metered steps
        if limits._watch is not None:
            try:
                limits._watch()
            except BaseException:
                inv._finish(_ERROR, 0)
                raise
            scope._unwatch = limits._unwatch
    return 0


cdef int _charge_scope(LimitScope scope) except -1:
    """One more subrequest in ``scope`` (and the scopes around it), or TooManySubrequestsError."""
    cdef LimitScope s = scope
    while s is not None:
        if s.max_subrequests >= 0 and s.subrequests >= s.max_subrequests:
            raise TooManySubrequestsError()
        s = s.parent
    s = scope
    while s is not None:
        s.subrequests += 1
        s = s.parent
    return 0


cdef void _scope_cpu(LimitScope s, int64_t ns) noexcept:
    while s is not None:
        s.cpu_ns += ns
        if s.cpu_limit_ns >= 0 and s.cpu_ns > s.cpu_limit_ns:
            s.cpu_exceeded = True
        s = s.parent


cdef bint _scope_exceeded(LimitScope s) noexcept:
    """Whether ``s`` or a scope around it is past its CPU budget."""
    while s is not None:
        if s.cpu_exceeded:
            return True
        s = s.parent
    return False


cdef void _close_scope(LimitScope scope) noexcept:
    """The call that opened ``scope`` has ended: the watchdog need not watch for it."""
    cdef PyObject* kind
    cdef PyObject* value
    cdef PyObject* tb
    unwatch = scope._unwatch
    if unwatch is None:
        return
    scope._unwatch = None
    PyErr_Fetch(&kind, &value, &tb)  # it may end while an exception is being raised
    try:
        unwatch()
    except BaseException:
        pass
    PyErr_Restore(kind, value, tb)


cdef bint _watch_scope(int64_t now) noexcept:
    """The watchdog's part for scopes: interrupt the running one if it is past its budget."""
    global _scope_interrupted
    cdef LimitScope s = _running_scope
    if s is None or _scope_interrupted:
        return False
    cdef int64_t running = now - _segment_start
    while s is not None:
        if s.cpu_limit_ns >= 0 and s.cpu_ns + running > s.cpu_limit_ns:
            s.cpu_exceeded = True
            _scope_interrupted = True
            PyThreadState_SetAsyncExc(_slice_thread, <PyObject*>_cpu_limit_exceeded)
            return True
        s = s.parent
    return False


cdef inline void _leave_scope(InvocationContext now_running) noexcept:
    """A metered step hands the thread back to ``now_running``'s code: if the watchdog's
    exception for the scope left has not been raised yet, withdraw it (the scope is
    marked exceeded: its code is stopped at its next step)."""
    global _running_scope, _scope_interrupted
    _running_scope = None if now_running is None else now_running.scope
    if _scope_interrupted:
        PyThreadState_SetAsyncExc(_slice_thread, NULL)
        _scope_interrupted = False
