# cython: language_level=3, embedsignature=True
"""Compiled core: pipeline and invocation contexts, the ledger, and binding dispatch."""

cimport cython
from cpython.exc cimport PyErr_ExceptionMatches, PyErr_Fetch, PyErr_Restore
from cpython.contextvars cimport PyContextVar_Get, PyContextVar_Reset, PyContextVar_Set
from cpython.object cimport PyObject, PyTypeObject
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.ref cimport Py_INCREF, Py_REFCNT, Py_XDECREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport int32_t, int64_t, uint8_t
from posix.time cimport CLOCK_MONOTONIC, CLOCK_THREAD_CPUTIME_ID, clock_gettime, timespec

import asyncio
import contextvars
import inspect
import os
import sys
import weakref
from contextvars import ContextVar
from types import FunctionType, MappingProxyType

from fastbind.entrypoint import WorkerEntrypoint
from fastbind.env import MissingBindingError
from fastbind.errors import (
    BODY_USED_MESSAGE,
    CpuLimitExceeded,
    FastbindError,
    SubrequestDepthError,
    TooManySubrequestsError,
)
from fastbind.headers import Headers, use_raw_decoder
from fastbind.request import Request, forward_request
from fastbind.response import Response
from fastbind.rpc_values import RESERVED_METHODS, isolate, reserved_message, unknown_message

cdef extern from "_core_capi.h":
    ctypedef int (*fastbind_send_fn)(PyObject*, PyObject*, PyObject**)
    ctypedef int (*fastbind_step_fn)(PyObject*, PyObject*, PyObject*, PyObject**)
    int fastbind_step(fastbind_step_fn f, PyObject* call, PyObject* arg, PyObject* exc, PyObject** result)
    object fastbind_take_error()
    ctypedef struct fastbind_request_layout:
        Py_ssize_t url, method, headers, body, body_used, items, shared, raw
        PyTypeObject* headers_type
        int pooled_request, pooled_headers
        PyObject* body_used_message
        PyObject* forward_request
    fastbind_request_layout fastbind_req
    object fastbind_forward(object src)
    Py_ssize_t fastbind_slot_offset(object type, const char* name) except -1
    object fastbind_slot_get(object obj, Py_ssize_t off, const char* name)
    void fastbind_slot_set(object obj, Py_ssize_t off, object value)
    object fastbind_alloc_instance(object type)
    int fastbind_install_am_send(object type, fastbind_send_fn impl) except -1
    int fastbind_pool_install(int which, object type, tuple names) except -1
    PyObject* fastbind_call3(PyObject* f, PyObject* a, PyObject* b, PyObject* c)
    int64_t fastbind_ticks() nogil
    double fastbind_tick_rate() nogil
    int64_t fastbind_ticks_to_ns(int64_t ticks, double rate) nogil
    void fastbind_ticks_init(int allow_tsc)
    int fastbind_ledger_block(Py_ssize_t index, Py_ssize_t* offset) nogil
    int fastbind_throw(PyObject* coro, PyObject* exc, PyObject** result)
    int fastbind_send(PyObject* iter, PyObject* arg, PyObject** result)
    object fastbind_pool_new(int which)
    int fastbind_install_vectorcall(object type, Py_ssize_t offset) except -1
    object fastbind_context_value(PyObject* var, PyTypeObject* type)
    ctypedef void (*fastbind_cleanup_t)(PyObject*) noexcept
    int fastbind_install_cleanup(object type, fastbind_cleanup_t cleanup) except -1

cdef extern from "pthread.h" nogil:
    ctypedef unsigned long pthread_t
    pthread_t pthread_self()
    int pthread_getcpuclockid(pthread_t thread, int* clock_id)

cdef extern from "Python.h":
    unsigned long PyThread_get_thread_ident()
    int PyThreadState_SetAsyncExc(unsigned long id, PyObject* exc)
    int PyIter_Send(object iter, object arg, PyObject** presult) except? -1
    object PyBaseObject_Type_new "PyBaseObject_Type.tp_new" (PyTypeObject* type, object args, PyObject* kw)
    object PyObject_GenericGetDict(object obj, void* context)
    object PyObject_GenericGetAttr(object obj, object name)
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    bint PyCoro_CheckExact(object obj)
    PyObject* PyList_GET_ITEM(object l, Py_ssize_t i)
    object PyObject_Vectorcall(object callable, PyObject** args, size_t nargsf, PyObject* kwnames)
    PyObject* PyTuple_GET_ITEM(object t, Py_ssize_t i)
    Py_ssize_t PyTuple_GET_SIZE(object t)
    Py_ssize_t PyVectorcall_NARGS(size_t nargsf)

IMPLEMENTATION = "c"

# Looked up once: the hot path never does a module-global dict lookup for these.
cdef object _SLOT = ContextVar("fastbind.execution_slot", default=None)
cdef object _RequestType = Request
cdef object _ResponseType = Response
cdef object _HeadersType = Headers
cdef object _CancelledError = asyncio.CancelledError
cdef object _isolate = isolate
cdef frozenset _RESERVED = RESERVED_METHODS
cdef str _KIND_RPC = "rpc"
cdef object _FunctionType = FunctionType  # (a lambda here would be a Cython function)
cdef object _Task = asyncio.Task
cdef object _copy_context = contextvars.copy_context
cdef object _EMPTY_PROPS = MappingProxyType({})
cdef tuple _NO_ARGS = ()
cdef enum: _STACK_ARGS = 7  # RPC calls with at most this many positional arguments skip the tuple
cdef Py_ssize_t _REQ_URL = fastbind_slot_offset(Request, "url")
cdef Py_ssize_t _REQ_METHOD = fastbind_slot_offset(Request, "method")
cdef Py_ssize_t _REQ_HEADERS = fastbind_slot_offset(Request, "headers")
cdef Py_ssize_t _REQ_BODY = fastbind_slot_offset(Request, "body")
cdef Py_ssize_t _REQ_BODY_USED = fastbind_slot_offset(Request, "body_used")
cdef Py_ssize_t _HDR_ITEMS = fastbind_slot_offset(Headers, "_items")
cdef Py_ssize_t _HDR_SHARED = fastbind_slot_offset(Headers, "_shared")
cdef Py_ssize_t _HDR_RAW = fastbind_slot_offset(Headers, "_raw")
# Pools of Request and Headers blocks (see _core_capi.h): a binding call copies both.
cdef bint _POOLED_REQUEST = fastbind_pool_install(0, Request, tuple(Request.__slots__))
cdef bint _POOLED_HEADERS = fastbind_pool_install(1, Headers, tuple(Headers.__slots__))
cdef str _FETCH_NAME = "fetch"
cdef Py_ssize_t _EP_ENV = fastbind_slot_offset(WorkerEntrypoint, "env")
cdef Py_ssize_t _EP_CTX = fastbind_slot_offset(WorkerEntrypoint, "ctx")
cdef object _EP_ENV_SLOT = WorkerEntrypoint.__dict__["env"]
cdef object _EP_CTX_SLOT = WorkerEntrypoint.__dict__["ctx"]
cdef str _KIND_REQUEST = "request"
cdef str _KIND_BINDING = "binding"
cdef str _KIND_FETCH = "fetch"
cdef str _OK = "ok"
cdef str _ERROR = "error"
cdef str _CANCELED = "canceled"

# Ledger entries keep kinds and outcomes as one-byte codes into this table (an entry is
# 40 bytes, not 64: a pipeline of many subrequests writes that much less memory). Code 0
# is "running"; the table only grows, with the few labels the code base uses.
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


cdef inline uint8_t _label_code_or_error(str outcome) noexcept:
    if outcome is _OK:
        return 4
    if outcome is _ERROR:
        return 5
    if outcome is _CANCELED:
        return 6
    return _other_outcome_code(outcome)


cdef uint8_t _other_outcome_code(str outcome) noexcept:
    # Out of line: a try block inlined into _finish_entry would keep it from being
    # inlined into the end of every binding call.
    try:
        return _label_code(outcome)
    except BaseException:
        return 5

# Counters that must return to zero once every pipeline has ended (DESIGN.md 2.7).
cdef Py_ssize_t _live_pipelines = 0
cdef Py_ssize_t _live_invocations = 0
cdef Py_ssize_t _live_tasks = 0


cdef inline int64_t _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


# The ledger's clock (see _core_capi.h); FASTBIND_CLOCK=monotonic keeps clock_gettime.
fastbind_ticks_init(os.environ.get("FASTBIND_CLOCK", "") != "monotonic")


cdef inline ExecutionSlot _current_slot():
    return <ExecutionSlot>fastbind_context_value(<PyObject*>_SLOT, <PyTypeObject*>ExecutionSlot)


cdef inline InvocationContext _current():
    cdef ExecutionSlot slot = _current_slot()
    return None if slot is None else slot.current


# --- CPU metering (issue 8) ------------------------------------------------------
# A *slice* is one step of a task that runs a pipeline's code: a step of the
# dispatching task inside the top-level call, or a step of a task the pipeline's
# Workers spawned. The pipeline's total is read from the thread CPU clock at the two
# edges of each slice (a system call, so once per step, never per binding call);
# inside a slice, binding calls split it between invocations with the cheap monotonic
# clock. None of this runs for pipelines without ``cpu_ms`` or ``measure_cpu``.
cdef PipelineContext _slice_pipeline = None
cdef int64_t _slice_cpu_start = 0
cdef unsigned long long _slice_id = 0
cdef unsigned long long _interrupted_slice = 0
cdef unsigned long _slice_thread = 0
cdef int _slice_clock = CLOCK_THREAD_CPUTIME_ID
cdef object _cpu_limit_exceeded = CpuLimitExceeded


cdef inline int64_t _clock(int clock) noexcept nogil:
    cdef timespec ts
    clock_gettime(clock, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef int _slice_open(PipelineContext pipeline) noexcept:
    """Start metering a slice of ``pipeline``; 1 if this step opened it, 0 if nested."""
    global _slice_pipeline, _slice_cpu_start, _slice_id, _slice_thread, _slice_clock
    if _slice_pipeline is not None:
        return 0
    cdef int clock_id
    _slice_pipeline = pipeline
    _slice_id += 1
    _slice_thread = PyThread_get_thread_ident()
    if pthread_getcpuclockid(pthread_self(), &clock_id) == 0:
        _slice_clock = clock_id  # readable from the watchdog thread too
    _slice_cpu_start = _clock(CLOCK_THREAD_CPUTIME_ID)
    return 1


cdef void _slice_close(PipelineContext pipeline) noexcept:
    global _slice_pipeline, _interrupted_slice
    pipeline.cpu_ns += _clock(CLOCK_THREAD_CPUTIME_ID) - _slice_cpu_start
    if pipeline.cpu_limit_ns >= 0 and pipeline.cpu_ns > pipeline.cpu_limit_ns:
        pipeline.cpu_exceeded = True
    if _interrupted_slice == _slice_id:
        # The watchdog asked to interrupt this slice; if the exception has not been
        # raised yet (the slice ended first), withdraw it so no other code gets it.
        PyThreadState_SetAsyncExc(_slice_thread, NULL)
        _interrupted_slice = 0
    _slice_pipeline = None


cdef inline int _meter_enter(ExecutionSlot slot, InvocationContext leaving, PipelineContext pipeline) noexcept:
    cdef int opened = _slice_open(pipeline)
    cdef int64_t now = _now()
    if leaving is not None and not opened:
        leaving.cpu_ns += now - slot.segment_start
    slot.segment_start = now
    return opened


cdef inline void _meter_exit(ExecutionSlot slot, InvocationContext leaving, PipelineContext pipeline, int opened) noexcept:
    cdef int64_t now = _now()
    if leaving is not None:
        leaving.cpu_ns += now - slot.segment_start
    slot.segment_start = now
    if opened:
        _slice_close(pipeline)


def watchdog_tick():
    """Interrupt the running slice if its pipeline is past ``cpu_ms``.

    Called by the watchdog thread, holding the GIL: the main thread is then stopped
    between two bytecodes, so the slice it reads is the one that will get the
    exception. Returns True when it interrupted.
    """
    global _interrupted_slice
    cdef PipelineContext pipeline = _slice_pipeline
    if pipeline is None or pipeline.cpu_limit_ns < 0 or _interrupted_slice == _slice_id:
        return False
    cdef int64_t used = pipeline.cpu_ns + _clock(_slice_clock) - _slice_cpu_start
    if used <= pipeline.cpu_limit_ns:
        return False
    pipeline.cpu_exceeded = True
    _interrupted_slice = _slice_id
    PyThreadState_SetAsyncExc(_slice_thread, <PyObject*>_cpu_limit_exceeded)
    return True


def live_counts():
    """Open pipelines, running invocations and tracked tasks, process-wide."""
    return {"pipelines": _live_pipelines, "invocations": _live_invocations, "tasks": _live_tasks}


def current_invocation():
    """The invocation whose code is running now, or None outside any Worker."""
    return _current()


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
    of setting the contextvar, which would cost a new context mapping per call
    (DESIGN.md 2.8). Python code can read ``current`` but not change it (2.9).
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

    @staticmethod
    def for_target(str name not None, env):
        """A handle for an in-process target that is not a Worker (e.g. a Durable Object)."""
        cdef WorkerHandle handle = WorkerHandle.__new__(WorkerHandle)
        handle.name = name
        handle.env = env
        handle._rpc = {}
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
            "caller": self.caller, "target": self.target, "kind": self.kind,
            "depth": self.depth, "start_ns": self.start_ns,
            "duration_ns": self.duration_ns, "outcome": self.outcome,
            "cpu_ns": self.cpu_ns,
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

    def finish(self, str outcome not None):
        """Close the entry with ``outcome`` ("ok", "error", "canceled"); later calls do nothing."""
        self.pipeline._finish_entry(self.index, outcome, -1)


cdef inline object _borrowed_or_none(PyObject* p):
    return None if p == NULL else <object>p


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
        # _tasks and _waiting stay None until a Worker spawns a task: most pipelines
        # never do, and two empty sets are 432 bytes of every in-flight request.
        self.running = 0
        self.closed = False
        self.root = None
        self.start_ticks = fastbind_ticks()
        self.duration_ticks = -1
        cpu_ms = limits.cpu_ms
        # int64 nanoseconds hold 292 years: a larger budget is the same as that.
        self.cpu_limit_ns = -1 if cpu_ms is None else <int64_t>min(cpu_ms * 1e6, 9.2e18)
        self.cpu_enabled = cpu_ms is not None or limits.measure_cpu
        self.cpu_ns = 0
        _live_pipelines += 1

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
    cdef inline Py_ssize_t _add_entry(self, str caller, str target, str kind, long depth) except -1:
        cdef Py_ssize_t offset
        cdef int k = fastbind_ledger_block(self._count, &offset)
        cdef LedgerEntry** blocks
        cdef LedgerEntry* block
        if k == self._n_blocks:  # the last block is full (offset is 0): one more
            blocks = <LedgerEntry**>PyMem_Realloc(self._blocks, (k + 1) * sizeof(LedgerEntry*))
            if blocks == NULL:
                raise MemoryError()
            self._blocks = blocks
            block = <LedgerEntry*>PyMem_Malloc((<Py_ssize_t>8 << k) * sizeof(LedgerEntry))
            if block == NULL:
                raise MemoryError()
            blocks[k] = block
            self._n_blocks = k + 1
        cdef LedgerEntry* e = &self._blocks[k][offset]
        Py_INCREF(caller)
        e.caller = <PyObject*>caller
        Py_INCREF(target)
        e.target = <PyObject*>target
        e.kind = _label_code(kind)
        e.depth = <int32_t>depth
        e.start_ticks = fastbind_ticks()
        e.duration_ticks = -1
        e.outcome = 0
        self._count += 1
        return self._count - 1

    cdef inline void _finish_entry(self, Py_ssize_t index, str outcome, int64_t cpu_ns) noexcept:
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
            e.outcome = _label_code_or_error(outcome)
            if self.cpu_enabled:  # metered pipelines only: most entries carry no CPU figure
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
        cdef list records = []
        cdef SubrequestRecord rec
        cdef LedgerEntry* e
        cdef Py_ssize_t i
        cdef double rate = fastbind_tick_rate()
        for i in range(self._count):
            e = _ledger_entry(self, i)
            rec = SubrequestRecord.__new__(SubrequestRecord)
            rec.caller = <str>e.caller
            rec.target = <str>e.target
            rec.kind = <str>PyList_GET_ITEM(_LABELS, e.kind)
            rec.depth = e.depth
            rec.start_ns = fastbind_ticks_to_ns(e.start_ticks, rate)
            rec.duration_ns = -1 if e.duration_ticks < 0 else <int64_t>(e.duration_ticks * rate)
            rec.outcome = None if e.outcome == 0 else <str>PyList_GET_ITEM(_LABELS, e.outcome)
            rec.cpu_ns = -1 if self._entry_cpu is None else self._entry_cpu.get(i, -1)
            records.append(rec)
        return tuple(records)
    def root_call(self, WorkerHandle handle not None, request):
        """The awaitable that runs the top-level Worker at depth 1."""
        if self.root is not None or self.closed:
            raise FastbindError("This pipeline already has its top-level invocation")
        cdef InvocationContext inv = _new_invocation(self, None, handle, 1, _EMPTY_PROPS, -1)
        self.root = inv
        return _new_call(inv, request, True)

    def adopt(self, task):
        """Account a task spawned by one of this pipeline's Workers."""
        global _live_tasks
        if self.closed:
            return
        if self._tasks is None:
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
        if self._tasks is None:
            return True
        for task in self._tasks:
            if not task.done():
                return False
        for task in self._waiting:
            if not task.done():
                return False
        return True

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
        """Mark the pipeline ended; it adopts nothing more.

        ``root`` is let go: the root invocation refers to its pipeline, and the pair
        would otherwise live on as a cycle until the garbage collector ran.
        """
        global _live_pipelines
        if not self.closed:
            self.closed = True
            self.root = None
            _live_pipelines -= 1

    def charge_fetch(self, InvocationContext caller not None, str target not None):
        """Count one outbound fetch (or redirect) of ``caller``; returns its ledger record."""
        caller._charge()
        cdef OpenSubrequest sub = OpenSubrequest.__new__(OpenSubrequest)
        sub.pipeline = self
        sub.index = self._add_entry(caller.handle.name, target, _KIND_FETCH, caller.depth)
        return sub


cdef void _free_ledger(PipelineContext pipeline) noexcept:
    """PipelineContext's clean-up before its dealloc (fastbind_install_cleanup): the
    ledger's names and blocks. An unclosed pipeline that is collected stays counted: a
    leak shows in live_counts() (the twin behaves the same)."""
    if pipeline._blocks == NULL:  # no subrequest: nothing was allocated
        return
    cdef Py_ssize_t i
    cdef LedgerEntry* e
    for i in range(pipeline._count):
        e = _ledger_entry(pipeline, i)
        Py_XDECREF(e.caller)  # str: freeing one runs no Python code
        Py_XDECREF(e.target)
    for i in range(pipeline._n_blocks):
        PyMem_Free(pipeline._blocks[i])
    PyMem_Free(pipeline._blocks)
    pipeline._blocks = NULL
    pipeline._n_blocks = 0
    pipeline._count = 0


fastbind_install_cleanup(PipelineContext, <fastbind_cleanup_t>_free_ledger)


cdef object _iterator_step(int status, PyObject* result):
    """The iterator protocol's form of an am_send result (which it takes over)."""
    out = <object>result
    Py_XDECREF(result)
    if status == 1:
        return out
    raise StopIteration(out)


cdef inline LedgerEntry* _ledger_entry(PipelineContext pipeline, Py_ssize_t index) noexcept:
    cdef Py_ssize_t offset
    cdef int k = fastbind_ledger_block(index, &offset)
    return &pipeline._blocks[k][offset]


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
    def env(self):
        """This invocation's env, readable only by its own code (not by a child via ``parent``)."""
        if _current() is not self:
            raise AttributeError("An invocation's env is readable only by its own code")
        return self.handle.env

    @property
    def passes_through_on_exception(self):
        return self.pass_through

    cdef int _charge(self) except -1:
        if self.subrequests >= self.pipeline.max_subrequests:
            raise TooManySubrequestsError()
        self.subrequests += 1
        return 0

    cdef InvocationContext _child(self, WorkerHandle handle, str kind, object props):
        cdef PipelineContext pipeline = self.pipeline
        if self.depth >= pipeline.max_depth:
            raise SubrequestDepthError()
        self._charge()
        cdef Py_ssize_t index = pipeline._add_entry(self.handle.name, handle.name, kind, self.depth + 1)
        return _new_invocation(pipeline, self, handle, self.depth + 1, props, index)

    cdef inline void _finish(self, str outcome) noexcept:
        self.pipeline._finish_entry(self.ledger_index, outcome, self.cpu_ns)

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


@cython.final
cdef class Fetcher:
    """A service binding: ``env.X``. ``fetch`` runs the bound Worker in place.

    Any other public name is an RPC method of the bound WorkerEntrypoint
    (``await env.USERS.get_user(42)``); its stub is cached in the instance dict so
    later look-ups are plain attribute loads.
    """

    def __init__(self, WorkerHandle target not None, str binding not None, props=None):
        self._target = target
        self._binding = binding
        self._props = _EMPTY_PROPS if not props else MappingProxyType(dict(props))
        cdef FetchMethod fetch = FetchMethod.__new__(FetchMethod)
        fetch._fetcher = self
        self._fetch = fetch
        self._members = {_FETCH_NAME: fetch}

    def __getattribute__(self, str name):
        # ``fetch`` (bound once) is found by identity (names in code are interned),
        # RPC stubs by one C dict look-up.
        if <PyObject*>name == <PyObject*>_FETCH_NAME:
            return self._fetch
        cdef PyObject* member = PyDict_GetItemWithError(self._members, name)
        if member != NULL:
            return <object>member
        if name.startswith("__") and name.endswith("__"):
            return PyObject_GenericGetAttr(self, name)
        cdef RpcMethod method = RpcMethod.__new__(RpcMethod)
        method._fetcher = self
        method._name = name
        # Decided once per binding and name: the class's methods do not change per call.
        if name in _RESERVED or name.startswith("_"):
            method._error = reserved_message(name)
        elif not self._target.has_rpc_method(name):
            method._error = unknown_message(name)
        else:
            method._function = self._target.rpc_function(name)
            # Only real methods are cached: names can come from clients, and a cache
            # of every name ever asked would grow without bound.
            self._members[name] = method
        return method

    def fetch(self, input, *, method=None, headers=None, body=None):
        """Run the bound Worker's fetch handler with a Request built as fetch() would."""
        if method is None and headers is None and body is None:
            return self._fetch_request(input)
        cdef InvocationContext caller = self._caller()
        request = _RequestType(input, method=method, headers=headers, body=body)
        inv = caller._child(self._target, _KIND_BINDING, self._props)
        return _new_call(inv, request, True)

    cdef BindingCall _fetch_request(self, object input):
        """``fetch(input)``: a Request is forwarded (zero copy), anything else built."""
        cdef InvocationContext caller = self._caller()
        if type(input) is _RequestType:
            request = fastbind_forward(input)  # the child's copy (_core_capi.h)
        else:
            request = _request_for_url(input)
            if request is None:
                request = _RequestType(input)
        inv = caller._child(self._target, _KIND_BINDING, self._props)
        return _new_call(inv, request, True)

    cdef InvocationContext _caller(self):
        cdef InvocationContext caller = _current()
        if caller is None:
            raise FastbindError(
                f"env.{self._binding}.fetch() was called outside a fastbind invocation"
            )
        return caller

    def __repr__(self):
        return f"<Fetcher {self._binding} -> {self._target.name}>"


@cython.final
cdef class FetchMethod:
    """``env.X.fetch``: Fetcher.fetch of one binding, with a C entry point for the
    common call, ``fetch(request)``, that skips keyword-argument parsing."""

    def __cinit__(self):
        self._vectorcall = <void*>_fetch_vectorcall

    def __init__(self):
        raise TypeError("FetchMethod is created by a Fetcher only")

    def __call__(self, input, *, method=None, headers=None, body=None):
        # Calls from Python take _fetch_vectorcall; this serves PyObject_Call.
        return self._fetcher.fetch(input, method=method, headers=headers, body=body)

    @property
    def __self__(self):
        return self._fetcher

    def __repr__(self):
        return f"<bound method fetch of {self._fetcher!r}>"


cdef object _fetch_vectorcall(object callable, PyObject** args, size_t nargsf, PyObject* kwnames):
    cdef FetchMethod self = <FetchMethod>callable
    if PyVectorcall_NARGS(nargsf) == 1 and (kwnames == NULL or PyTuple_GET_SIZE(<object>kwnames) == 0):
        return self._fetcher._fetch_request(<object>args[0])
    # Keywords (or a wrong number of arguments): Fetcher.fetch parses and checks them.
    return PyObject_Vectorcall(PyObject_GenericGetAttr(self._fetcher, _FETCH_NAME), args, nargsf, kwnames)


cdef int _install_fetch_vectorcall() except -1:
    cdef FetchMethod probe = FetchMethod.__new__(FetchMethod)
    return fastbind_install_vectorcall(
        FetchMethod, <char*>&probe._vectorcall - <char*><PyObject*>probe)


_install_fetch_vectorcall()


cdef inline object _isolated(object value):
    # Fast path for the values RPC passes most: immutable scalars need no copy.
    cdef type kind = type(value)
    if kind is int or kind is str or value is None or kind is bool or kind is float or kind is bytes:
        return value
    return _isolate(value)


@cython.final
cdef class RpcMethod:
    """``env.X.name``: calling it runs method ``name`` of the bound Worker in place."""

    def __cinit__(self):
        self._vectorcall = <void*>_rpc_vectorcall

    def __init__(self):
        raise TypeError("RpcMethod is created by a Fetcher only")

    def __call__(self, *args, **kwargs):
        # Calls from Python take _rpc_vectorcall; this serves PyObject_Call.
        cdef InvocationContext caller = self._caller()
        cdef Py_ssize_t i, n = len(args)
        cdef tuple isolated = PyTuple_New(n)
        for i in range(n):
            value = _isolated(args[i])
            Py_INCREF(value)
            PyTuple_SET_ITEM(isolated, i, value)
        return self._start(caller, isolated, {k: _isolated(v) for k, v in kwargs.items()} if kwargs else None)

    cdef InvocationContext _caller(self):
        """The running invocation, once the name is known to be callable."""
        if self._error is not None:
            raise TypeError(self._error)
        cdef InvocationContext caller = _current()
        if caller is None:
            raise FastbindError(
                f"env.{self._fetcher._binding}.{self._name}() was called outside a fastbind invocation"
            )
        return caller

    cdef BindingCall _start(self, InvocationContext caller, tuple args, dict kwargs):
        """The child invocation (depth, subrequest, ledger) and the awaitable that runs it."""
        inv = caller._child(self._fetcher._target, _KIND_RPC, self._fetcher._props)
        cdef RpcCall call = _new_rpc_call(inv, False)
        call.rpc_name = self._name
        call.rpc_function = self._function
        call.rpc_args = args
        call.rpc_kwargs = kwargs
        return call

    def __repr__(self):
        return f"<RpcMethod {self._fetcher._binding}.{self._name}>"


cdef object _rpc_vectorcall(object callable, PyObject** args, size_t nargsf, PyObject* kwnames):
    """``env.X.name(...)`` from Python: the arguments come as a C array, isolated into one tuple."""
    cdef RpcMethod self = <RpcMethod>callable
    cdef InvocationContext caller = self._caller()
    cdef Py_ssize_t i, n = PyVectorcall_NARGS(nargsf)
    cdef RpcCall call
    if n <= 2 and (kwnames == NULL or PyTuple_GET_SIZE(<object>kwnames) == 0):
        # The usual call: one or two arguments, kept in the call itself.
        arg0 = None if n == 0 else _isolated(<object>args[0])
        arg1 = None if n < 2 else _isolated(<object>args[1])
        call = <RpcCall>self._start(caller, None, None)
        call.rpc_nargs = n
        call.rpc_arg0 = arg0
        call.rpc_arg1 = arg1
        return call
    cdef tuple isolated = PyTuple_New(n)
    for i in range(n):
        value = _isolated(<object>args[i])
        Py_INCREF(value)
        PyTuple_SET_ITEM(isolated, i, value)
    cdef dict kwargs = None
    cdef tuple names
    if kwnames != NULL:
        names = <tuple>kwnames
        if names:
            kwargs = {names[i]: _isolated(<object>args[n + i]) for i in range(len(names))}
    return self._start(caller, isolated, kwargs)


cdef int _install_rpc_vectorcall() except -1:
    cdef RpcMethod probe = RpcMethod.__new__(RpcMethod)
    return fastbind_install_vectorcall(
        RpcMethod, <char*>&probe._vectorcall - <char*><PyObject*>probe)


_install_rpc_vectorcall()


def call_child(WorkerHandle target not None, str kind not None, function, tuple args=(),
               props=None, bint http=False):
    """Run ``function(ctx, *args)`` as a child invocation of the running one.

    The child gets depth + 1, counts as one subrequest of ``kind`` of the caller, is
    recorded in the ledger and follows the lifecycle rules, exactly as a binding call;
    ``http`` requires a Response result, otherwise the result is isolated as RPC values.
    """
    cdef InvocationContext caller = _current()
    if caller is None:
        raise FastbindError(f'A call to "{target.name}" was made outside a fastbind invocation')
    inv = caller._child(target, kind, _EMPTY_PROPS if not props else MappingProxyType(dict(props)))
    cdef RpcCall call = _new_rpc_call(inv, http)
    call.rpc_name = kind
    call.rpc_function = function
    call.rpc_args = args
    call.custom = True
    return call


cdef int _init_forward() except -1:
    """Tell fastbind_forward (_core_capi.h), the child's copy of a Request on a binding
    call, where Request and Headers keep their fields."""
    fastbind_req.url = _REQ_URL
    fastbind_req.method = _REQ_METHOD
    fastbind_req.headers = _REQ_HEADERS
    fastbind_req.body = _REQ_BODY
    fastbind_req.body_used = _REQ_BODY_USED
    fastbind_req.items = _HDR_ITEMS
    fastbind_req.shared = _HDR_SHARED
    fastbind_req.raw = _HDR_RAW
    fastbind_req.headers_type = <PyTypeObject*>_HeadersType
    fastbind_req.pooled_request = _POOLED_REQUEST
    fastbind_req.pooled_headers = _POOLED_HEADERS
    Py_INCREF(BODY_USED_MESSAGE)  # kept for the process's life
    fastbind_req.body_used_message = <PyObject*>BODY_USED_MESSAGE
    Py_INCREF(forward_request)
    fastbind_req.forward_request = <PyObject*>forward_request
    return 0


_init_forward()


cdef inline BindingCall _new_call(InvocationContext inv, object request, bint http):
    cdef BindingCall call = BindingCall.__new__(BindingCall)
    call.inv = inv
    call.request = request
    call.http = http
    return call


cdef RpcCall _new_rpc_call(InvocationContext inv, bint http):
    cdef RpcCall call = RpcCall.__new__(RpcCall)
    call.inv = inv
    call.http = http
    call.rpc = True
    return call


@cython.freelist(64)
cdef class BindingCall:
    """The awaitable a binding returns: runs the child in the caller's task.

    It drives the child coroutine itself (no task, no extra frame) and names the
    child in the task's ExecutionSlot around each step. TopLevelCall extends it (a
    top-level request drives its root invocation the same way); its C methods are
    final, so calls to them stay direct.
    """

    def __init__(self):
        raise TypeError("BindingCall is created by a Fetcher only")

    @property
    def invocation(self):
        return self.inv

    def __await__(self):
        return self

    @cython.final
    cdef int _enter(self) except -1:
        global _live_invocations
        cdef InvocationContext inv = self.inv
        if self.started:
            raise RuntimeError("A binding call can be awaited only once")
        self.started = True
        cdef ExecutionSlot slot = _current_slot()
        if slot is None:
            if not self.borrowed:
                inv._finish(_ERROR)
                raise FastbindError("A binding call was awaited outside a fastbind invocation")
            # run() from a task that never dispatched (e.g. a server's body writer).
            slot = ExecutionSlot.__new__(ExecutionSlot)
            self.slot_token = PyContextVar_Set(_SLOT, slot)
        self.slot = slot
        inv.pipeline.running += 1
        _live_invocations += 1
        request = self.request
        self.request = None
        previous = slot.current
        slot.current = inv
        cdef WorkerHandle handle = inv.handle
        cdef PyObject* coro
        if self.http and not self.rpc and not handle.is_class:
            # The common case, a function handler, without a try block: entering one
            # saves the exception state, a walk of the exc_info of every frame up.
            coro = fastbind_call3(<PyObject*>handle.handler, <PyObject*>request,
                                  <PyObject*>handle.env, <PyObject*>inv)
            slot.current = previous
            if coro == NULL:
                self._fail(_ERROR)
                return -1
            self.coro = <object>coro
            Py_XDECREF(coro)
            return 0
        try:
            if self.borrowed:
                self.coro = request if PyCoro_CheckExact(request) else request.__await__()
            elif not self.rpc:
                self.coro = inv.handle.invoke(request, inv)
            else:
                (<RpcCall>self)._call_method(inv)
        except BaseException:
            slot.current = previous
            self._exit(_ERROR)
            raise
        slot.current = previous
        return 0

    @cython.final
    cdef void _exit(self, str outcome) noexcept:
        global _live_invocations
        cdef InvocationContext inv = self.inv
        inv.pipeline.running -= 1
        _live_invocations -= 1
        self.coro = None
        self.slot = None
        if not self.borrowed:
            inv._finish(outcome)
        elif self.slot_token is not None:
            token = self.slot_token
            self.slot_token = None
            try:
                PyContextVar_Reset(_SLOT, token)
            except BaseException:  # finished from another context (e.g. closed by the GC)
                pass

    @cython.final
    cdef object _check_result(self, object value):
        if self.borrowed:
            self._exit(_OK)
            return value
        if self.http:
            if type(value) is not _ResponseType and not isinstance(value, _ResponseType):
                self._exit(_ERROR)
                raise TypeError(
                    f'Worker "{self.inv.handle.name}" fetch handler returned '
                    f"{type(value).__name__}, expected a Response"
                )
        else:
            try:
                value = _isolated(value)
            except BaseException:
                self._exit(_ERROR)
                raise
        self._exit(_OK)
        return value

    @cython.final
    cdef int _send(self, object arg, object exc, PyObject** result) except? -1:
        if not self.started:
            if exc is not None:  # cancelled before it ever ran: the child never starts
                self.started = True
                self.request = None
                if not self.borrowed:
                    self.inv._finish(_CANCELED)
                raise exc
            self._enter()
            arg = None
            if self.has_immediate:  # a synchronous RPC method has already returned
                value = self._check_result((<RpcCall>self).immediate)
                (<RpcCall>self).immediate = None
                Py_INCREF(value)
                result[0] = <PyObject*>value
                return 0
        elif self.coro is None:
            raise RuntimeError("cannot reuse already awaited binding call")
        cdef ExecutionSlot slot = self.slot
        cdef InvocationContext inv = self.inv
        cdef PipelineContext pipeline = inv.pipeline
        cdef InvocationContext previous = slot.current
        cdef int status
        cdef int metered = -1  # -1: not metered; else 1 when this step opened the slice
        if pipeline.cpu_enabled:
            metered = _meter_enter(slot, previous, pipeline)
            if metered == 1 and pipeline.cpu_exceeded and exc is None:
                exc = _cpu_limit_exceeded()  # stop the pipeline at its next step
        slot.current = inv
        # C calls, no try block (see _enter): -1 is PYGEN_ERROR, the exception is set.
        if exc is None:
            status = fastbind_send(<PyObject*>self.coro, <PyObject*>arg, result)
        else:
            status = fastbind_throw(<PyObject*>self.coro, <PyObject*>exc, result)
        if status < 0:
            self._fail_step(previous, metered)
            return -1
        self._leave(previous, metered)
        if status == 1:  # PYGEN_NEXT: the child yielded a future to the loop
            return 1
        value = <object>result[0]
        Py_XDECREF(result[0])
        result[0] = NULL
        value = self._check_result(value)
        Py_INCREF(value)
        result[0] = <PyObject*>value
        return 0

    @cython.final
    cdef void _fail(self, str outcome) noexcept:
        """``_exit(outcome)`` while an exception is being raised, which it keeps."""
        cdef PyObject* kind
        cdef PyObject* value
        cdef PyObject* tb
        PyErr_Fetch(&kind, &value, &tb)  # nothing the exit frees may run with it set
        self._exit(outcome)
        PyErr_Restore(kind, value, tb)

    @cython.final
    cdef void _fail_step(self, InvocationContext previous, int metered) noexcept:
        """A step of the child raised: leave it and end the call as canceled or error."""
        outcome = _CANCELED if PyErr_ExceptionMatches(_CancelledError) else _ERROR
        cdef PyObject* kind
        cdef PyObject* value
        cdef PyObject* tb
        PyErr_Fetch(&kind, &value, &tb)
        self._leave(previous, metered)
        self._exit(outcome)
        PyErr_Restore(kind, value, tb)

    @cython.final
    cdef inline void _leave(self, InvocationContext previous, int metered) noexcept:
        if metered >= 0:
            _meter_exit(self.slot, self.inv, self.inv.pipeline, metered)
        self.slot.current = previous

    def __next__(self):
        return self.send(None)

    def send(self, value):
        cdef PyObject* result = NULL
        return _iterator_step(self._send(value, None, &result), result)

    def throw(self, typ, val=None, tb=None):
        cdef PyObject* result = NULL
        return _iterator_step(self._send(None, typ if val is None else val, &result), result)

    def close(self):
        self._close()

    @cython.final
    cdef int _close(self) except -1:
        if self.coro is not None:
            try:
                self.coro.close()
            finally:
                self._exit(_CANCELED)
        elif not self.started:
            self.started = True
            self.inv._finish(_CANCELED)
            self.request = None
        return 0


@cython.final
cdef class RpcCall(BindingCall):
    """A BindingCall that runs an RPC method (or, for call_child, a function) of the
    child: the method and its arguments live here, not in every binding call."""

    def __init__(self):
        raise TypeError("RpcCall is created by an RpcMethod only")

    cdef int _call_method(self, InvocationContext inv) except -1:
        """Run RPC method ``rpc_name`` on a new instance: keep its awaitable, or its value if sync."""
        cdef PyObject* stack[_STACK_ARGS + 1]
        cdef Py_ssize_t i, n
        function = self.rpc_function
        if self.rpc_args is None and not self.custom and function is not None:
            # One or two arguments in the call itself: the method straight from them.
            instance = inv.handle.instantiate(inv)
            stack[0] = <PyObject*>instance
            stack[1] = <PyObject*>self.rpc_arg0
            stack[2] = <PyObject*>self.rpc_arg1
            self._keep_result(PyObject_Vectorcall(function, stack, self.rpc_nargs + 1, NULL))
            self.rpc_arg0 = None
            self.rpc_arg1 = None
            return 0
        cdef tuple args = self._rpc_arg_tuple()
        kwargs = self.rpc_kwargs
        self.rpc_args = None
        self.rpc_kwargs = None
        if self.custom:
            result = function(inv, *args, **kwargs) if kwargs else function(inv, *args)
            self._keep_result(result)
            return 0
        instance = inv.handle.instantiate(inv)
        n = PyTuple_GET_SIZE(args)
        if function is not None and kwargs is None and n <= _STACK_ARGS:
            # A plain function, called unbound with the instance first: no bound
            # method and no argument tuple (args and instance hold the references).
            stack[0] = <PyObject*>instance
            for i in range(n):
                stack[i + 1] = PyTuple_GET_ITEM(args, i)
            self._keep_result(PyObject_Vectorcall(function, stack, n + 1, NULL))
            return 0
        if function is not None:
            args = (instance,) + args
        else:  # staticmethod, classmethod, callable object: ask the instance
            function = getattr(instance, self.rpc_name)
        result = function(*args, **kwargs) if kwargs else function(*args)
        self._keep_result(result)
        return 0

    cdef tuple _rpc_arg_tuple(self):
        """The positional arguments as one tuple, wherever the call keeps them."""
        if self.rpc_args is not None:
            return self.rpc_args
        args = (self.rpc_arg0, self.rpc_arg1)[:self.rpc_nargs]
        self.rpc_arg0 = None
        self.rpc_arg1 = None
        return args

    cdef int _keep_result(self, object result) except -1:
        if PyCoro_CheckExact(result):
            self.coro = result
        elif hasattr(result, "__await__"):
            self.coro = result.__await__()
        else:
            self.immediate = result
            self.has_immediate = True
        return 0


cdef int _binding_call_send(object self, object arg, PyObject** result) except? -1:
    return (<BindingCall>self)._send(arg, None, result)


fastbind_install_am_send(BindingCall, <fastbind_send_fn>_binding_call_send)
fastbind_install_am_send(RpcCall, <fastbind_send_fn>_binding_call_send)  # its slots were copied from the base before


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
        cdef ExecutionSlot slot = self.slot
        cdef PipelineContext pipeline = self.pipeline
        cdef int opened = _meter_enter(slot, None, pipeline)
        if opened and pipeline.cpu_exceeded and exc is None:
            exc = _cpu_limit_exceeded()
        try:
            if exc is None:
                return self.coro.send(value)
            return self.coro.throw(exc)
        finally:
            _meter_exit(slot, slot.current, pipeline, opened)


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


# =================================================================================
# Top-level dispatch (issue 11): ``Runtime.dispatch`` and the raw embedding API.
#
# A DispatchPlan is made once per Runtime: its limits copied into C fields and the
# Runtime's Python pieces for the rare cases. ``plan.call(handle, request)`` returns a
# TopLevelCall, the awaitable of one top-level request: on its first step it opens the
# pipeline, then drives the root invocation in the awaiting task (as a BindingCall
# drives a child) and, in the common case (a Response with a plain body, no task of
# the pipeline left, no hang, no CPU limit), ends the pipeline in C. Any other ending
# (an exception, a streamed body, tasks to cancel, wait_until work, a hang verdict, a
# CPU limit) goes to ``Runtime._finish_dispatch``, a coroutine the call then drives.
# Hang detection watches a pipeline from its first suspension: one that never
# suspends cannot hang.
# =================================================================================

cdef extern from "_core_capi.h":
    int fastbind_install_top_am_send(object type, fastbind_send_fn impl) except -1
    int fastbind_freelist_install(object type, int which) except -1

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    object PyUnicode_DecodeLatin1(const char* s, Py_ssize_t size, const char* errors)
    object PyBytes_FromStringAndSize(const char* s, Py_ssize_t size)
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)

cdef extern from "Python.h":
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    PyObject* PyWeakref_GET_OBJECT(object ref)
    Py_ssize_t PySequence_Fast_GET_SIZE(object o)
    PyObject** PySequence_Fast_ITEMS(object o)
    PyTypeObject* Py_TYPE(PyObject* o)

cdef extern from "_core_capi.h":
    object fastbind_alloc(object type)
    void* fastbind_vectorcall_of(object func)
    object fastbind_call_one(void* call, object func, object arg)
    object fastbind_call_none(void* call, object func)

from libc.string cimport memcmp, memcpy
from cpython.list cimport PyList_AsTuple, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from libc.stdint cimport uint64_t

cdef extern from "_running_loop.h":
    PyObject* fastbind_running_loop()
    void fastbind_learn_holder(object loop)
    int fastbind_running_loop_init(PyObject* key) except -1
    PyTypeObject* fastbind_holder_type
    int fastbind_loop_in_dict

cdef object _get_running_loop = asyncio.get_running_loop
cdef void* _get_running_loop_call = fastbind_vectorcall_of(_get_running_loop)  # asked on 3.13+
cdef str _HOLDER_KEY = sys.intern("__asyncio_running_event_loop__")  # asyncio's own key object
fastbind_running_loop_init(<PyObject*>_HOLDER_KEY)


def _pid_after_fork():
    fastbind_running_loop_init(NULL)  # the child's holders have their parent's pid


os.register_at_fork(after_in_child=_pid_after_fork)


def _running_loop_is_read_directly():
    """Whether the running loop is read where asyncio keeps it (3.11 and 3.12, once checked)."""
    return fastbind_holder_type != NULL or fastbind_loop_in_dict != 0


cdef object _running_loop():
    """asyncio.get_running_loop(), read where asyncio keeps it (_running_loop.h)."""
    cdef PyObject* loop = fastbind_running_loop()
    if loop != NULL:
        return <object>loop
    found = fastbind_call_none(_get_running_loop_call, _get_running_loop)  # raises when none runs
    fastbind_learn_holder(found)
    return found

cdef object _WeakRef = weakref.ref
cdef Py_ssize_t _RESP_STATUS = fastbind_slot_offset(Response, "status")
cdef Py_ssize_t _RESP_HEADERS = fastbind_slot_offset(Response, "headers")
cdef Py_ssize_t _RESP_BODY = fastbind_slot_offset(Response, "body")
cdef Py_ssize_t _RESP_BODY_USED = fastbind_slot_offset(Response, "body_used")
cdef str _INSIDE_WORKER = (
    "Runtime.dispatch() cannot be called from inside a Worker: call other "
    "Workers through a service binding (env.X.fetch)"
)

# Set by fastbind.embed: its conversions, for anything off the fast path, and its
# method table (bytes keys only: b"GET" and "GET" hash alike, and comparing a bytes
# key with a str one is slow; a str method takes embed's path).
cdef object _raw_request_py = None
cdef object _raw_response_py = None
cdef dict _raw_methods = {}
# Common header names in a small open-addressing table keyed by length and the first
# and last letters (any case): a name found here is shared, not decoded (or encoded)
# again for every request.
cdef struct _KnownName:
    Py_ssize_t n                    # 0: an empty slot
    const unsigned char* chars      # the lower-case name (the bytes object's buffer)
    PyObject* text                  # str, kept alive by _known_keep
    PyObject* raw                   # bytes, kept alive by _known_keep

cdef enum:
    _KNOWN_SLOTS = 128              # a power of two, well above the number of names

cdef _KnownName _known[_KNOWN_SLOTS]
cdef list _known_keep = []


cdef inline unsigned char _fold(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef inline Py_ssize_t _known_slot(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    return (n * 7 + _fold(s[0]) * 3 + _fold(s[n - 1])) & (_KNOWN_SLOTS - 1)


def install_raw(raw_request, raw_response, dict methods not None, names=()):
    """Give the core fastbind.embed's conversions, method table and common header names."""
    global _raw_request_py, _raw_response_py, _raw_methods
    _raw_request_py = raw_request
    _raw_response_py = raw_response
    _raw_methods = {k: v for k, v in methods.items() if type(k) is bytes}
    cdef Py_ssize_t i, slot
    cdef bytes encoded
    for i in range(_KNOWN_SLOTS):
        _known[i].n = 0
    _known_keep.clear()
    for name in names:
        name = str(name).lower()
        encoded = name.encode("ascii")
        if not encoded or _known_name(encoded, len(encoded), True) is not None:
            continue
        if len(_known_keep) >= _KNOWN_SLOTS // 2:
            break
        _known_keep.append((name, encoded))
        slot = _known_slot(encoded, len(encoded))
        while _known[slot].n:
            slot = (slot + 1) & (_KNOWN_SLOTS - 1)
        _known[slot].n = len(encoded)
        _known[slot].chars = encoded
        _known[slot].text = <PyObject*>name
        _known[slot].raw = <PyObject*>encoded


cdef inline object _known_name(const unsigned char* src, Py_ssize_t n, bint want_str):
    """The shared str (or bytes) of common header name ``src`` (any case), or None."""
    if n <= 0:
        return None
    cdef Py_ssize_t slot = _known_slot(src, n), i
    cdef _KnownName* entry
    while True:
        entry = &_known[slot]
        if entry.n == 0:
            return None
        # Most names arrive lower-case (HTTP/2, and every name a Headers holds): one
        # memcmp, and the folding loop only when it differs.
        if entry.n == n and memcmp(src, entry.chars, n) == 0:
            return <object>(entry.text if want_str else entry.raw)
        if entry.n == n:
            for i in range(n):
                if _fold(src[i]) != entry.chars[i]:
                    break
            else:
                return <object>(entry.text if want_str else entry.raw)
        slot = (slot + 1) & (_KNOWN_SLOTS - 1)


cdef inline bint _quick_url(object url):
    """What embed._url accepts without a full parse: an ASCII http(s) URL with a host."""
    if type(url) is not str or not PyUnicode_IS_ASCII(url):
        return False
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(url), i, start
    cdef const unsigned char* s = <const unsigned char*>PyUnicode_DATA(url)
    if n > 8 and s[0] == c'h' and s[1] == c't' and s[2] == c't' and s[3] == c'p':
        if s[4] == c's' and s[5] == c':' and s[6] == c'/' and s[7] == c'/':
            start = 8
        elif s[4] == c':' and s[5] == c'/' and s[6] == c'/':
            start = 7
        else:
            return False
    else:
        return False
    if s[start] == c'/' or s[start] == c'?' or s[start] == c'#':
        return False
    # Any character below 0x21, or DEL? Eight at a time (n > 8), the last eight read
    # again from the end rather than one by one. Every byte is below 0x80, so adding
    # 0x5f or 1 to each carries into no other: the top bit of b + 0x5f is clear when
    # b < 0x21, that of b + 1 set when b is 0x7f.
    cdef uint64_t word, bad = 0, ones = 0x0101010101010101ULL
    i = 0
    while True:
        memcpy(&word, s + i, 8)
        bad |= ~(word + 0x5f * ones) | (word + ones)
        i += 8
        if i >= n:
            break
        if i > n - 8:
            i = n - 8
    return (bad & 0x8080808080808080ULL) == 0


cdef inline object _latin1(object raw, bint lower):
    """``raw.decode("latin-1")`` (and ``.lower()``), without a call for ASCII bytes."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), i
    cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef unsigned char c, top = 0
    if lower:
        known = _known_name(src, n, True)
        if known is not None:
            return known
    for i in range(n):
        top |= src[i]
    if top >= 0x80:
        text = PyUnicode_DecodeLatin1(<const char*>src, n, NULL)
        return text.lower() if lower else text
    out = PyUnicode_New(n, 127)
    cdef unsigned char* dst = <unsigned char*>PyUnicode_DATA(out)
    if lower:
        for i in range(n):
            c = src[i]
            dst[i] = c + 32 if 65 <= c <= 90 else c
    elif n:
        memcpy(dst, src, n)
    return out


cdef str _M_GET = "GET"
cdef str _M_PUT = "PUT"
cdef str _M_POST = "POST"
cdef str _M_HEAD = "HEAD"
cdef str _M_PATCH = "PATCH"
cdef str _M_DELETE = "DELETE"
cdef str _M_OPTIONS = "OPTIONS"


cdef inline object _raw_method(object method):
    """The method name of a bytes method token, or None when it is not a common one."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(method)
    cdef const char* m = PyBytes_AS_STRING(method)
    if n == 3:
        if memcmp(m, b"GET", 3) == 0:
            return _M_GET
        if memcmp(m, b"PUT", 3) == 0:
            return _M_PUT
    elif n == 4:
        if memcmp(m, b"POST", 4) == 0:
            return _M_POST
        if memcmp(m, b"HEAD", 4) == 0:
            return _M_HEAD
    elif n == 5 and memcmp(m, b"PATCH", 5) == 0:
        return _M_PATCH
    elif n == 6 and memcmp(m, b"DELETE", 6) == 0:
        return _M_DELETE
    elif n == 7 and memcmp(m, b"OPTIONS", 7) == 0:
        return _M_OPTIONS
    cdef PyObject* known = PyDict_GetItemWithError(_raw_methods, method)
    return None if known == NULL else <object>known


cdef object _fast_raw_request(object method, object url, object raw_headers, object body):
    """The Request for raw parts in the common shapes, or None to take embed's path."""
    if type(method) is not bytes:
        return None
    name = _raw_method(method)
    if name is None or not _quick_url(url):
        return None
    if body is None:
        pass
    elif type(body) is bytes:
        if PyBytes_GET_SIZE(body) == 0:
            body = None
    else:
        return None
    if type(raw_headers) is list:
        if not _bytes_pairs(raw_headers):
            return None
        if PyList_GET_SIZE(raw_headers) == 0:
            return _new_request(name, url, [], None, body)
        # Left raw until the Worker reads them (Headers decodes them then), as a tuple
        # (one block, from CPython's freelist): the caller may reuse its list, and
        # the pairs themselves are immutable.
        return _new_request(name, url, None, PyList_AsTuple(raw_headers), body)
    if type(raw_headers) is tuple:
        if not _bytes_pairs(raw_headers):
            return None
        if PyTuple_GET_SIZE(raw_headers) == 0:
            return _new_request(name, url, [], None, body)
        return _new_request(name, url, None, raw_headers, body)
    return None


cdef inline bint _bytes_pairs(object pairs):
    """Every item of list or tuple ``pairs`` is a (bytes, bytes) tuple."""
    cdef Py_ssize_t i, n = PySequence_Fast_GET_SIZE(pairs)
    cdef PyObject** items = PySequence_Fast_ITEMS(pairs)
    cdef PyObject* pair
    for i in range(n):
        pair = items[i]
        if (Py_TYPE(pair) != <PyTypeObject*>tuple or PyTuple_GET_SIZE(<object>pair) != 2
                or Py_TYPE(PyTuple_GET_ITEM(<object>pair, 0)) != <PyTypeObject*>bytes
                or Py_TYPE(PyTuple_GET_ITEM(<object>pair, 1)) != <PyTypeObject*>bytes):
            return False
    return True


def decode_raw_headers(headers):
    """fastbind.headers.decode_raw_headers in C: decode raw Headers now, return the items."""
    if type(headers) is not _HeadersType:
        raise TypeError(f"decode_raw_headers() needs a Headers, not {type(headers).__name__}")
    raw = fastbind_slot_get(headers, _HDR_RAW, "_raw")
    if (type(raw) is not list and type(raw) is not tuple) or not _bytes_pairs(raw):
        raise TypeError(f"raw headers must be (name, value) pairs of bytes, not {raw!r}")
    cdef Py_ssize_t i, n = PySequence_Fast_GET_SIZE(raw)
    cdef PyObject** pairs = PySequence_Fast_ITEMS(raw)
    cdef list items = PyList_New(n)
    for i in range(n):
        item = (_latin1(<object>PyTuple_GET_ITEM(<object>pairs[i], 0), True),
                _latin1(<object>PyTuple_GET_ITEM(<object>pairs[i], 1), False))
        Py_INCREF(item)  # PyList_SET_ITEM takes a reference
        PyList_SET_ITEM(items, i, item)
    fastbind_slot_set(headers, _HDR_ITEMS, items)
    fastbind_slot_set(headers, _HDR_RAW, None)
    fastbind_slot_set(headers, _HDR_SHARED, False)
    return items


use_raw_decoder(decode_raw_headers)


cdef object _request_for_url(object url):
    """``Request(url)`` for an http(s) URL that _quick_url accepts (all of which
    check_url accepts too), built here; None for anything else. ``fetch("https://...")``
    would otherwise spend most of a binding call in Request.__init__'s Python checks."""
    if not _quick_url(url):
        return None
    return _new_request(_M_GET, url, [], None, None)


cdef inline object _new_request(str method, str url, list items, object raw, object body):
    """A Request of checked parts, both from the pools, with its own Headers of
    ``items``, or of ``raw`` pairs when ``items`` is None."""
    headers = fastbind_pool_new(1) if _POOLED_HEADERS else fastbind_alloc(_HeadersType)
    fastbind_slot_set(headers, _HDR_ITEMS, items)
    fastbind_slot_set(headers, _HDR_SHARED, False)
    if items is None:
        fastbind_slot_set(headers, _HDR_RAW, raw)
    request = fastbind_pool_new(0) if _POOLED_REQUEST else fastbind_alloc(_RequestType)
    fastbind_slot_set(request, _REQ_METHOD, method)
    fastbind_slot_set(request, _REQ_URL, url)
    fastbind_slot_set(request, _REQ_HEADERS, headers)
    fastbind_slot_set(request, _REQ_BODY, body)
    fastbind_slot_set(request, _REQ_BODY_USED, False)
    return request


# A header a Worker answers with again and again (a content-type written as a literal
# in its code) is the same two str objects every time: their (bytes, bytes) pair is
# kept and handed out again, as tuples of bytes are immutable. Keyed by the two
# objects' identity (the slot holds them, so an address is not reused while there);
# short values only, in a direct-mapped table, so a value that changes with every
# response (a length, a date) only replaces its slot.
cdef enum:
    _PAIR_SLOTS = 64
    _PAIR_MAX_VALUE = 64

cdef struct _PairSlot:
    PyObject* name      # str, owned
    PyObject* value     # str, owned
    PyObject* pair      # (bytes, bytes), owned

cdef _PairSlot _pairs[_PAIR_SLOTS]


cdef inline object _raw_pair(object name, object value):
    """``(name, value)`` (ASCII str) as bytes: the kept pair when there is one."""
    cdef _PairSlot* slot = &_pairs[((<size_t><PyObject*>name >> 4) ^ (<size_t><PyObject*>value >> 4))
                                   & (_PAIR_SLOTS - 1)]
    if slot.name == <PyObject*>name and slot.value == <PyObject*>value:
        return <object>slot.pair
    raw_name = _known_name(<const unsigned char*>PyUnicode_DATA(name), PyUnicode_GET_LENGTH(name), False)
    if raw_name is None:
        raw_name = PyBytes_FromStringAndSize(<const char*>PyUnicode_DATA(name), PyUnicode_GET_LENGTH(name))
    pair = (raw_name, PyBytes_FromStringAndSize(<const char*>PyUnicode_DATA(value), PyUnicode_GET_LENGTH(value)))
    cdef PyObject* old_name = slot.name
    cdef PyObject* old_value = slot.value
    cdef PyObject* old_pair = slot.pair
    if PyUnicode_GET_LENGTH(value) <= _PAIR_MAX_VALUE:
        Py_INCREF(name)
        Py_INCREF(value)
        Py_INCREF(pair)
        slot.name, slot.value, slot.pair = <PyObject*>name, <PyObject*>value, <PyObject*>pair
        Py_XDECREF(old_name)  # str and tuples of bytes: freeing them runs no Python code
        Py_XDECREF(old_value)
        Py_XDECREF(old_pair)
    return pair


# A str body answered again and again (a literal in the Worker's code: Response("ok")) is
# the same object every time: its UTF-8 bytes are kept the same way, for short bodies.
cdef enum:
    _BODY_SLOTS = 16
    _BODY_MAX = 256

cdef struct _BodySlot:
    PyObject* text      # str, owned
    PyObject* raw       # its UTF-8 bytes, owned

cdef _BodySlot _bodies[_BODY_SLOTS]


cdef inline object _raw_body(object text):
    """``text.encode()``: the kept bytes when ``text`` is a body seen last time in its slot."""
    cdef _BodySlot* slot = &_bodies[(<size_t><PyObject*>text >> 4) & (_BODY_SLOTS - 1)]
    if slot.text == <PyObject*>text:
        return <object>slot.raw
    raw = (<str>text).encode("utf-8")
    cdef PyObject* old_text = slot.text
    cdef PyObject* old_raw = slot.raw
    if PyUnicode_GET_LENGTH(text) <= _BODY_MAX:
        Py_INCREF(text)
        Py_INCREF(raw)
        slot.text, slot.raw = <PyObject*>text, <PyObject*>raw
        Py_XDECREF(old_text)  # a str and bytes: freeing them runs no Python code
        Py_XDECREF(old_raw)
    return raw


cdef object _fast_raw_response(object response):
    """``(status, headers, body)`` of a Response with a plain body, or None for embed's path."""
    headers = fastbind_slot_get(response, _RESP_HEADERS, "headers")
    if type(headers) is not _HeadersType:
        return None
    body = fastbind_slot_get(response, _RESP_BODY, "body")
    if body is None:
        body = b""
    elif type(body) is str:
        body = _raw_body(body)
    elif type(body) is not bytes and type(body) is not bytearray and type(body) is not memoryview:
        return None
    items = fastbind_slot_get(headers, _HDR_ITEMS, "_items")
    if type(items) is not list:  # e.g. raw request headers put in the response as they are
        return None
    cdef Py_ssize_t i, n = PyList_GET_SIZE(items)
    cdef PyObject* item
    for i in range(n):
        item = PyList_GET_ITEM(items, i)
        if Py_TYPE(item) != <PyTypeObject*>tuple or PyTuple_GET_SIZE(<object>item) != 2:
            return None
        name = <object>PyTuple_GET_ITEM(<object>item, 0)
        value = <object>PyTuple_GET_ITEM(<object>item, 1)
        if (type(name) is not str or type(value) is not str or not PyUnicode_IS_ASCII(name)
                or not PyUnicode_IS_ASCII(value)):
            return None
    cdef list out
    cdef PyObject* old
    if (Py_REFCNT(response) == 1 and type(response) is _ResponseType
            and Py_REFCNT(headers) == 2 and Py_REFCNT(items) == 2):
        # Nothing else holds the Response (its one reference is the caller's), its
        # Headers or their list, and it is freed when this call returns, with no Python
        # code run before: its list becomes the answer's, the pairs replaced in place,
        # rather than a new list made and this one freed.
        fastbind_slot_set(headers, _HDR_ITEMS, None)
        out = <list>items
    else:
        out = PyList_New(n)  # every place filled below (or the list dropped)
    cdef bint in_place = out is items
    for i in range(n):
        old = PyList_GET_ITEM(items, i)
        pair = _raw_pair(<object>PyTuple_GET_ITEM(<object>old, 0), <object>PyTuple_GET_ITEM(<object>old, 1))
        Py_INCREF(pair)  # PyList_SET_ITEM takes a reference
        PyList_SET_ITEM(out, i, pair)
        if in_place:
            Py_XDECREF(old)  # the list's reference to the str pair it held
    fastbind_slot_set(response, _RESP_BODY_USED, True)
    return (fastbind_slot_get(response, _RESP_STATUS, "status"), out, body)


cdef inline object _to_raw(object response):
    result = _fast_raw_response(response)
    if result is None:
        result = _raw_response_py(response)
    return result


@cython.final
cdef class DispatchPlan:
    """What every top-level request of one Runtime shares, prepared once."""

    cdef readonly object runtime
    cdef long max_depth
    cdef long max_subrequests
    cdef long open_connections
    cdef double wait_until_s
    cdef int64_t cpu_limit_ns
    cdef bint cpu_enabled
    cdef public bint resolved     # the Runtime's bindings are resolved (validate() ran)
    cdef public object hook       # on_pipeline_end, or None
    cdef public object origin     # OriginalRequest when the Runtime has an origin, else None
    cdef object _validate         # Runtime.validate
    cdef object _lookup           # Runtime._handle_for(name) -> WorkerHandle, or raises
    cdef object _finish           # Runtime._finish_dispatch: the rare endings (a coroutine)
    cdef object _report           # Runtime._report_ok(pipeline, status)
    cdef object _install_factory  # Runtime._install_task_factory(loop)
    cdef object _watch_hang       # hangwatch.watch(loop, pipeline, driver)
    cdef object _watch_cpu        # watchdog.watch() for this core
    cdef object _loop_ref         # a weak reference to the loop last seen (the loop itself
                                  # if it takes none: a closed loop is not kept alive),
    cdef object _get_factory      # its class's get_task_factory (unbound, for the same
    cdef object _factory          # reason), and the task factory it had then
    cdef void* _factory_call      # _get_factory's vectorcall entry point (NULL: none)

    def __init__(self, runtime, limits, *, validate, lookup, finish, report,
                 install_factory, watch_hang, watch_cpu):
        self.runtime = runtime
        self.max_depth = limits.depth
        self.max_subrequests = limits.subrequests
        self.open_connections = limits.open_connections
        self.wait_until_s = limits.wait_until_s
        cpu_ms = limits.cpu_ms
        self.cpu_limit_ns = -1 if cpu_ms is None else <int64_t>min(cpu_ms * 1e6, 9.2e18)
        self.cpu_enabled = cpu_ms is not None or limits.measure_cpu
        self._validate = validate
        self._lookup = lookup
        self._finish = finish
        self._report = report
        self._install_factory = install_factory
        self._watch_hang = watch_hang
        self._watch_cpu = watch_cpu

    def call(self, WorkerHandle handle not None, request):
        """The awaitable of one top-level request: Worker ``handle`` serves ``request``."""
        if type(request) is not _RequestType and not isinstance(request, _RequestType):
            raise TypeError(f"dispatch() needs a fastbind.Request, not {type(request).__name__}")
        return _top_call(self, handle, request, False)

    def raw(self, str entry not None, method, url, headers, body=None):
        """The awaitable of one raw request (fastbind.embed): ``(status, headers, body)``."""
        return _raw_call(self, entry, None, method, url, headers, body)

    cdef inline PipelineContext _pipeline(self, str entry):
        global _live_pipelines
        cdef PipelineContext p = PipelineContext.__new__(PipelineContext)
        p.entry = entry
        p.owner = self.runtime
        p.max_depth = self.max_depth
        p.max_subrequests = self.max_subrequests
        p.open_connections = self.open_connections
        p.wait_until_s = self.wait_until_s
        p.start_ticks = fastbind_ticks()
        p.duration_ticks = -1
        p.cpu_limit_ns = self.cpu_limit_ns
        p.cpu_enabled = self.cpu_enabled
        _live_pipelines += 1
        return p

    cdef object _loop_checked(self):
        """The running loop, with the core's task factory on it."""
        # The common case without a reference taken: the loop last seen is running
        # (read where asyncio keeps it) and has the factory it had then.
        cdef PyObject* running = fastbind_running_loop()
        if running != NULL and self._has_factory(running):
            return <object>running
        return self._install_on_running_loop()

    cdef inline bint _has_factory(self, PyObject* loop) except -1:
        """``loop`` is the loop last seen, and has the task factory it had then."""
        cdef PyObject* seen = <PyObject*>self._loop_ref
        if Py_TYPE(seen) == <PyTypeObject*>_WeakRef:
            seen = PyWeakref_GET_OBJECT(<object>seen)
        return seen == loop and fastbind_call_one(self._factory_call, self._get_factory, <object>loop) is self._factory

    cdef object _install_on_running_loop(self):
        loop = _running_loop()  # asyncio's answer (it raises when no loop is running)
        if not self._has_factory(<PyObject*>loop):
            self._install_factory(loop)
            self._get_factory = type(loop).get_task_factory
            self._factory_call = fastbind_vectorcall_of(self._get_factory)
            self._factory = fastbind_call_one(self._factory_call, self._get_factory, loop)
            try:
                self._loop_ref = _WeakRef(loop)
            except TypeError:  # a loop class without weak references
                self._loop_ref = loop
        return loop


cdef TopLevelCall _raw_call(DispatchPlan plan, str entry, WorkerHandle handle,
                            object method, object url, object headers, object body):
    if not plan.resolved:
        plan._validate()
    if handle is None:
        handle = plan._lookup(entry)
    request = _fast_raw_request(method, url, headers, body)
    if request is None:
        request = _raw_request_py(method, url, headers, body)
    return _top_call(plan, handle, request, True)


cdef inline TopLevelCall _top_call(DispatchPlan plan, WorkerHandle handle, object request, bint raw):
    cdef TopLevelCall call = TopLevelCall.__new__(TopLevelCall)
    call.plan = plan
    call.handle = handle
    call.request = request
    call.raw = raw
    return call


cdef class RawEntry:
    """Base of fastbind.embed.RawDispatcher: calling it serves one raw request."""

    cdef void* _vectorcall  # _raw_entry_vectorcall: ``raw(m, u, h, b)`` packs no tuple
    cdef readonly object runtime
    cdef readonly str entry
    cdef object _plan
    cdef WorkerHandle _handle

    def __cinit__(self):
        self._vectorcall = <void*>_raw_entry_vectorcall

    def __init__(self, runtime, str entry not None):
        self.runtime = runtime
        self.entry = entry
        self._plan = runtime._plan

    def __call__(self, method, url, headers, body=None):
        # Calls from Python take _raw_entry_vectorcall; this serves keywords and
        # PyObject_Call.
        return _raw_serve(self, method, url, headers, body)


cdef inline object _raw_serve(RawEntry self, method, url, headers, body):
    # A function rather than a method of RawEntry (which is not final): called
    # directly, not through the class's table, it is inlined into the entry point.
    plan = self._plan
    if type(plan) is not DispatchPlan:  # a Runtime on the pure twin
        return plan.raw(self.entry, method, url, headers, body)
    cdef DispatchPlan p = <DispatchPlan>plan
    if self._handle is None:
        if not p.resolved:
            p._validate()
        self._handle = p._lookup(self.entry)
    return _raw_call(p, self.entry, self._handle, method, url, headers, body)


cdef object _raw_entry_vectorcall(object callable, PyObject** args, size_t nargsf, PyObject* kwnames):
    cdef Py_ssize_t n = PyVectorcall_NARGS(nargsf)
    if (n == 3 or n == 4) and (kwnames == NULL or PyTuple_GET_SIZE(<object>kwnames) == 0):
        return _raw_serve(<RawEntry>callable, <object>args[0], <object>args[1], <object>args[2],
                          <object>args[3] if n == 4 else None)
    # Keywords, or a wrong number of arguments: __call__ parses and reports them.
    cdef tuple names = () if kwnames == NULL else <tuple>kwnames
    positional = tuple([<object>args[i] for i in range(n)])
    keywords = {names[i]: <object>args[n + i] for i in range(len(names))}
    return RawEntry.__call__(callable, *positional, **keywords)


def enable_fast_calls(type cls not None):
    """Give ``cls``, a subclass of RawEntry that keeps its ``__call__``, the C entry point.

    CPython 3.11 does not pass a vectorcall entry point on to subclasses defined in
    Python; fastbind.embed calls this for RawDispatcher.
    """
    if not issubclass(cls, RawEntry) or cls.__call__ is not RawEntry.__call__:
        raise TypeError(f"{cls.__name__} is not a RawEntry that keeps RawEntry.__call__")
    cdef RawEntry probe = RawEntry.__new__(RawEntry)
    fastbind_install_vectorcall(cls, <char*>&probe._vectorcall - <char*><PyObject*>probe)


enable_fast_calls(RawEntry)


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
cdef class TopLevelCall(BindingCall):
    """The awaitable of one top-level request (see the section's comment).

    It is the root invocation's BindingCall too (one object per request, not two);
    ``request`` is the request until the root invocation starts.
    """

    cdef DispatchPlan plan
    cdef WorkerHandle handle
    cdef bint raw              # answer (status, headers, body) rather than the Response
    cdef bint opened           # its first step has run (the pipeline was opened)
    cdef bint finished
    cdef PipelineContext pipeline
    cdef object original       # OriginalRequest, when the Runtime has an origin
    cdef object loop
    cdef object watch          # the hang detector's LoopWatch, once the root suspended
    cdef object ending         # Runtime._finish_dispatch's coroutine, once delegated

    def __init__(self):
        raise TypeError("TopLevelCall is created by a DispatchPlan only")

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
        if plan.origin is not None:
            self.original = plan.origin(self.request)
        cdef PipelineContext pipeline = plan._pipeline(self.handle.name)
        self.pipeline = pipeline
        cdef InvocationContext inv = _new_invocation(pipeline, None, self.handle, 1, _EMPTY_PROPS, -1)
        pipeline.root = inv
        self.inv = inv  # the root invocation's call is this object (BindingCall's part)
        self.http = True
        if pipeline.cpu_limit_ns >= 0:
            plan._watch_cpu()
        if slot is None:
            # The task keeps this slot after the request (its ``current`` is None
            # between steps): later requests of the task need no new context mapping.
            PyContextVar_Set(_SLOT, ExecutionSlot.__new__(ExecutionSlot))
        return 0

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
        # The root invocation's step (BindingCall's part of this object), called
        # through fastbind_step: its -1 comes back here, not to a Cython error exit.
        cdef int status = fastbind_step(<fastbind_step_fn>_root_step, <PyObject*>self,
                                        <PyObject*>arg, <PyObject*>exc, result)
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
        global _live_pipelines
        cdef PipelineContext pipeline = self.pipeline
        cdef bint hung = False
        watch = self.watch
        if watch is not None:
            self.watch = None
            if watch is not False:
                hung = watch.release(pipeline)
        if (error is None and not hung and pipeline.cpu_limit_ns < 0 and not pipeline.cpu_exceeded
                and _pipeline_idle(pipeline)):
            body = fastbind_slot_get(response, _RESP_BODY, "body")
            if body is None or type(body) is bytes or type(body) is str:
                # The common ending: nothing left to cancel or wait for.
                pipeline.closed = True
                pipeline.root = None  # the cycle root <-> pipeline, as close() does
                _live_pipelines -= 1
                self.finished = True
                if self.plan.hook is not None:
                    self.plan._report(pipeline, fastbind_slot_get(response, _RESP_STATUS, "status"))
                value = _to_raw(response) if self.raw else response
                Py_INCREF(value)
                result[0] = <PyObject*>value
                return 0
        self.ending = self.plan._finish(pipeline, self.original, response, error, hung)
        self.original = None
        return self._delegate(None, None, result)

    cdef int _delegate(self, object arg, object exc, PyObject** result) except? -1:
        cdef int status
        if exc is None:
            status = fastbind_send(<PyObject*>self.ending, <PyObject*>arg, result)
        else:
            status = fastbind_throw(<PyObject*>self.ending, <PyObject*>exc, result)
        if status < 0:  # the exception is set
            self.ending = None
            self.finished = True
            return -1
        if status == 1:
            return 1
        self.ending = None
        self.finished = True
        if self.raw:
            response = <object>result[0]
            Py_XDECREF(result[0])
            result[0] = NULL
            value = _raw_response_py(response)
            Py_INCREF(value)
            result[0] = <PyObject*>value
        return 0

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
                self.ending = None
                ending.close()
                return
            if self.coro is not None:  # the root invocation is running: close it
                self._close()
            if self.watch is not None and self.watch is not False:
                self.watch.release(pipeline)
            self.watch = None
            ending = self.plan._finish(pipeline, self.original, None, GeneratorExit(), False)
            try:
                ending.send(None)
            except BaseException:  # ended at once (it re-raises the GeneratorExit)
                pass
            else:  # it waits for the pipeline's tasks: the supervisor carries on alone
                ending.close()
        finally:
            pipeline.close()


cdef int _root_step(object call, object arg, object exc, PyObject** result) except? -1:
    return (<BindingCall>call)._send(arg, exc, result)


cdef int _top_call_send(object self, object arg, PyObject** result) except? -1:
    return (<TopLevelCall>self)._top_send(arg, None, result)


fastbind_install_top_am_send(TopLevelCall, <fastbind_send_fn>_top_call_send)
# Cython keeps freelists for base classes only: these two subclasses of BindingCall,
# one made per top-level request and one per RPC call, get theirs from _core_capi.h.
fastbind_freelist_install(TopLevelCall, 0)
fastbind_freelist_install(RpcCall, 1)
