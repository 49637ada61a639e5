# Part of _core.pyx: top-level requests.
#
# A DispatchPlan is made once per Runtime: its limits copied into C fields, and the
# Runtime's policy (fastbind.policy.DispatchPolicy) for what the core does not decide
# itself. ``Entry`` is one Worker's entry point: ``entry(request)`` returns a
# TopLevelCall, the awaitable of one top-level request. On its first step it opens the
# pipeline, then drives the root invocation in the awaiting task (as a BindingCall
# drives a child). When the root invocation returns a Response, the pipeline ends by
# one rule, _conclude() below; any other outcome (an exception, a hang verdict, the CPU
# limit) goes to the policy's ``answer`` coroutine, which makes the Response and then
# ends the pipeline by the same rule. Hang detection watches a pipeline from its first
# suspension: one that never suspends cannot hang.

cdef tuple _PLAIN_BODIES = (bytes, str, bytearray, memoryview)
cdef object _WeakRef = weakref.ref
cdef str _INSIDE_WORKER = (
    "Runtime.dispatch() cannot be called from inside a Worker: call other "
    "Workers through a service binding (env.X.fetch)"
)

cdef object _get_running_loop = asyncio.get_running_loop
cdef void* _get_running_loop_call = fastbind_vectorcall_of(_get_running_loop)
cdef str _HOLDER_KEY = sys.intern("__asyncio_running_event_loop__")  # asyncio's own key object
fastbind_running_loop_init(<PyObject*>_HOLDER_KEY)


def _pid_after_fork():
    fastbind_running_loop_init(NULL)  # the child's holders have their parent's pid


os.register_at_fork(after_in_child=_pid_after_fork)


def _running_loop_is_read_directly():
    """Whether the running loop is read where asyncio keeps it (a fast path, once checked)."""
    return bool(fastbind_running_loop_is_read_directly())


cdef object _running_loop():
    """asyncio.get_running_loop(): read where asyncio keeps it when the fast paths allow."""
    cdef PyObject* loop = fastbind_running_loop()
    if loop != NULL:
        return <object>loop
    found = fastbind_call_none(_get_running_loop_call, _get_running_loop)  # raises when none runs
    fastbind_learn_holder(found)
    return found


@cython.final
cdef class DispatchPlan:
    """What every top-level request of one Runtime shares, prepared once.

    ``policy`` is the Runtime's DispatchPolicy (fastbind/policy.py): the core calls its
    methods, looked up here once, and never imports the layer above.
    """

    def __init__(self, policy, limits):
        self.owner = policy.runtime
        self.max_depth = limits.depth
        self.max_subrequests = limits.subrequests
        self.open_connections = limits.open_connections
        self.wait_until_s = limits.wait_until_s
        self.cpu_limit_ns = _cpu_limit_ns(limits.cpu_ms)
        self.cpu_measured = limits.measure_cpu
        self._validate = policy.validate
        self._install_factory = policy.install_task_factory
        self._watch_hang = policy.watch_hang
        self._answer = policy.answer
        self._report = policy.report
        self._end = policy.end
        self._stream = policy.stream
        self._hold = policy.hold

    def entry(self, WorkerHandle handle not None):
        """The entry point of top-level requests served by Worker ``handle``."""
        cdef Entry entry = Entry.__new__(Entry)
        entry.plan = self
        entry.handle = handle
        return entry

    def conclude(self, PipelineContext pipeline not None, response, error=None):
        """End ``pipeline`` for its final ``response`` (None: the caller went away).

        Returns None when it ended now, or an awaitable that ends it; see _conclude.
        """
        return _conclude(self, pipeline, response, error)

    cdef inline PipelineContext _pipeline(self, str entry):
        global _live_pipelines
        cdef PipelineContext p = PipelineContext.__new__(PipelineContext)
        p.entry = entry
        p.owner = self.owner
        p.max_depth = self.max_depth
        p.max_subrequests = self.max_subrequests
        p.open_connections = self.open_connections
        p.wait_until_s = self.wait_until_s
        p.start_ticks = fastbind_ticks()
        p.duration_ticks = -1
        p.cpu_limit_ns = self.cpu_limit_ns
        p.cpu_enabled = p.cpu_measured = self.cpu_measured
        _live_pipelines += 1
        return p

    cdef object _loop_checked(self):
        """The running loop, with the core's task factory on it."""
        cdef PyObject* running = fastbind_running_loop()
        if running != NULL and self._has_factory(<object>running):
            return <object>running
        loop = _running_loop()  # asyncio's answer (it raises when no loop is running)
        if not self._has_factory(loop):
            self._install_factory(loop)
            self._get_factory = type(loop).get_task_factory
            self._factory_call = fastbind_vectorcall_of(self._get_factory)
            self._factory = fastbind_call_one(self._factory_call, self._get_factory, loop)
            try:
                self._loop_ref = _WeakRef(loop)
            except TypeError:  # a loop class without weak references
                self._loop_ref = loop
        return loop

    cdef bint _has_factory(self, object loop) except -1:
        """``loop`` is the loop last seen, and has the task factory it had then."""
        seen = self._loop_ref
        cdef PyObject* alive
        if type(seen) is _WeakRef:
            alive = fastbind_weakref_get(seen)
            if alive == NULL:
                return False
            seen = <object>alive
            Py_XDECREF(alive)
        return seen is loop and fastbind_call_one(self._factory_call, self._get_factory, loop) is self._factory


cdef object _conclude(DispatchPlan plan, PipelineContext pipeline, object response, object error):
    """How a pipeline ends, once its final Response is known (the one owner of the rule).

    A plain body (None, bytes-like, str) is consumed now: the pipeline ends at once if
    nothing of it is left running, else once its tasks are cancelled and awaited and
    its wait_until work is over (the policy's ``end``, an awaitable returned here). A
    streamed body ends it when read to its end or closed (the policy's ``stream``); a
    WebSocket's upgrade answer when the socket closes (the policy's ``hold``).
    ``response`` None: the caller went away; its tasks are cancelled, and its
    wait_until work too unless the caller was cancelled (a disconnect).
    """
    if response is None:
        return plan._end(pipeline, None, error, not isinstance(error, _CancelledError))
    status = fastbind_slot_get(response, _RESP_STATUS, "status")
    body = fastbind_slot_get(response, _RESP_BODY, "body")
    if body is None or type(body) is bytes or type(body) is str or isinstance(body, _PLAIN_BODIES):
        web_socket = fastbind_slot_peek(response, _RESP_WEB_SOCKET)
        if web_socket != NULL and web_socket != <PyObject*>None:
            plan._hold(pipeline, response, status, error)
            return None
        if not _pipeline_idle(pipeline):
            return plan._end(pipeline, status, error, False)
        _close_pipeline(pipeline)
        if plan.reports:
            plan._report(pipeline, status, error)
        return None
    plan._stream(pipeline, response, status, error)
    return None


@cython.final
cdef class Entry:
    """One Worker's entry point for top-level requests: ``await entry(request)``.

    Made by ``Runtime.entry(name)``. Each call is one top-level request: a pipeline
    with its own depth, budgets, ledger and lifecycle.
    """

    def __cinit__(self):
        self._vectorcall = <void*>_entry_vectorcall

    def __init__(self):
        raise TypeError("Entry is made by Runtime.entry() only")

    @property
    def worker(self):
        """The name of the Worker that serves this entry's requests."""
        return self.handle.name

    def __call__(self, request):
        # Calls from Python take _entry_vectorcall when the fast paths are on.
        return entry_call(self, request, NULL)

    def converted(self, request, convert):
        """The awaitable of one request whose answer is ``convert(response)``."""
        return _top_call(self, request, NULL, convert)

    def continued(self, request, long depth, str pipeline_id not None, cpu_ms=None):
        """The awaitable of one request that goes on with a pipeline of another process.

        Its root invocation runs at ``depth`` (the remote caller's depth + 1), the
        pipeline keeps ``pipeline_id``, and its CPU budget is at most ``cpu_ms``
        (what the caller's pipeline had left; None: the caller had no limit).
        """
        if not 1 <= depth <= self.plan.max_depth:
            raise ValueError(f"a continued pipeline's depth must be 1..{self.plan.max_depth}, not {depth}")
        if not pipeline_id:
            raise ValueError("a continued pipeline needs a pipeline id")
        cdef TopLevelCall call = _top_call(self, request, NULL, None)
        call.continued = True
        call.start_depth = depth
        call.pipeline_id = pipeline_id
        call.cpu_budget_ns = -1 if cpu_ms is None else <int64_t>min(max(cpu_ms, 0.0) * 1e6, 9.2e18)
        return call

    def __repr__(self):
        return f"<Entry {self.handle.name}>"


cdef TopLevelCall entry_call(Entry entry, object request, answer_converter convert):
    """The awaitable of one top-level request of ``entry`` (answer: ``convert``'s, if given)."""
    return _top_call(entry, request, convert, None)


cdef inline TopLevelCall _top_call(Entry entry, object request, answer_converter convert, object py_convert):
    if type(request) is not _RequestType and not isinstance(request, _RequestType):
        raise TypeError(f"dispatch() needs a fastbind.Request, not {type(request).__name__}")
    cdef DispatchPlan plan = entry.plan
    if not plan.resolved:
        plan._validate()
    cdef TopLevelCall call = TopLevelCall.__new__(TopLevelCall)
    call.plan = plan
    call.handle = entry.handle
    call.request = request
    call.convert = convert
    call.py_convert = py_convert
    return call


cdef object _entry_vectorcall(object callable, PyObject** args, size_t nargsf, PyObject* kwnames):
    if PyVectorcall_NARGS(nargsf) == 1 and (kwnames == NULL or PyTuple_GET_SIZE(<object>kwnames) == 0):
        return entry_call(<Entry>callable, <object>args[0], NULL)
    # Keywords, or a wrong number of arguments: __call__ parses and reports them.
    cdef tuple names = () if kwnames == NULL else <tuple>kwnames
    cdef Py_ssize_t i, n = PyVectorcall_NARGS(nargsf)
    positional = tuple([<object>args[i] for i in range(n)])
    keywords = {names[i]: <object>args[n + i] for i in range(len(names))}
    return Entry.__call__(callable, *positional, **keywords)


cdef int _install_entry_vectorcall() except -1:
    cdef Entry probe = Entry.__new__(Entry)
    return fastbind_install_vectorcall(Entry, <char*>&probe._vectorcall - <char*><PyObject*>probe)


_install_entry_vectorcall()


@cython.final
cdef class TopLevelCall(BindingCall):
    """The awaitable of one top-level request (see the part's comment).

    It is the root invocation's BindingCall too (one object per request, not two);
    ``request`` is the request until the root invocation starts.
    """

    def __init__(self):
        raise TypeError("TopLevelCall is created by an Entry only")

    def __await__(self):
        return self

    @property
    def pipeline_context(self):
        return self.pipeline

    cdef int _start(self) except -1:
        cdef DispatchPlan plan = self.plan
        cdef ExecutionSlot slot = _current_slot()
        if slot is not None and slot.current is not None:
            # A new top-level request would start again at depth 1 with a fresh budget.
            raise FastbindError(_INSIDE_WORKER)
        self.loop = plan._loop_checked()
        if plan.snapshot is not None:
            self.original = plan.snapshot(self.request)
        cdef PipelineContext pipeline = plan._pipeline(self.handle.name)
        self.pipeline = pipeline
        cdef long depth = 1
        if self.continued:
            depth = self._continue(pipeline)
        pipeline.root_depth = depth
        cdef InvocationContext inv = _new_invocation(pipeline, None, self.handle, depth, _EMPTY_PROPS, -1)
        pipeline.root = inv
        if plan.observe is not None:  # tracing: what it keeps of the pipeline from its start
            pipeline.observed = plan.observe(pipeline, self.request)
        self.inv = inv  # the root invocation's call is this object (BindingCall's part)
        self.http = True
        if slot is None:
            # The task keeps this slot after the request (its ``current`` is None
            # between steps): later requests of the task need no new context mapping.
            PyContextVar_Set(_SLOT, ExecutionSlot.__new__(ExecutionSlot))
        return 0

    cdef long _continue(self, PipelineContext pipeline) except -1:
        """Take on what the remote caller's pipeline passed: its id and CPU budget;
        returns the depth the root invocation runs at."""
        pipeline._pipeline_id = self.pipeline_id
        cdef int64_t budget = self.cpu_budget_ns
        if budget >= 0 and (pipeline.cpu_limit_ns < 0 or budget < pipeline.cpu_limit_ns):
            pipeline.cpu_limit_ns = budget  # watched as any CPU-limited pipeline (_metering.pxi)
        return self.start_depth

    cdef int _top_send(self, object arg, object exc, PyObject** result) except? -1:
        if self.ending is not None:
            return self._delegate(arg, exc, result)
        if not self.opened:
            self.opened = True
            if exc is not None:  # cancelled before it started: nothing was opened
                self.request = None
                self.started = self.finished = True
                raise exc
            self._start()
            arg = None
        elif self.finished:
            raise RuntimeError("cannot reuse already awaited dispatch")
        # The step's slice (_metering.pxi): named only for a CPU-limited pipeline the
        # watchdog has not seen running, metered once it has; a pipeline whose slices
        # are split between invocations opens it in BindingCall._send.
        cdef PipelineContext pipeline = self.pipeline
        cdef int guarded = 0
        if pipeline.cpu_limit_ns >= 0 and not pipeline.cpu_measured:
            guarded = _slice_open(pipeline) if pipeline.cpu_enabled else _guard_open(pipeline)
            if guarded and pipeline.cpu_exceeded and exc is None:
                exc = _cpu_limit_exceeded()  # stop the pipeline at its next step
        # The root invocation's step (BindingCall's part of this object), called
        # through fastbind_step: its -1 comes back here, not to a Cython error exit.
        cdef int status = fastbind_step(<fastbind_step_fn>_root_step, <PyObject*>self,
                                        <PyObject*>arg, <PyObject*>exc, result)
        if guarded:
            _slice_close(pipeline)
        if status < 0:  # the root invocation raised (any exception, as BaseException)
            return self._root_ended(None, fastbind_take_error(), result)
        if status == 1:
            if self.watch is None:
                # The hang detector walks from the root's coroutine (not from this
                # object, whose plan and loop reach everything).
                self.watch = self.plan._watch_hang(self.loop, self.pipeline, self.coro)
                if self.watch is None:
                    self.watch = False
            return 1
        response = <object>result[0]
        Py_XDECREF(result[0])
        result[0] = NULL
        return self._root_ended(response, None, result)

    cdef int _root_ended(self, object response, object error, PyObject** result) except? -1:
        """The root invocation returned ``response`` or raised ``error``: end or hand over."""
        cdef PipelineContext pipeline = self.pipeline
        cdef bint hung = False
        watch = self.watch
        if watch is not None:
            self.watch = None
            if watch is not False:
                hung = watch.release(pipeline)
        if error is None and not hung and not pipeline.cpu_exceeded:
            ending = _conclude(self.plan, pipeline, response, None)
            if ending is None:  # the common ending: it ended now
                self.original = None
                return self._answer(response, result)
            self.answer = response
        else:
            ending = self.plan._answer(pipeline, self.original, response, error, hung)
        self.ending = ending
        self.original = None
        return self._delegate(None, None, result)

    cdef int _answer(self, object response, PyObject** result) except -1:
        """Give ``response`` (converted, for a raw request) as the call's value."""
        self.finished = True
        if self.convert != NULL:
            value = self.convert(response)
        elif self.py_convert is not None:
            value = self.py_convert(response)
        else:
            value = response
        Py_INCREF(value)
        result[0] = <PyObject*>value
        return 0

    cdef int _delegate(self, object arg, object exc, PyObject** result) except? -1:
        cdef int status
        if exc is None:
            status = fastbind_send(<PyObject*>self.ending, <PyObject*>arg, result)
        else:
            status = fastbind_throw(<PyObject*>self.ending, <PyObject*>exc, result)
        if status < 0:  # the exception is set
            self.ending = self.answer = None
            self.finished = True
            return -1
        if status == 1:
            return 1
        self.ending = None
        value = <object>result[0]
        Py_XDECREF(result[0])
        result[0] = NULL
        if self.answer is not None:  # the ending was the pipeline's, not the answer's
            value = self.answer
            self.answer = None
        return self._answer(value, result)

    def __next__(self):
        return self.send(None)

    def send(self, value):
        cdef PyObject* result = NULL
        return _iterator_step(self._top_send(value, None, &result), result)

    def throw(self, typ, val=None, tb=None):
        cdef PyObject* result = NULL
        return _iterator_step(self._top_send(None, typ if val is None else val, &result), result)

    def close(self):
        """Closed unfinished (its awaiting coroutine was closed): end what it opened.

        The root invocation is closed, then the pipeline ends as for a caller that
        went away, as far as that can go without awaiting: its tasks are cancelled by a
        supervisor task, and the pipeline is reported once they have ended.
        """
        if self.finished or not self.opened:
            self.opened = self.started = self.finished = True
            self.request = None
            return
        self.finished = True
        pipeline = self.pipeline
        try:
            if self.ending is not None:
                ending = self.ending
                self.ending = self.answer = None
                ending.close()
                return
            if self.coro is not None:  # the root invocation is running: close it
                self._close()
            if self.watch is not None and self.watch is not False:
                self.watch.release(pipeline)
            self.watch = None
            ending = self.plan._answer(pipeline, self.original, None, GeneratorExit(), False)
            try:
                ending.send(None)
            except BaseException:  # ended at once (it re-raises the GeneratorExit)
                pass
            else:  # it waits for the pipeline's tasks: the supervisor carries on alone
                ending.close()
        finally:
            _close_pipeline(pipeline)


cdef int _root_step(object call, object arg, object exc, PyObject** result) except? -1:
    return (<BindingCall>call)._send(arg, exc, result)


cdef int _top_call_send(object self, object arg, PyObject** result) except? -1:
    return (<TopLevelCall>self)._top_send(arg, None, result)


fastbind_install_send(TopLevelCall, 1, <fastbind_send_fn>_top_call_send)
# Cython keeps freelists for base classes only: these two subclasses of BindingCall,
# one made per top-level request and one per RPC call, get theirs from _fast_paths.h.
fastbind_freelist_install(TopLevelCall, 0)
fastbind_freelist_install(RpcCall, 1)
