# Declarations of the compiled core's types and of what other compiled modules of
# fastbind may call (see _core.pyx).

cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t


cdef enum:
    _ENV_CACHE = 8   # entries of Env's name cache (a power of two)

# Turns a top-level request's Response into what its caller wants (a raw answer).
ctypedef object (*answer_converter)(object)


cdef class Env:
    cdef str _worker
    cdef dict _values
    cdef PyObject* _cached_names[_ENV_CACHE]    # owned; by address bits
    cdef PyObject* _cached_values[_ENV_CACHE]   # borrowed from _values


cdef class ExecutionSlot:
    cdef readonly InvocationContext current
    cdef int64_t segment_start   # when ``current`` last began running (CPU metering)


cdef class WorkerHandle:
    cdef readonly str name
    cdef readonly object handler
    cdef public object env
    cdef bint is_class
    cdef bint fast_init
    cdef dict _rpc
    # A Worker of the ``workers`` module: its RPC arguments and results follow Python
    # Workers' rules (python_workers_values.py) on top of fastbind's own.
    cdef readonly bint python_workers

    cdef bint has_rpc_method(self, str name) except -1
    cdef object rpc_function(self, str name)

    cdef object instantiate(self, InvocationContext ctx)
    cdef object invoke(self, object request, InvocationContext ctx)


cdef struct LedgerEntry:
    PyObject* target         # str, owned
    int64_t start_ticks      # fastbind_ticks(): ns only when read
    int64_t duration_ticks   # -1 while running
    int32_t parent           # the caller's entry, -1 for the top-level invocation;
                             # the caller's name is that entry's target (or the pipeline's entry)
    int32_t depth
    uint16_t status          # the HTTP status of its Response, 0 when none (yet)
    uint8_t kind             # code in _LABELS
    uint8_t outcome          # code in _LABELS; 0 while running


cdef class SubrequestRecord:
    cdef readonly long index
    cdef readonly long parent
    cdef readonly str caller
    cdef readonly str target
    cdef readonly str kind
    cdef readonly long depth
    cdef readonly int64_t start_ns
    cdef readonly int64_t duration_ns
    cdef readonly str outcome
    cdef readonly int64_t cpu_ns
    cdef readonly object status


cdef class LedgerBlocks:
    cdef LedgerEntry** _blocks   # see fastbind_ledger_block (_capi.h)
    cdef int _n_blocks
    cdef Py_ssize_t count        # entries written (their names are owned)


cdef class OpenSubrequest:
    cdef PipelineContext pipeline
    cdef Py_ssize_t index


cdef class PipelineContext:
    cdef readonly str entry
    cdef readonly object owner   # the Runtime that dispatched it
    cdef readonly long max_depth
    cdef readonly long max_subrequests
    cdef readonly long open_connections
    cdef readonly double wait_until_s
    cdef LedgerBlocks _ledger     # None until the first subrequest
    cdef Py_ssize_t _count
    cdef dict _entry_cpu        # ledger index -> CPU ns, for metered pipelines only
    cdef set _tasks
    cdef set _waiting
    cdef readonly long running
    cdef readonly bint closed
    cdef readonly InvocationContext root
    cdef int64_t start_ticks      # the ledger's clock (fastbind_ticks): ns when read
    cdef int64_t duration_ticks   # -1 until the top-level invocation has ended
    cdef readonly bint cpu_enabled    # every step metered: from the start, or since the watchdog saw it run
    cdef readonly bint cpu_measured   # steps split between invocations and reported: measure_cpu, or a CPU-limited call
    cdef readonly int64_t cpu_limit_ns   # -1: no limit
    cdef readonly int64_t cpu_ns
    cdef readonly bint cpu_exceeded
    cdef readonly object observed   # what the Runtime's observers keep of it (tracing), or None
    cdef object _pipeline_id        # str: made when first read, or given by a continued pipeline
    cdef readonly long root_depth   # the top-level invocation's depth: 1, more when continued
    cdef object __weakref__

    cdef inline Py_ssize_t _add_entry(self, Py_ssize_t parent, str target, str kind, long depth) except -1
    cdef inline void _finish_entry(self, Py_ssize_t index, str outcome, int64_t cpu_ns, int status) noexcept
    cdef SubrequestRecord _record(self, Py_ssize_t index, double rate)
    cdef void _record_cpu(self, Py_ssize_t index, int64_t cpu_ns) noexcept


cdef class CallLimits:
    cdef readonly object cpu_ms          # as given (None: none)
    cdef readonly object subrequests     # as given (None: none)
    cdef int64_t cpu_limit_ns            # -1: none
    cdef long max_subrequests            # -1: none
    cdef object _watch                   # called when a call with a CPU limit starts
    cdef object _unwatch                 # and when it ends


cdef class LimitScope:
    cdef LimitScope parent               # the scope of the call this one was made in
    cdef int64_t cpu_limit_ns            # -1: none
    cdef int64_t cpu_ns
    cdef long max_subrequests            # -1: none
    cdef long subrequests
    cdef bint cpu_exceeded
    cdef object _unwatch                 # set while the watchdog watches for this scope


cdef class InvocationContext:
    cdef readonly PipelineContext pipeline
    cdef readonly InvocationContext parent
    cdef WorkerHandle handle
    cdef readonly long depth
    cdef readonly object props
    cdef readonly long subrequests
    cdef bint pass_through
    cdef readonly Py_ssize_t ledger_index   # its entry in the pipeline's ledger; -1: the top-level invocation
    cdef readonly int64_t cpu_ns
    cdef LimitScope scope          # None unless a call with CallLimits is above (or is) this one
    cdef bint owns_scope           # this invocation's call opened ``scope``

    cdef inline void _finish(self, str outcome, int status) noexcept

    cdef inline int _charge(self) except -1
    cdef InvocationContext _child(self, WorkerHandle handle, str kind, object props)


cdef class Fetcher:
    cdef WorkerHandle _target
    cdef str _binding
    cdef object _props
    cdef CallLimits _limits   # None, or each call's own limits
    cdef FetchMethod _fetch   # ``env.X.fetch``, made once
    cdef dict _members        # "fetch", and RPC stubs by name

    cdef BindingCall _fetch_request(self, object input)
    cdef InvocationContext _caller(self)


cdef class FetchMethod:
    cdef void* _vectorcall  # _fetch_vectorcall: ``fetch(request)`` skips argument parsing
    cdef Fetcher _fetcher


cdef class RpcMethod:
    cdef void* _vectorcall  # _rpc_vectorcall: how Python calls it (no tuple, no kwargs dict)
    cdef Fetcher _fetcher
    cdef str _name
    cdef object _error      # the TypeError message when the name cannot be called
    cdef object _function   # the plain function on the class, called with the instance

    cdef InvocationContext _caller(self)
    cdef BindingCall _start(self, InvocationContext caller, tuple args, dict kwargs)


cdef class BindingCall:
    cdef InvocationContext inv
    cdef ExecutionSlot slot
    cdef object request
    cdef object coro
    cdef bint http
    cdef bint started
    cdef bint rpc           # an RpcCall: the method and its arguments are its own fields
    cdef bint has_immediate # an RpcCall whose synchronous method has returned
    cdef bint borrowed      # runs code as an existing invocation (InvocationContext.run)
    cdef object slot_token  # set when run() had to give the awaiting task a slot
    # A binding's fetch that handles redirects (binding_fetch.py): the Fetcher, what
    # the request was made from, the mode (1 follow, 2 error; 0 for every other call),
    # and whether the call now drives the coroutine that follows them.
    cdef Fetcher fetcher
    cdef object origin
    cdef char redirect_mode
    cdef bint following

    # Final: TopLevelCall and RpcCall extend this class, and these stay direct C calls.
    @cython.final
    cdef int _enter(self) except -1
    @cython.final
    cdef void _exit(self, str outcome, int status) noexcept
    @cython.final
    cdef object _check_result(self, object value)
    @cython.final
    cdef int _send(self, object arg, object exc, PyObject** result) except? -1
    @cython.final
    cdef inline void _leave(self, InvocationContext previous, int metered) noexcept
    @cython.final
    cdef int _start_following(self, object response, PyObject** result) except? -1
    @cython.final
    cdef int _follow_step(self, object arg, object exc, PyObject** result) except? -1
    @cython.final
    cdef int _over_budget(self, InvocationContext previous, int metered) except 0
    @cython.final
    cdef void _fail(self, str outcome) noexcept
    @cython.final
    cdef void _fail_step(self, InvocationContext previous, int metered) noexcept
    @cython.final
    cdef int _close(self) except -1


cdef class RpcCall(BindingCall):
    cdef str rpc_name
    cdef object rpc_function
    cdef bint custom        # rpc_function(ctx, *args) rather than a method of a new instance
    cdef tuple rpc_args     # None when the arguments are in rpc_arg0/rpc_arg1
    cdef dict rpc_kwargs
    cdef object rpc_arg0    # an RPC call's first two positional arguments (no tuple)
    cdef object rpc_arg1
    cdef Py_ssize_t rpc_nargs
    cdef object immediate   # a synchronous method's value

    @cython.final
    cdef int _call_method(self, InvocationContext inv) except -1
    @cython.final
    cdef int _keep_result(self, object result) except -1
    @cython.final
    cdef tuple _rpc_arg_tuple(self)


cdef class SliceMeter:
    cdef object coro
    cdef PipelineContext pipeline
    cdef ExecutionSlot slot

    cdef object _step(self, object value, object exc)


cdef class TaskFactory:
    cdef readonly object previous


cdef class DispatchPlan:
    cdef object owner              # the Runtime: each pipeline's ``owner``
    cdef long max_depth
    cdef long max_subrequests
    cdef long open_connections
    cdef double wait_until_s
    cdef int64_t cpu_limit_ns
    cdef bint cpu_measured
    cdef public bint resolved      # the Runtime's bindings are resolved (validate() ran)
    cdef public bint reports       # the Runtime has an on_pipeline_end hook
    cdef public object snapshot    # (request) -> what pass-through keeps of it, or None
    cdef public object observe     # (pipeline, request) -> its ``observed``, or None: no observer
    # The policy's methods (fastbind/policy.py), looked up once.
    cdef object _validate
    cdef object _install_factory
    cdef object _watch_hang
    cdef object _answer
    cdef object _report
    cdef object _end
    cdef object _stream
    cdef object _hold
    # The loop last seen (a weak reference, or the loop itself if it takes none), its
    # class's get_task_factory with its vectorcall entry point, and its factory then.
    cdef object _loop_ref
    cdef object _get_factory
    cdef void* _factory_call
    cdef object _factory

    cdef inline PipelineContext _pipeline(self, str entry)
    cdef object _loop_checked(self)
    cdef bint _has_factory(self, object loop) except -1


cdef class Entry:
    cdef void* _vectorcall  # _entry_vectorcall: ``entry(request)`` skips argument parsing
    cdef readonly DispatchPlan plan
    cdef readonly WorkerHandle handle


cdef class TopLevelCall(BindingCall):
    cdef DispatchPlan plan
    cdef WorkerHandle handle
    cdef answer_converter convert  # NULL: the answer is the Response
    cdef object py_convert         # or this callable's value (Entry.converted)
    cdef bint opened               # its first step has run (the pipeline was opened)
    cdef bint finished
    cdef PipelineContext pipeline
    cdef object original           # the policy's snapshot of the request, for pass-through
    cdef object loop
    cdef object watch              # the hang detector's watch, once the root suspended
    cdef object ending             # a coroutine of the policy, once delegated
    cdef object answer             # the Response to give once ``ending`` is done
    # Entry.continued: a pipeline of another process goes on here (depth, id, CPU budget).
    cdef bint continued
    cdef long start_depth
    cdef object pipeline_id
    cdef int64_t cpu_budget_ns     # -1: the caller set no CPU limit

    cdef int _start(self) except -1
    cdef long _continue(self, PipelineContext pipeline) except -1
    cdef int _top_send(self, object arg, object exc, PyObject** result) except? -1
    cdef int _root_ended(self, object response, object error, PyObject** result) except? -1
    cdef int _answer(self, object response, PyObject** result) except -1
    cdef int _delegate(self, object arg, object exc, PyObject** result) except? -1


# For other compiled modules of fastbind (fastbind.http._raw).
cdef object new_request(str method, str url, list items, object raw, object body)
cdef TopLevelCall entry_call(Entry entry, object request, answer_converter convert)
