# cython: language_level=3, embedsignature=True
"""Compiled core: pipeline and invocation contexts, the ledger, and binding dispatch."""

cimport cython
from cpython.contextvars cimport PyContextVar_Get, PyContextVar_Reset, PyContextVar_Set
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.stdint cimport int64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import asyncio
import inspect
from contextvars import ContextVar
from types import MappingProxyType

from fastbind.entrypoint import WorkerEntrypoint
from fastbind.errors import (
    BODY_USED_MESSAGE,
    FastbindError,
    SubrequestDepthError,
    TooManySubrequestsError,
)
from fastbind.headers import Headers
from fastbind.request import Request
from fastbind.response import Response

cdef extern from *:
    """
    /* am_send lets `await binding_call` return its value without raising
       StopIteration (PEP 590-era send protocol, used by PyIter_Send). */
    int fastbind_binding_call_send(PyObject *, PyObject *, PyObject **);
    static PySendResult fastbind_am_send(PyObject *self, PyObject *arg, PyObject **result) {
        return (PySendResult)fastbind_binding_call_send(self, arg, result);
    }
    static int fastbind_install_am_send(PyObject *type) {
        PyTypeObject *t = (PyTypeObject *)type;
        if (t->tp_as_async == NULL) return -1;
        t->tp_as_async->am_send = fastbind_am_send;
        return 0;
    }
    """
    int fastbind_install_am_send(object type)

cdef extern from *:
    """
    #include <structmember.h>
    /* Offsets of __slots__ members of the Fetch API classes, found once at import:
       the hot path then reads and writes those fields as C does for its own types. */
    static Py_ssize_t fastbind_slot_offset(PyObject *type, const char *name) {
        PyObject *d = PyObject_GetAttrString(type, name);
        Py_ssize_t off;
        if (d == NULL) return -1;
        if (Py_TYPE(d) != &PyMemberDescr_Type
                || ((PyMemberDescrObject *)d)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%R.%s is not a __slots__ member", type, name);
            Py_DECREF(d);
            return -1;
        }
        off = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
        return off;
    }
    static inline PyObject *fastbind_slot_get(PyObject *obj, Py_ssize_t off, const char *name) {
        PyObject *v = *(PyObject **)((char *)obj + off);
        if (v == NULL) {
            PyErr_Format(PyExc_AttributeError, "'%s' object has no attribute '%s'",
                         Py_TYPE(obj)->tp_name, name);
            return NULL;
        }
        Py_INCREF(v);
        return v;
    }
    static inline void fastbind_slot_set(PyObject *obj, Py_ssize_t off, PyObject *v) {
        PyObject **p = (PyObject **)((char *)obj + off);
        PyObject *old = *p;
        Py_INCREF(v);
        *p = v;
        Py_XDECREF(old);
    }
    """
    Py_ssize_t fastbind_slot_offset(object type, const char* name) except -1
    object fastbind_slot_get(object obj, Py_ssize_t off, const char* name)
    void fastbind_slot_set(object obj, Py_ssize_t off, object value)

cdef extern from "Python.h":
    int PyIter_Send(object iter, object arg, PyObject** presult) except? -1
    object PyBaseObject_Type_new "PyBaseObject_Type.tp_new" (object type, object args, PyObject* kw)

IMPLEMENTATION = "c"

# Looked up once: the hot path never does a module-global dict lookup for these.
cdef object _INVOCATION = ContextVar("fastbind.invocation", default=None)
cdef object _RequestType = Request
cdef object _ResponseType = Response
cdef object _HeadersType = Headers
cdef object _CancelledError = asyncio.CancelledError
cdef object _Task = asyncio.Task
cdef object _EMPTY_PROPS = MappingProxyType({})
cdef tuple _NO_ARGS = ()
cdef Py_ssize_t _REQ_URL = fastbind_slot_offset(Request, "url")
cdef Py_ssize_t _REQ_METHOD = fastbind_slot_offset(Request, "method")
cdef Py_ssize_t _REQ_HEADERS = fastbind_slot_offset(Request, "headers")
cdef Py_ssize_t _REQ_BODY = fastbind_slot_offset(Request, "body")
cdef Py_ssize_t _REQ_BODY_USED = fastbind_slot_offset(Request, "body_used")
cdef Py_ssize_t _HDR_ITEMS = fastbind_slot_offset(Headers, "_items")
cdef str _KIND_REQUEST = "request"
cdef str _KIND_BINDING = "binding"
cdef str _KIND_FETCH = "fetch"
cdef str _OK = "ok"
cdef str _ERROR = "error"
cdef str _CANCELED = "canceled"

# Counters that must return to zero once every pipeline has ended (DESIGN.md 2.7).
cdef Py_ssize_t _live_pipelines = 0
cdef Py_ssize_t _live_invocations = 0
cdef Py_ssize_t _live_tasks = 0


cdef inline int64_t _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline InvocationContext _current():
    cdef PyObject* value = NULL
    PyContextVar_Get(_INVOCATION, NULL, &value)
    if value == NULL:
        return None
    result = <object>value
    Py_XDECREF(value)
    if result is None:
        return None
    return <InvocationContext?>result


def live_counts():
    """Open pipelines, running invocations and tracked tasks, process-wide."""
    return {"pipelines": _live_pipelines, "invocations": _live_invocations, "tasks": _live_tasks}


def current_invocation():
    """The invocation whose code is running now, or None outside any Worker."""
    return _current()


@cython.final
cdef class WorkerHandle:
    """What the core needs to invoke one Worker: its name, handler and env."""

    def __init__(self, str name, handler):
        self.name = name
        self.handler = handler
        self.env = None
        if isinstance(handler, type) and issubclass(handler, WorkerEntrypoint):
            self.is_class = True
            # Skipping __init__ is only safe when nobody overrode it.
            self.fast_init = handler.__init__ is WorkerEntrypoint.__init__
        elif inspect.iscoroutinefunction(handler):
            self.is_class = False
            self.fast_init = False
        else:
            raise TypeError(name)

    cdef object instantiate(self, InvocationContext ctx):
        if self.fast_init:
            inst = PyBaseObject_Type_new(self.handler, _NO_ARGS, NULL)
            inst.ctx = ctx
            inst.env = self.env
            return inst
        return self.handler(ctx, self.env)

    cdef object invoke(self, object request, InvocationContext ctx):
        if self.is_class:
            return self.instantiate(ctx).fetch(request)
        return self.handler(request, self.env, ctx)

    def __repr__(self):
        return f"<WorkerHandle {self.name}>"


@cython.final
cdef class PipelineContext:
    """One top-level request and everything it reaches: limits, ledger, tasks."""

    def __init__(self, str entry, limits):
        global _live_pipelines
        self.entry = entry
        self.max_depth = limits.depth
        self.max_subrequests = limits.subrequests
        self.open_connections = limits.open_connections
        self.wait_until_s = limits.wait_until_s
        self._ledger = []
        self._tasks = set()
        self._waiting = set()
        self.running = 0
        self.closed = False
        self.start_ns = _now()
        self.root = None
        _live_pipelines += 1

    @property
    def ledger(self):
        return tuple(self._ledger)

    def root_call(self, WorkerHandle handle not None, request):
        """The awaitable that runs the top-level Worker at depth 1."""
        if self.root is not None:
            raise FastbindError("This pipeline already has its top-level invocation")
        cdef InvocationContext inv = _new_invocation(self, None, handle, 1, _KIND_REQUEST, _EMPTY_PROPS)
        self.root = inv
        return _new_call(inv, request, True)

    def adopt(self, task):
        """Account a task spawned by one of this pipeline's Workers."""
        global _live_tasks
        if self.closed:
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
        if task in self._tasks:
            self._tasks.discard(task)
            self._waiting.add(task)

    def take_tasks(self):
        """Pending tasks to cancel when the response is done (not wait_until ones)."""
        return [t for t in self._tasks if not t.done()]

    def take_waiting(self):
        return [t for t in self._waiting if not t.done()]

    def close(self):
        """Mark the pipeline ended; it adopts nothing more."""
        global _live_pipelines
        if not self.closed:
            self.closed = True
            _live_pipelines -= 1

    def charge_fetch(self, InvocationContext caller not None, str target):
        """Count one outbound fetch (or redirect) of ``caller``; returns its ledger record."""
        caller._charge()
        cdef SubrequestRecord rec = SubrequestRecord.__new__(SubrequestRecord)
        rec.caller = caller.target
        rec.target = target
        rec.kind = _KIND_FETCH
        rec.depth = caller.depth
        rec.start_ns = _now()
        rec.duration_ns = -1
        self._ledger.append(rec)
        return rec

    def __dealloc__(self):
        global _live_pipelines
        if not self.closed:
            _live_pipelines -= 1


cdef class SubrequestRecord:
    """One ledger entry: who called what, how deep, when, for how long, and how it ended."""

    def __init__(self):
        raise TypeError("SubrequestRecord is created by the runtime only")

    cdef void _finish(self, str outcome) noexcept:
        if self.outcome is None:
            self.duration_ns = _now() - self.start_ns
            self.outcome = outcome

    def finish(self, str outcome not None):
        self._finish(outcome)

    def as_dict(self):
        return {
            "caller": self.caller, "target": self.target, "kind": self.kind,
            "depth": self.depth, "start_ns": self.start_ns,
            "duration_ns": self.duration_ns, "outcome": self.outcome,
        }

    def __repr__(self):
        return (
            f"<{type(self).__name__} {self.caller}->{self.target} {self.kind} "
            f"depth={self.depth} outcome={self.outcome}>"
        )


@cython.final
@cython.freelist(64)
cdef class InvocationContext(SubrequestRecord):
    """One run of one Worker; also its ``ctx`` and, for a child, its ledger record."""

    def __init__(self):
        raise TypeError("InvocationContext is created by the runtime only")

    @property
    def worker(self):
        return self.target

    @property
    def env(self):
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
        cdef InvocationContext inv = _new_invocation(pipeline, self, handle, self.depth + 1, kind, props)
        pipeline._ledger.append(inv)
        return inv

    def wait_until(self, awaitable):
        """Let ``awaitable`` run on after the response, up to ``Limits.wait_until_s``."""
        cdef PipelineContext pipeline = self.pipeline
        if pipeline.closed:
            raise FastbindError("wait_until() called after the pipeline ended")
        token = PyContextVar_Set(_INVOCATION, self)
        try:
            task = asyncio.ensure_future(awaitable)
        finally:
            PyContextVar_Reset(_INVOCATION, token)
        if task not in pipeline._tasks:
            pipeline.adopt(task)
        pipeline.keep_alive(task)

    def pass_through_on_exception(self):
        """On an uncaught exception, forward the request to the Runtime's origin."""
        self.pass_through = True
        if self.pipeline.root is not None:
            self.pipeline.root.pass_through = True


cdef InvocationContext _new_invocation(
    PipelineContext pipeline, InvocationContext parent, WorkerHandle handle,
    long depth, str kind, object props,
):
    cdef InvocationContext inv = InvocationContext.__new__(InvocationContext)
    inv.caller = None if parent is None else parent.target
    inv.target = handle.name
    inv.kind = kind
    inv.depth = depth
    inv.start_ns = _now()
    inv.duration_ns = -1
    inv.pipeline = pipeline
    inv.parent = parent
    inv.handle = handle
    inv.props = props
    return inv


@cython.final
cdef class Fetcher:
    """A service binding: ``env.X``. ``fetch`` runs the bound Worker in place."""

    def __init__(self, WorkerHandle target not None, str binding not None, props=None):
        self._target = target
        self._binding = binding
        self._props = _EMPTY_PROPS if not props else MappingProxyType(dict(props))

    @property
    def binding(self):
        return self._binding

    @property
    def target(self):
        return self._target.name

    def fetch(self, input, *, method=None, headers=None, body=None):
        """Run the bound Worker's fetch handler with a Request built as fetch() would."""
        cdef InvocationContext caller = _current()
        if caller is None:
            raise FastbindError(
                f"env.{self._binding}.fetch() was called outside a fastbind invocation"
            )
        if type(input) is _RequestType and method is None and headers is None and body is None:
            request = _forward(input)
        else:
            request = _RequestType(input, method=method, headers=headers, body=body)
        inv = caller._child(self._target, _KIND_BINDING, self._props)
        return _new_call(inv, request, True)

    def __repr__(self):
        return f"<Fetcher {self._binding} -> {self._target.name}>"


cdef object _forward(object src):
    """The child's copy of ``src``: same body object, headers copied, src marked used.

    ``type(src) is Request`` was checked by the caller, so its slots are where the
    offsets say.
    """
    body = fastbind_slot_get(src, _REQ_BODY, "body")
    if body is not None:
        if fastbind_slot_get(src, _REQ_BODY_USED, "body_used") is True:
            raise TypeError(BODY_USED_MESSAGE)
        fastbind_slot_set(src, _REQ_BODY_USED, True)
    src_headers = fastbind_slot_get(src, _REQ_HEADERS, "headers")
    if type(src_headers) is not _HeadersType:
        raise TypeError(f"Request.headers must be a Headers, not {type(src_headers).__name__}")
    headers = PyBaseObject_Type_new(_HeadersType, _NO_ARGS, NULL)
    fastbind_slot_set(headers, _HDR_ITEMS, list(<list?>fastbind_slot_get(src_headers, _HDR_ITEMS, "_items")))
    req = PyBaseObject_Type_new(_RequestType, _NO_ARGS, NULL)
    fastbind_slot_set(req, _REQ_URL, fastbind_slot_get(src, _REQ_URL, "url"))
    fastbind_slot_set(req, _REQ_METHOD, fastbind_slot_get(src, _REQ_METHOD, "method"))
    fastbind_slot_set(req, _REQ_HEADERS, headers)
    fastbind_slot_set(req, _REQ_BODY, body)
    fastbind_slot_set(req, _REQ_BODY_USED, False)
    return req


cdef BindingCall _new_call(InvocationContext inv, object request, bint http):
    cdef BindingCall call = BindingCall.__new__(BindingCall)
    call.inv = inv
    call.request = request
    call.http = http
    return call


@cython.final
@cython.freelist(64)
cdef class BindingCall:
    """The awaitable a binding returns: runs the child in the caller's task."""

    def __init__(self):
        raise TypeError("BindingCall is created by a Fetcher only")

    @property
    def invocation(self):
        return self.inv

    def __await__(self):
        return self

    cdef int _enter(self) except -1:
        global _live_invocations
        cdef InvocationContext inv = self.inv
        if self.started or inv is None or inv.outcome is not None:
            raise RuntimeError("A binding call can be awaited only once")
        self.started = True
        self.token = PyContextVar_Set(_INVOCATION, inv)
        inv.pipeline.running += 1
        _live_invocations += 1
        request = self.request
        self.request = None
        try:
            self.coro = inv.handle.invoke(request, inv)
        except BaseException:
            self._exit(_ERROR)
            raise
        return 0

    cdef void _exit(self, str outcome) noexcept:
        global _live_invocations
        cdef InvocationContext inv = self.inv
        inv.pipeline.running -= 1
        _live_invocations -= 1
        token = self.token
        self.token = None
        self.coro = None
        try:
            PyContextVar_Reset(_INVOCATION, token)
        except BaseException:  # closed from another context (e.g. by the GC)
            pass
        inv._finish(outcome)

    cdef int _send(self, object arg, PyObject** result) except? -1:
        if not self.started:
            self._enter()
            arg = None
        elif self.coro is None:
            raise RuntimeError("cannot reuse already awaited binding call")
        cdef int status
        try:
            status = PyIter_Send(self.coro, arg, result)
        except _CancelledError:
            self._exit(_CANCELED)
            raise
        except BaseException:
            self._exit(_ERROR)
            raise
        if status == 1:  # PYGEN_NEXT: the child yielded a future to the loop
            return 1
        value = <object>result[0]
        Py_XDECREF(result[0])
        result[0] = NULL
        self._exit_with(value)
        Py_INCREF(value)
        result[0] = <PyObject*>value
        return 0

    cdef int _exit_with(self, object value) except -1:
        cdef InvocationContext inv = self.inv
        if self.http and type(value) is not _ResponseType and not isinstance(value, _ResponseType):
            self._exit(_ERROR)
            raise TypeError(
                f'Worker "{inv.target}" fetch handler returned '
                f"{type(value).__name__}, expected a Response"
            )
        self._exit(_OK)
        return 0

    def __next__(self):
        cdef PyObject* result = NULL
        if self._send(None, &result) == 1:
            value = <object>result
            Py_XDECREF(result)
            return value
        value = <object>result
        Py_XDECREF(result)
        raise StopIteration(value)

    def send(self, value):
        cdef PyObject* result = NULL
        if self._send(value, &result) == 1:
            out = <object>result
            Py_XDECREF(result)
            return out
        out = <object>result
        Py_XDECREF(result)
        raise StopIteration(out)

    def throw(self, typ, val=None, tb=None):
        if not self.started:
            self._enter()
        if self.coro is None:
            raise RuntimeError("cannot reuse already awaited binding call")
        try:
            if val is None and tb is None:
                out = self.coro.throw(typ)
            else:
                out = self.coro.throw(typ, val, tb)
        except StopIteration as stop:
            self._exit_with(stop.value)
            raise StopIteration(stop.value)
        except _CancelledError:
            self._exit(_CANCELED)
            raise
        except BaseException:
            self._exit(_ERROR)
            raise
        return out

    def close(self):
        if self.coro is not None:
            try:
                self.coro.close()
            finally:
                self._exit(_CANCELED)
        elif not self.started and self.inv is not None:
            self.inv._finish(_CANCELED)
            self.request = None


cdef public int fastbind_binding_call_send(object self, object arg, PyObject** result) except? -1:
    return (<BindingCall>self)._send(arg, result)


fastbind_install_am_send(BindingCall)


@cython.final
cdef class TaskFactory:
    """A loop task factory that accounts new tasks to the spawning invocation."""

    fastbind_implementation = IMPLEMENTATION

    def __init__(self, previous=None):
        self.previous = previous

    def __call__(self, loop, coro, **kwargs):
        if self.previous is not None:
            task = self.previous(loop, coro, **kwargs)
        else:
            task = _Task(coro, loop=loop, **kwargs)
        context = kwargs.get("context")
        cdef InvocationContext inv
        if context is None:
            inv = _current()
        else:
            inv = context.get(_INVOCATION)
        if inv is not None:
            inv.pipeline.adopt(task)
        return task


def make_task_factory(previous):
    return TaskFactory(previous)
