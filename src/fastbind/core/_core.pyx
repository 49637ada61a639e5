# cython: language_level=3, embedsignature=True
"""Compiled core: pipeline and invocation contexts, the ledger, and binding dispatch.

One extension module in five parts (included below, each one concern):

- ``_contexts.pxi``: Env, WorkerHandle, the pipeline and its ledger, invocations;
- ``_metering.pxi``: CPU metering of a pipeline's steps, and the task factory;
- ``_call_limits.pxi``: per-call limits, a budget for a callee and what it calls;
- ``_binding.pxi``: ``env.X.fetch`` and RPC stubs, and the awaitable that runs a child;
- ``_dispatch.pxi``: top-level requests (DispatchPlan, Entry, TopLevelCall).

``core/_twin.py`` and its parts are the same in plain Python. Techniques that rely on
CPython internals are in ``_fast_paths.h``, behind FASTBIND_FAST_PATHS;
docs/design.md describes the whole.
"""

cimport cython
from cpython.contextvars cimport PyContextVar_Reset, PyContextVar_Set
from cpython.exc cimport PyErr_Clear, PyErr_ExceptionMatches, PyErr_Fetch, PyErr_Restore
from cpython.list cimport PyList_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint64_t
from libc.string cimport memcpy

from fastbind.core._url cimport quick_url as _quick_url

import asyncio
import contextvars
import inspect
import os
import sys
import weakref
from contextvars import ContextVar
from types import FunctionType

from fastbind.core.binding_fetch import fetch_with_options, redirect_follower
from fastbind.core.props import EMPTY_PROPS, props_of
from fastbind.core.python_workers_values import check_python_workers_value
from fastbind.core.rpc_values import RESERVED_METHODS, hand_over_response, isolate, reserved_message, unknown_message
from fastbind.entrypoint import WorkerEntrypoint
from fastbind.errors import (
    CpuLimitExceeded,
    FastbindError,
    MissingBindingError,
    SubrequestDepthError,
    TooManySubrequestsError,
    WorkerCpuLimitError,
)
from fastbind.headers import Headers
from fastbind.request import Request, forward_request
from fastbind.response import Response

cdef extern from "_fast_paths.h":
    int FASTBIND_FAST_PATHS_BUILT
    int fastbind_fast_paths_init(int wanted)
    ctypedef int (*fastbind_send_fn)(PyObject*, PyObject*, PyObject**)
    int fastbind_install_send(object type, int which, fastbind_send_fn impl) except -1
    object fastbind_pool_new(int which, PyTypeObject* type)
    int fastbind_pool_install(int which, object type, const Py_ssize_t* offsets, int n) except -1
    int fastbind_freelist_install(object type, int which) except -1
    int fastbind_install_vectorcall(object type, Py_ssize_t offset) except -1
    PyObject* fastbind_running_loop()
    void fastbind_learn_holder(object loop)
    int fastbind_running_loop_init(PyObject* key) except -1
    int fastbind_running_loop_is_read_directly()
    int64_t fastbind_ticks() nogil
    double fastbind_tick_rate() nogil
    int64_t fastbind_ticks_to_ns(int64_t ticks, double rate) nogil
    int fastbind_ticks_init(int allow_tsc)
    int64_t fastbind_monotonic_ns() nogil

cdef extern from "_capi.h":
    ctypedef int clockid_t
    Py_ssize_t fastbind_slot_offset(object type, const char* name) except -1
    object fastbind_slot_get(object obj, Py_ssize_t off, const char* name)
    PyObject* fastbind_slot_peek(object obj, Py_ssize_t off)
    int fastbind_status_of(object response, Py_ssize_t off) noexcept
    void fastbind_slot_set(object obj, Py_ssize_t off, object value)
    object fastbind_alloc_instance(object type)
    object fastbind_context_value(PyObject* var, PyTypeObject* type)
    PyObject* fastbind_call3(PyObject* f, PyObject* a, PyObject* b, PyObject* c)
    void* fastbind_vectorcall_of(object func)
    object fastbind_call_one(void* call, object func, object arg)
    object fastbind_call_none(void* call, object func)
    int fastbind_send(PyObject* iter, PyObject* arg, PyObject** result)
    int fastbind_throw(PyObject* coro, PyObject* exc, PyObject** result)
    PyObject* FASTBIND_SLOT(object obj, Py_ssize_t off)
    ctypedef int (*fastbind_step_fn)(PyObject*, PyObject*, PyObject*, PyObject**)
    int fastbind_step(fastbind_step_fn f, PyObject* call, PyObject* arg, PyObject* exc, PyObject** result)
    object fastbind_take_error()
    PyObject* fastbind_weakref_get(object ref)
    int FASTBIND_HAVE_THREAD_CPU_CLOCK
    clockid_t fastbind_watch_clock()
    int64_t fastbind_clock_ns(clockid_t clock) nogil
    int64_t fastbind_load(const int64_t* p) nogil
    void fastbind_store(int64_t* p, int64_t v) nogil
    void fastbind_fence() nogil
    int64_t fastbind_clock_or_none(int64_t clock) nogil
    void fastbind_sleep_ns(int64_t ns) nogil
    int64_t fastbind_coarse_ticks
    int64_t fastbind_coarse_period_ns
    int fastbind_coarse_start()
    void fastbind_coarse_after_fork()
    int fastbind_ledger_block(Py_ssize_t index, Py_ssize_t* offset) nogil
    ctypedef struct fastbind_request_layout:
        Py_ssize_t url, method, headers, body, body_used, cf, items, shared, raw
        Py_ssize_t r_status, r_headers, r_body, r_body_used, r_web_socket
        PyTypeObject* headers_type
        PyTypeObject* response_type
        PyObject* forward_request
        PyObject* hand_over_response
    fastbind_request_layout fastbind_req
    object fastbind_forward(object src)
    PyObject* fastbind_hand_over(PyObject* src)

cdef extern from "Python.h":
    unsigned long PyThread_get_thread_ident()
    int PyThreadState_SetAsyncExc(unsigned long id, PyObject* exc)
    object PyObject_GenericGetAttr(object obj, object name)
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    bint PyCoro_CheckExact(object obj)
    PyObject* PyList_GET_ITEM(object l, Py_ssize_t i)
    object PyObject_Vectorcall(object callable, PyObject** args, size_t nargsf, PyObject* kwnames)
    PyObject* PyTuple_GET_ITEM(object t, Py_ssize_t i)
    Py_ssize_t PyTuple_GET_SIZE(object t)
    Py_ssize_t PyVectorcall_NARGS(size_t nargsf)
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    int CLOCK_THREAD_CPUTIME_ID

IMPLEMENTATION = "c"


cdef int _fast_paths_wanted() except -1:
    value = os.environ.get("FASTBIND_FAST_PATHS", "")
    if value not in ("", "0", "1"):
        raise ValueError(
            f"FASTBIND_FAST_PATHS must be 0 (public C API only) or 1 (the default), not {value!r}"
        )
    return value != "0"


# The one switch (see _fast_paths.h): chosen once, before anything below installs.
cdef bint _FAST = fastbind_fast_paths_init(_fast_paths_wanted())
# The ledger's clock: the TSC where the fast paths allow it, unless FASTBIND_CLOCK=monotonic.
cdef bint _TSC = fastbind_ticks_init(os.environ.get("FASTBIND_CLOCK", "") != "monotonic")


def fast_paths():
    """What this build does: whether the fast paths are built and on, and the ledger's clock."""
    return {
        "built": bool(FASTBIND_FAST_PATHS_BUILT),
        "on": bool(_FAST),
        "clock": "tsc" if _TSC else "monotonic",
        "thread_cpu_clock": bool(FASTBIND_HAVE_THREAD_CPU_CLOCK),
    }


# Looked up once: the hot path never does a module-global dict look-up for these.
cdef object _SLOT = ContextVar("fastbind.execution_slot", default=None)
cdef object _RequestType = Request
cdef object _ResponseType = Response
cdef object _HeadersType = Headers
cdef object _CancelledError = asyncio.CancelledError
cdef object _isolate = isolate
cdef object _fetch_with_options = fetch_with_options
cdef object _check_python_workers_value = check_python_workers_value
cdef str _RPC_RULES = "__fastbind_rpc_rules__"  # "python_workers" on the workers module's classes
cdef object _redirect_follower = redirect_follower
cdef object _STATUS_200 = 200  # a cached small int: most Responses' status is this object
cdef frozenset _RESERVED = RESERVED_METHODS
cdef object _FunctionType = FunctionType  # (a lambda here would be a Cython function)
cdef object _Task = asyncio.Task
cdef object _copy_context = contextvars.copy_context
cdef object _EMPTY_PROPS = EMPTY_PROPS
cdef object _props_of = props_of
cdef tuple _NO_ARGS = ()
cdef enum: _STACK_ARGS = 7  # RPC calls with at most this many positional arguments skip the tuple
cdef str _FETCH_NAME = "fetch"
cdef str _KIND_BINDING = "binding"
cdef str _KIND_RPC = "rpc"
cdef str _KIND_FETCH = "fetch"
cdef str _OK = "ok"
cdef str _ERROR = "error"
cdef str _CANCELED = "canceled"

# Where the Fetch API classes keep their fields (their __slots__).
cdef Py_ssize_t _REQ_URL = fastbind_slot_offset(Request, "url")
cdef Py_ssize_t _REQ_METHOD = fastbind_slot_offset(Request, "method")
cdef Py_ssize_t _REQ_HEADERS = fastbind_slot_offset(Request, "headers")
cdef Py_ssize_t _REQ_BODY = fastbind_slot_offset(Request, "body")
cdef Py_ssize_t _REQ_BODY_USED = fastbind_slot_offset(Request, "body_used")
cdef Py_ssize_t _REQ_CF = fastbind_slot_offset(Request, "_cf")
cdef Py_ssize_t _HDR_ITEMS = fastbind_slot_offset(Headers, "_items")
cdef Py_ssize_t _HDR_SHARED = fastbind_slot_offset(Headers, "_shared")
cdef Py_ssize_t _HDR_RAW = fastbind_slot_offset(Headers, "_raw")
cdef Py_ssize_t _RESP_STATUS = fastbind_slot_offset(Response, "status")
cdef Py_ssize_t _RESP_HEADERS = fastbind_slot_offset(Response, "headers")
cdef Py_ssize_t _RESP_BODY = fastbind_slot_offset(Response, "body")
cdef Py_ssize_t _RESP_WEB_SOCKET = fastbind_slot_offset(Response, "_web_socket")
cdef Py_ssize_t _RESP_BODY_USED = fastbind_slot_offset(Response, "body_used")
cdef Py_ssize_t _EP_ENV = fastbind_slot_offset(WorkerEntrypoint, "env")
cdef Py_ssize_t _EP_CTX = fastbind_slot_offset(WorkerEntrypoint, "ctx")
cdef object _EP_ENV_SLOT = WorkerEntrypoint.__dict__["env"]
cdef object _EP_CTX_SLOT = WorkerEntrypoint.__dict__["ctx"]


cdef int _install_pools() except -1:
    """Pools of Request, Headers and Response blocks (a fast path): a binding call
    copies the Request (and its Headers) it passes and the Response that comes back."""
    cdef Py_ssize_t request_slots[6]
    cdef Py_ssize_t headers_slots[3]
    cdef Py_ssize_t response_slots[5]
    request_slots[:] = [_REQ_URL, _REQ_METHOD, _REQ_HEADERS, _REQ_BODY, _REQ_BODY_USED, _REQ_CF]
    headers_slots[:] = [_HDR_ITEMS, _HDR_SHARED, _HDR_RAW]
    response_slots[:] = [_RESP_STATUS, _RESP_HEADERS, _RESP_BODY, _RESP_BODY_USED, _RESP_WEB_SOCKET]
    if len(Request.__slots__) == 6:
        fastbind_pool_install(0, Request, request_slots, 6)
    if len(Headers.__slots__) == 3:
        fastbind_pool_install(1, Headers, headers_slots, 3)
    if len(Response.__slots__) == 5:
        fastbind_pool_install(2, Response, response_slots, 5)
    return 0


cdef int _init_forward() except -1:
    """Tell fastbind_forward and fastbind_hand_over (_capi.h), the copies a binding
    call makes of a Request and of the Response that comes back, where Request,
    Response and Headers keep their fields."""
    fastbind_req.url = _REQ_URL
    fastbind_req.method = _REQ_METHOD
    fastbind_req.headers = _REQ_HEADERS
    fastbind_req.body = _REQ_BODY
    fastbind_req.body_used = _REQ_BODY_USED
    fastbind_req.cf = _REQ_CF
    fastbind_req.items = _HDR_ITEMS
    fastbind_req.shared = _HDR_SHARED
    fastbind_req.raw = _HDR_RAW
    fastbind_req.r_status = _RESP_STATUS
    fastbind_req.r_headers = _RESP_HEADERS
    fastbind_req.r_body = _RESP_BODY
    fastbind_req.r_body_used = _RESP_BODY_USED
    fastbind_req.r_web_socket = _RESP_WEB_SOCKET
    fastbind_req.headers_type = <PyTypeObject*>_HeadersType
    fastbind_req.response_type = <PyTypeObject*>_ResponseType
    Py_INCREF(hand_over_response)
    fastbind_req.hand_over_response = <PyObject*>hand_over_response
    Py_INCREF(forward_request)
    fastbind_req.forward_request = <PyObject*>forward_request
    return 0


_install_pools()
_init_forward()

# Counters that must return to zero once every pipeline has ended.
cdef Py_ssize_t _live_pipelines = 0
cdef Py_ssize_t _live_invocations = 0
cdef Py_ssize_t _live_tasks = 0


def live_counts():
    """Open pipelines, running invocations and tracked tasks, process-wide."""
    return {"pipelines": _live_pipelines, "invocations": _live_invocations, "tasks": _live_tasks}


cdef inline ExecutionSlot _current_slot():
    return <ExecutionSlot>fastbind_context_value(<PyObject*>_SLOT, <PyTypeObject*>ExecutionSlot)


cdef inline InvocationContext _current():
    cdef ExecutionSlot slot = _current_slot()
    return None if slot is None else slot.current


def current_invocation():
    """The invocation whose code is running now, or None outside any Worker."""
    return _current()


cdef inline object _new_request(str method, str url, list items, object raw, object body):
    """A Request of checked parts with its own Headers of ``items``, or of ``raw``
    pairs when ``items`` is None (both from the pools when the fast paths are on)."""
    headers = fastbind_pool_new(1, <PyTypeObject*>_HeadersType)
    fastbind_slot_set(headers, _HDR_ITEMS, items)
    fastbind_slot_set(headers, _HDR_SHARED, False)
    if items is None:
        fastbind_slot_set(headers, _HDR_RAW, raw)
    request = fastbind_pool_new(0, <PyTypeObject*>_RequestType)
    fastbind_slot_set(request, _REQ_METHOD, method)
    fastbind_slot_set(request, _REQ_URL, url)
    fastbind_slot_set(request, _REQ_HEADERS, headers)
    fastbind_slot_set(request, _REQ_BODY, body)
    fastbind_slot_set(request, _REQ_BODY_USED, False)
    return request


cdef object new_request(str method, str url, list items, object raw, object body):
    """_new_request for other compiled modules (fastbind.http._raw)."""
    return _new_request(method, url, items, raw, body)


include "_contexts.pxi"
include "_metering.pxi"
include "_call_limits.pxi"
include "_binding.pxi"
include "_dispatch.pxi"
include "_coarse_clock.pxi"
