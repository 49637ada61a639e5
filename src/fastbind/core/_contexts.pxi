# Part of _core.pyx: a Worker's env and handle, the pipeline with its ledger, and the
# invocation contexts of its Workers.


cdef str _missing_binding(str worker, str name):
    return f'Worker "{worker}" has no binding or var named "{name}".'


@cython.final
cdef class Env:
    """Attribute and item access to one Worker's bindings and vars, read-only.

    Built once per Worker. ``env.AUTH`` is one dict look-up in C: bindings and vars
    come before the few methods (``get``), which a binding of the same name hides.
    """

    def __init__(self, str worker not None, values):
        self._worker = worker
        self._values = dict(values)

    def __getattribute__(self, str name):
        # A name is looked up once, then found by identity: the names a Worker's code
        # uses are the interned strings of its code objects, the same object each call.
        cdef size_t i = (<size_t><PyObject*>name >> 4) & (_ENV_CACHE - 1)
        if self._cached_names[i] == <PyObject*>name:
            return <object>self._cached_values[i]
        cdef PyObject* value = PyDict_GetItemWithError(self._values, name)
        if value != NULL:
            # The cache owns its key (no other string can get its address while it is
            # here); the value is borrowed from _values, which never changes.
            Py_INCREF(name)
            Py_XDECREF(self._cached_names[i])
            self._cached_names[i] = <PyObject*>name
            self._cached_values[i] = value
            return <object>value
        if name.startswith("__") and name.endswith("__") or name == "get":
            return PyObject_GenericGetAttr(self, name)
        raise MissingBindingError(_missing_binding(self._worker, name))

    def __dealloc__(self):
        cdef int i
        for i in range(_ENV_CACHE):
            Py_XDECREF(self._cached_names[i])

    def __getitem__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise MissingBindingError(_missing_binding(self._worker, name)) from None

    def __setattr__(self, name, value):
        raise AttributeError(f'The env of Worker "{self._worker}" is read-only')

    def __delattr__(self, name):
        raise AttributeError(f'The env of Worker "{self._worker}" is read-only')

    def __contains__(self, name):
        return name in self._values

    def __iter__(self):
        return iter(list(self._values))

    def __len__(self):
        return len(self._values)

    def get(self, name, default=None):
        return self._values.get(name, default)

    def __dir__(self):
        return list(self._values)

    def __repr__(self):
        return f"<Env of {self._worker!r}: {', '.join(self._values)}>"


@cython.final
cdef class ExecutionSlot:
    """Which invocation the code of one task is running now.

    The contextvar holds one slot per task (the task factory gives each spawned task
    its own); a binding call swaps ``current`` around each step of its child instead
    of setting the contextvar, which would cost a new context mapping per call.
    Python code can read ``current`` but not change it.
    """

    def __init__(self):
        raise TypeError("ExecutionSlot is created by the runtime only")


@cython.final
cdef class WorkerHandle:
    """What the core needs to invoke one Worker: its name, handler and env."""

    def __init__(self, str name, handler):
        self.name = name
        self.handler = handler
        self.env = None
        if isinstance(handler, type) and issubclass(handler, WorkerEntrypoint):
            self.is_class = True
            # Skipping __new__ and __init__ is only safe when nobody overrode them, and
            # env and ctx can go straight to their slots when the class did not hide them.
            self.fast_init = (
                handler.__init__ is WorkerEntrypoint.__init__
                and handler.__new__ is object.__new__
                and not inspect.isabstract(handler)
                and inspect.getattr_static(handler, "env", None) is _EP_ENV_SLOT
                and inspect.getattr_static(handler, "ctx", None) is _EP_CTX_SLOT
            )
        elif inspect.iscoroutinefunction(handler):
            self.is_class = False
            self.fast_init = False
        elif handler is not None:
            raise TypeError(name)
        self._rpc = {}
        self.python_workers = getattr(handler, _RPC_RULES, None) == "python_workers"

    @staticmethod
    def for_target(str name not None, env, bint python_workers=False):
        """A handle for an in-process target that is not a Worker (e.g. a Durable Object)."""
        cdef WorkerHandle handle = WorkerHandle.__new__(WorkerHandle)
        handle.name = name
        handle.env = env
        handle._rpc = {}
        handle.python_workers = python_workers
        return handle

    cdef bint has_rpc_method(self, str name) except -1:
        if name in self._rpc:
            return True
        attr = getattr(self.handler, name, None) if self.is_class else None
        if callable(attr) and not isinstance(attr, type):
            self._rpc[name] = True  # only methods that exist: names may come from clients
            return True
        return False

    cdef object rpc_function(self, str name):
        """The plain function behind method ``name``, or None if it is not one."""
        attr = inspect.getattr_static(self.handler, name, None)
        return attr if type(attr) is _FunctionType else None

    cdef object instantiate(self, InvocationContext ctx):
        if self.fast_init:
            inst = fastbind_alloc_instance(self.handler)
            fastbind_slot_set(inst, _EP_CTX, ctx)
            fastbind_slot_set(inst, _EP_ENV, self.env)
            return inst
        return self.handler(ctx, self.env)

    cdef object invoke(self, object request, InvocationContext ctx):
        if self.is_class:
            return self.instantiate(ctx).fetch(request)
        return self.handler(request, self.env, ctx)

    def __repr__(self):
        return f"<WorkerHandle {self.name}>"


# --- the ledger ----------------------------------------------------------------------
# Entries keep kinds and outcomes as one-byte codes into this table (an entry is 40
# bytes, not 64). Code 0 is "running"; the table only grows, with the few labels the
# code base uses.
cdef list _LABELS = [None, _KIND_BINDING, _KIND_RPC, _KIND_FETCH, _OK, _ERROR, _CANCELED]
cdef dict _LABEL_CODES = {label: code for code, label in enumerate(_LABELS) if code}


cdef inline uint8_t _label_code(str label) except 0:
    if label is _KIND_BINDING:
        return 1
    if label is _KIND_RPC:
        return 2
    if label is _KIND_FETCH:
        return 3
    code = _LABEL_CODES.get(label)
    if code is not None:
        return code
    if len(_LABELS) > 255:
        raise ValueError(f"too many distinct ledger labels (at {label!r})")
    _LABELS.append(label)
    _LABEL_CODES[label] = len(_LABELS) - 1
    return len(_LABELS) - 1


cdef inline uint8_t _outcome_code(str outcome) noexcept:
    if outcome is _OK:
        return 4
    if outcome is _ERROR:
        return 5
    if outcome is _CANCELED:
        return 6
    return _other_outcome_code(outcome)


cdef uint8_t _other_outcome_code(str outcome) noexcept:
    try:
        return _label_code(outcome)
    except BaseException:
        return 5


# Records hold only strings and numbers, so they cannot be part of a reference cycle.
@cython.final
@cython.no_gc
cdef class SubrequestRecord:
    """One ledger entry: who called what, how deep, when, for how long, and how it ended.

    A snapshot: the pipeline keeps its ledger as C structs and builds these on reading.
    """

    def __init__(self):
        raise TypeError("SubrequestRecord is created by the runtime only")

    def as_dict(self):
        return {
            "index": self.index, "parent": self.parent,
            "caller": self.caller, "target": self.target, "kind": self.kind,
            "depth": self.depth, "start_ns": self.start_ns,
            "duration_ns": self.duration_ns, "outcome": self.outcome,
            "cpu_ns": self.cpu_ns, "status": self.status,
        }

    def __repr__(self):
        return (
            f"<SubrequestRecord {self.caller}->{self.target} {self.kind} "
            f"depth={self.depth} outcome={self.outcome}>"
        )


@cython.final
cdef class OpenSubrequest:
    """A subrequest in progress (an outbound fetch): ``finish(outcome)`` closes its entry."""

    def __init__(self):
        raise TypeError("OpenSubrequest is created by the runtime only")

    @property
    def index(self):
        """Its place in the pipeline's ledger (``SubrequestRecord.index``)."""
        return self.index

    def finish(self, str outcome not None, status=None):
        """Close the entry with ``outcome`` ("ok", "error", "canceled") and the response's
        HTTP ``status`` if there is one; later calls do nothing."""
        self.pipeline._finish_entry(self.index, outcome, -1, _status_code(status))


cdef inline LedgerEntry* _ledger_entry(PipelineContext pipeline, Py_ssize_t index) noexcept:
    cdef Py_ssize_t offset
    cdef int k = fastbind_ledger_block(index, &offset)
    return &pipeline._ledger._blocks[k][offset]


@cython.final
@cython.no_gc
cdef class LedgerBlocks:
    """The C memory of a pipeline's ledger, made at its first subrequest.

    Its own object, so that a pipeline without subrequests (most top-level requests
    of a leaf Worker) has nothing to free and no clean-up to run when it goes.
    """

    def __dealloc__(self):
        cdef Py_ssize_t i, offset
        cdef int k
        cdef LedgerEntry* e
        for i in range(self.count):
            k = fastbind_ledger_block(i, &offset)
            e = &self._blocks[k][offset]
            Py_XDECREF(e.target)  # str: freeing one runs no Python code
        for i in range(self._n_blocks):
            PyMem_Free(self._blocks[i])
        PyMem_Free(self._blocks)


@cython.final
@cython.freelist(16)
cdef class PipelineContext:
    """One top-level request and everything it reaches: limits, ledger, tasks."""

    def __init__(self, str entry not None, limits, owner=None):
        global _live_pipelines
        self.entry = entry
        self.owner = owner
        self.max_depth = limits.depth
        self.max_subrequests = limits.subrequests
        self.open_connections = limits.open_connections
        self.wait_until_s = limits.wait_until_s
        self.start_ticks = fastbind_ticks()
        self.duration_ticks = -1
        self.cpu_limit_ns = _cpu_limit_ns(limits.cpu_ms)
        self.cpu_enabled = self.cpu_measured = limits.measure_cpu
        self.root_depth = 1
        _live_pipelines += 1

    @property
    def pipeline_id(self):
        """The pipeline's id: 32 hex digits, made when first read, or the id of the
        pipeline of another process that this one continues (a remote binding's hop)."""
        if self._pipeline_id is None:
            self._pipeline_id = _new_pipeline_id()
        return self._pipeline_id

    @property
    def start_ns(self):
        """When the pipeline opened, in CLOCK_MONOTONIC nanoseconds (time.monotonic_ns)."""
        return fastbind_ticks_to_ns(self.start_ticks, fastbind_tick_rate())

    @property
    def duration_ns(self):
        """From opening to the end of the top-level invocation, in ns; -1 until then."""
        if self.duration_ticks < 0:
            return -1
        return <int64_t>(self.duration_ticks * fastbind_tick_rate())

    # The ledger is C blocks of entries: a binding call adds one without allocating
    # a Python object, and entries become SubrequestRecords only when read.
    cdef inline Py_ssize_t _add_entry(self, Py_ssize_t parent, str target, str kind, long depth) except -1:
        cdef Py_ssize_t offset
        cdef int k = fastbind_ledger_block(self._count, &offset)
        cdef LedgerBlocks ledger = self._ledger
        cdef LedgerEntry** blocks
        cdef LedgerEntry* block
        if ledger is None:
            ledger = self._ledger = LedgerBlocks.__new__(LedgerBlocks)
        if k == ledger._n_blocks:  # the last block is full (offset is 0): one more
            blocks = <LedgerEntry**>PyMem_Realloc(ledger._blocks, (k + 1) * sizeof(LedgerEntry*))
            if blocks == NULL:
                raise MemoryError()
            ledger._blocks = blocks
            block = <LedgerEntry*>PyMem_Malloc((<Py_ssize_t>8 << k) * sizeof(LedgerEntry))
            if block == NULL:
                raise MemoryError()
            blocks[k] = block
            ledger._n_blocks = k + 1
        cdef LedgerEntry* e = &ledger._blocks[k][offset]
        Py_INCREF(target)
        e.target = <PyObject*>target
        e.parent = <int32_t>parent
        e.kind = _label_code(kind)
        e.depth = <int32_t>depth
        e.start_ticks = fastbind_ticks()
        e.duration_ticks = -1
        e.outcome = 0
        e.status = 0
        self._count += 1
        ledger.count = self._count
        return self._count - 1

    cdef inline void _finish_entry(self, Py_ssize_t index, str outcome, int64_t cpu_ns, int status) noexcept:
        cdef LedgerEntry* e
        if index < 0:  # the top-level invocation
            if self.duration_ticks < 0:
                self.duration_ticks = fastbind_ticks() - self.start_ticks
            return
        if index >= self._count:
            return
        e = _ledger_entry(self, index)
        if e.outcome == 0:
            e.duration_ticks = fastbind_ticks() - e.start_ticks
            e.outcome = _outcome_code(outcome)
            e.status = <uint16_t>status
            if self.cpu_measured:  # measured pipelines only: most entries carry no CPU figure
                self._record_cpu(index, cpu_ns)

    cdef void _record_cpu(self, Py_ssize_t index, int64_t cpu_ns) noexcept:
        try:
            if self._entry_cpu is None:
                self._entry_cpu = {}
            self._entry_cpu[index] = cpu_ns
        except BaseException:  # out of memory: the entry keeps no CPU figure
            pass

    @property
    def ledger(self):
        """Every subrequest of the pipeline so far, in the order they were made."""
        cdef double rate = fastbind_tick_rate()
        cdef Py_ssize_t i
        return tuple([self._record(i, rate) for i in range(self._count)])

    def subrequest(self, Py_ssize_t index):
        """The ledger's entry ``index`` as it is now (IndexError past the last)."""
        if not 0 <= index < self._count:
            raise IndexError(f"ledger index {index} out of range (0..{self._count - 1})")
        return self._record(index, fastbind_tick_rate())

    cdef SubrequestRecord _record(self, Py_ssize_t i, double rate):
        cdef LedgerEntry* e = _ledger_entry(self, i)
        cdef SubrequestRecord rec = SubrequestRecord.__new__(SubrequestRecord)
        rec.index = i
        rec.parent = e.parent
        # The caller is the invocation its parent entry started (the root: the entry Worker).
        rec.caller = self.entry if e.parent < 0 else <str>_ledger_entry(self, e.parent).target
        rec.target = <str>e.target
        rec.kind = <str>PyList_GET_ITEM(_LABELS, e.kind)
        rec.depth = e.depth
        rec.start_ns = fastbind_ticks_to_ns(e.start_ticks, rate)
        rec.duration_ns = -1 if e.duration_ticks < 0 else <int64_t>(e.duration_ticks * rate)
        rec.outcome = None if e.outcome == 0 else <str>PyList_GET_ITEM(_LABELS, e.outcome)
        rec.cpu_ns = -1 if self._entry_cpu is None else self._entry_cpu.get(i, -1)
        rec.status = None if e.status == 0 else e.status
        return rec

    def adopt(self, task):
        """Account a task spawned by one of this pipeline's Workers."""
        global _live_tasks
        if self.closed:
            return
        if self._tasks is None:
            # Most pipelines never spawn a task: two empty sets are 432 bytes of every
            # in-flight request.
            self._tasks = set()
            self._waiting = set()
        elif task in self._tasks or task in self._waiting:
            return
        self._tasks.add(task)
        _live_tasks += 1
        task.add_done_callback(self._forget)

    def _forget(self, task):
        global _live_tasks
        if task in self._tasks:
            self._tasks.discard(task)
        elif task in self._waiting:
            self._waiting.discard(task)
        else:
            return
        _live_tasks -= 1

    def keep_alive(self, task):
        """Move an adopted task to the wait_until set: it outlives the response."""
        if self._tasks is not None and task in self._tasks:
            self._tasks.discard(task)
            self._waiting.add(task)

    @property
    def idle(self):
        """True when no task of the pipeline, wait_until work included, is still running."""
        return _pipeline_idle(self)

    def take_tasks(self):
        """Pending tasks to cancel when the response is done (not wait_until ones)."""
        if self._tasks is None:
            return []
        return [t for t in self._tasks if not t.done()]

    def take_waiting(self):
        if self._waiting is None:
            return []
        return [t for t in self._waiting if not t.done()]

    def close(self):
        """Mark the pipeline ended; it adopts nothing more."""
        _close_pipeline(self)

    def charge_fetch(self, InvocationContext caller not None, str target not None):
        """Count one outbound fetch (or redirect) of ``caller``; returns its ledger record."""
        caller._charge()
        cdef OpenSubrequest sub = OpenSubrequest.__new__(OpenSubrequest)
        sub.pipeline = self
        sub.index = self._add_entry(caller.ledger_index, target, _KIND_FETCH, caller.depth)
        return sub


cdef inline void _close_pipeline(PipelineContext pipeline) noexcept:
    # ``root`` is let go: the root invocation refers to its pipeline, and the pair
    # would otherwise live on as a cycle until the garbage collector ran.
    global _live_pipelines
    if not pipeline.closed:
        pipeline.closed = True
        pipeline.root = None
        _live_pipelines -= 1


cdef bint _pipeline_idle(PipelineContext pipeline) except -1:
    if pipeline._tasks is None:
        return True
    for task in pipeline._tasks:
        if not task.done():
            return False
    for task in pipeline._waiting:
        if not task.done():
            return False
    return True


@cython.final
@cython.freelist(64)
cdef class InvocationContext:
    """One run of one Worker: its depth, subrequest budget and ``ctx`` methods."""

    def __init__(self):
        raise TypeError("InvocationContext is created by the runtime only")

    @property
    def worker(self):
        return self.handle.name

    @property
    def python_workers(self):
        """Whether the running Worker follows Python Workers' RPC rules (the workers module)."""
        return self.handle.python_workers

    @property
    def env(self):
        """This invocation's env, readable only by its own code (not by a child via ``parent``)."""
        if _current() is not self:
            raise AttributeError("An invocation's env is readable only by its own code")
        return self.handle.env

    @property
    def passes_through_on_exception(self):
        return self.pass_through

    cdef inline int _charge(self) except -1:
        if self.subrequests >= self.pipeline.max_subrequests:
            raise TooManySubrequestsError()
        if self.scope is not None:  # a call with per-call limits is above (_call_limits.pxi)
            _charge_scope(self.scope)
        self.subrequests += 1
        return 0

    cdef InvocationContext _child(self, WorkerHandle handle, str kind, object props):
        cdef PipelineContext pipeline = self.pipeline
        if self.depth >= pipeline.max_depth:
            raise _depth_error(self, handle)
        self._charge()
        cdef Py_ssize_t index = pipeline._add_entry(self.ledger_index, handle.name, kind, self.depth + 1)
        cdef InvocationContext child = _new_invocation(pipeline, self, handle, self.depth + 1, props, index)
        if self.scope is not None:
            child.scope = self.scope
        return child

    cdef inline void _finish(self, str outcome, int status) noexcept:
        self.pipeline._finish_entry(self.ledger_index, outcome, self.cpu_ns, status)
        if self.owns_scope:
            _close_scope(self.scope)

    def wait_until(self, awaitable):
        """Let ``awaitable`` run on after the response, up to ``Limits.wait_until_s``."""
        cdef PipelineContext pipeline = self.pipeline
        if pipeline.closed:
            raise FastbindError("wait_until() called after the pipeline ended")
        cdef ExecutionSlot slot = _current_slot()
        if slot is None:
            raise FastbindError("wait_until() called outside a fastbind invocation")
        previous = slot.current
        slot.current = self
        try:
            task = asyncio.ensure_future(awaitable)
        finally:
            slot.current = previous
        pipeline.adopt(task)
        pipeline.keep_alive(task)

    def run(self, awaitable):
        """Await ``awaitable`` as this invocation: its code sees this ``ctx`` as current.

        No ledger entry, depth or subrequest is added: it is the same invocation,
        resumed from another task (e.g. the reader of a streamed response body).
        """
        cdef BindingCall call = _new_call(self, awaitable, False)
        call.borrowed = True
        return call

    def pass_through_on_exception(self):
        """On an uncaught exception, forward the request to the Runtime's origin."""
        self.pass_through = True
        if self.pipeline.root is not None:
            self.pipeline.root.pass_through = True

    def __repr__(self):
        return f"<InvocationContext {self.handle.name} depth={self.depth}>"


cdef object _depth_error(InvocationContext caller, WorkerHandle target):
    """SubrequestDepthError for a call from ``caller`` to ``target``, with the chain of
    Workers that led there (its ``chain``: the top-level Worker first)."""
    chain = []
    cdef InvocationContext inv = caller
    while inv is not None:
        chain.append(inv.handle.name)
        inv = inv.parent
    chain.reverse()
    _note_remote_callers(chain, caller.pipeline.root_depth)
    return SubrequestDepthError(chain=tuple(chain), target=target.name, limit=caller.pipeline.max_depth)


def _new_pipeline_id():
    return os.urandom(16).hex()


cdef int _note_remote_callers(list chain, long root_depth) except -1:
    # A continued pipeline's callers ran in other processes: the chain says how many.
    if root_depth > 1:
        chain.insert(0, f"({root_depth - 1} in other processes)")
    return 0


cdef inline int _status_code(object status) except -1:
    """An HTTP status as the ledger keeps it: 0 for None."""
    if status is None:
        return 0
    cdef long code = status
    if not 100 <= code <= 999:
        raise ValueError(f"not an HTTP status: {status!r}")
    return <int>code


cdef inline InvocationContext _new_invocation(
    PipelineContext pipeline, InvocationContext parent, WorkerHandle handle,
    long depth, object props, Py_ssize_t ledger_index,
):
    cdef InvocationContext inv = InvocationContext.__new__(InvocationContext)
    inv.pipeline = pipeline
    inv.parent = parent
    inv.handle = handle
    inv.depth = depth
    inv.props = props
    inv.ledger_index = ledger_index
    return inv
