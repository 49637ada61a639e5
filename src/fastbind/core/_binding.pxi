# Part of _core.pyx: a service binding (``env.X``), its ``fetch`` and RPC stubs, and
# the awaitable that runs the bound Worker's code in the caller's task.

cdef object _iterator_step(int status, PyObject* result):
    """The iterator protocol's form of an am_send result (which it takes over)."""
    out = <object>result
    Py_XDECREF(result)
    if status == 1:
        return out
    raise StopIteration(out)


@cython.final
cdef class Fetcher:
    """A service binding: ``env.X``. ``fetch`` runs the bound Worker in place.

    Any other public name is an RPC method of the bound WorkerEntrypoint
    (``await env.USERS.get_user(42)``); its stub is cached in the instance dict so
    later look-ups are plain attribute loads.
    """

    def __init__(self, WorkerHandle target not None, str binding not None, props=None,
                 CallLimits limits=None):
        self._target = target
        self._binding = binding
        self._props = _props_of(props)
        self._limits = limits  # each call gets a budget of its own (_call_limits.pxi)
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

    def fetch(self, input, *, method=None, headers=None, body=None, redirect="follow",
              timeout=None, cf=None):
        """Run the bound Worker's fetch handler with a Request built as fetch() would,
        with the global fetch's options and defaults (binding_fetch.py)."""
        if (method is None and headers is None and body is None and timeout is None
                and cf is None and redirect == "follow"):
            return self._fetch_request(input)
        return _fetch_with_options(self, self._binding, input, method, headers, body,
                                   redirect, timeout, cf, start_binding_call)

    cdef BindingCall _fetch_request(self, object input):
        """``fetch(input)``: a Request is forwarded (zero copy), anything else built;
        redirects are followed (the default)."""
        cdef InvocationContext caller = self._caller()
        if type(input) is _RequestType:
            request = fastbind_forward(input)  # the child's copy (_core_capi.h)
        else:
            request = _request_for_url(input)
            if request is None:
                request = _RequestType(input)
        inv = caller._child(self._target, _KIND_BINDING, self._props)
        if self._limits is not None:
            _open_scope(inv, self._limits)
        cdef BindingCall call = _new_call(inv, request, True)
        call.fetcher = self
        call.origin = input
        call.redirect_mode = 1
        return call

    cdef InvocationContext _caller(self):
        cdef InvocationContext caller = _current()
        if caller is None:
            raise FastbindError(
                f"env.{self._binding}.fetch() was called outside a fastbind invocation"
            )
        return caller

    def __repr__(self):
        if self._limits is not None:
            return f"<Fetcher {self._binding} -> {self._target.name} {self._limits!r}>"
        return f"<Fetcher {self._binding} -> {self._target.name}>"


@cython.final
cdef class FetchMethod:
    """``env.X.fetch``: Fetcher.fetch of one binding, with a C entry point for the
    common call, ``fetch(request)``, that skips keyword-argument parsing."""

    def __cinit__(self):
        self._vectorcall = <void*>_fetch_vectorcall

    def __init__(self):
        raise TypeError("FetchMethod is created by a Fetcher only")

    def __call__(self, input, *, method=None, headers=None, body=None, redirect="follow",
                 timeout=None, cf=None):
        # Calls from Python take _fetch_vectorcall when the fast paths are on; this
        # serves the others (``fetch`` itself would be this object again).
        return Fetcher.fetch(self._fetcher, input, method=method, headers=headers, body=body,
                             redirect=redirect, timeout=timeout, cf=cf)

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
        # Calls from Python take _rpc_vectorcall when the fast paths are on; this
        # serves the others.
        cdef InvocationContext caller = self._caller()
        if caller.handle.python_workers:
            _check_python_workers_args(args, kwargs)
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
        if self._fetcher._limits is not None:
            _open_scope(inv, self._fetcher._limits)
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
    if caller.handle.python_workers:
        for i in range(n + (0 if kwnames == NULL else PyTuple_GET_SIZE(<object>kwnames))):
            _check_python_workers_value(<object>args[i])
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


cdef int _check_python_workers_args(tuple args, dict kwargs) except -1:
    for value in args:
        _check_python_workers_value(value)
    for value in kwargs.values():
        _check_python_workers_value(value)
    return 0


cdef int _install_rpc_vectorcall() except -1:
    cdef RpcMethod probe = RpcMethod.__new__(RpcMethod)
    return fastbind_install_vectorcall(
        RpcMethod, <char*>&probe._vectorcall - <char*><PyObject*>probe)


_install_rpc_vectorcall()


def start_binding_call(Fetcher fetcher not None, request, int mode, origin):
    """A binding call of ``fetcher`` with ``request`` as it is (binding_fetch.py's
    ``start_call``): redirects followed (mode 1), refused (2) or returned (0)."""
    cdef InvocationContext caller = fetcher._caller()
    inv = caller._child(fetcher._target, _KIND_BINDING, fetcher._props)
    if fetcher._limits is not None:  # each hop a call of its own, with its own budget
        _open_scope(inv, fetcher._limits)
    cdef BindingCall call = _new_call(inv, request, True)
    if mode:
        call.fetcher = fetcher
        call.origin = origin
        call.redirect_mode = mode
    return call


cdef object _REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))


cdef inline bint _redirect_status(object response) noexcept:
    """Whether a Response's status is 301, 302, 303, 307 or 308 (read at its slot)."""
    cdef PyObject* status = FASTBIND_SLOT(response, _RESP_STATUS)
    if status == <PyObject*>_STATUS_200 or status == NULL or type(<object>status) is not int:
        return False
    return <object>status in _REDIRECT_STATUSES


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
    inv = caller._child(target, kind, _props_of(props))
    cdef RpcCall call = _new_rpc_call(inv, http)
    call.rpc_name = kind
    call.rpc_function = function
    call.rpc_args = args
    call.custom = True
    return call




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
                inv._finish(_ERROR, 0)
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
            self._exit(_ERROR, 0)
            raise
        slot.current = previous
        return 0

    @cython.final
    cdef void _exit(self, str outcome, int status) noexcept:
        global _live_invocations
        cdef InvocationContext inv = self.inv
        inv.pipeline.running -= 1
        _live_invocations -= 1
        self.coro = None
        self.slot = None
        if not self.borrowed:
            inv._finish(outcome, status)
        elif self.slot_token is not None:
            token = self.slot_token
            self.slot_token = None
            try:
                PyContextVar_Reset(_SLOT, token)
            except BaseException:  # finished from another context (e.g. closed by the GC)
                pass

    @cython.final
    cdef object _check_result(self, object value):
        # ``value`` is never assigned here: Cython then takes no reference of its own,
        # and the hand-over sees the reference counts the child left.
        cdef PyObject* copy
        if self.borrowed:
            self._exit(_OK, 0)
            return value
        if self.http:
            if type(value) is not _ResponseType and not isinstance(value, _ResponseType):
                self._exit(_ERROR, 0)
                raise TypeError(
                    f'Worker "{self.inv.handle.name}" fetch handler returned '
                    f"{type(value).__name__}, expected a Response"
                )
            if self.inv.parent is None:  # the top-level Response: the server's
                self._exit(_OK, fastbind_status_of(value, _RESP_STATUS))  # the ledger keeps its status
                return value
            # A child's Response: the caller gets its own (the same body object, the
            # headers copied on write), as the child gets a forwarded Request. (No try
            # block: entering one costs more than the copy.)
            copy = fastbind_hand_over(<PyObject*>value)
            if copy == NULL:
                error = fastbind_take_error()
                self._exit(_ERROR, 0)
                raise error
            handed = <object>copy
            Py_XDECREF(copy)
            self._exit(_OK, fastbind_status_of(handed, _RESP_STATUS))  # the ledger keeps its status
            return handed
        try:
            if self.inv.handle.python_workers:
                _check_python_workers_value(value)
            isolated = _isolated(value)
        except BaseException:
            self._exit(_ERROR, 0)
            raise
        self._exit(_OK, 0)
        return isolated

    @cython.final
    cdef int _send(self, object arg, object exc, PyObject** result) except? -1:
        if not self.started:
            if exc is not None:  # cancelled before it ever ran: the child never starts
                self.started = True
                self.request = None
                if not self.borrowed:
                    self.inv._finish(_CANCELED, 0)
                raise exc
            self._enter()
            arg = None
            if self.has_immediate:  # a synchronous RPC method has already returned
                value = self._check_result((<RpcCall>self).immediate)
                (<RpcCall>self).immediate = None
                Py_INCREF(value)
                result[0] = <PyObject*>value
                return 0
        elif self.following:
            return self._follow_step(arg, exc, result)
        elif self.coro is None:
            raise RuntimeError("cannot reuse already awaited binding call")
        cdef ExecutionSlot slot = self.slot
        cdef InvocationContext inv = self.inv
        cdef PipelineContext pipeline = inv.pipeline
        cdef InvocationContext previous = slot.current
        cdef int status
        cdef int metered = -1  # -1: not measured; else 1 when this step opened the slice
        global _running_scope
        if pipeline.cpu_measured:
            metered = _meter_enter(slot, previous, pipeline)
            if exc is None and (
                metered == 1 and pipeline.cpu_exceeded
                or inv.scope is not None and _scope_exceeded(inv.scope)
            ):
                exc = _cpu_limit_exceeded()  # stop the pipeline (or the scope) at its next step
            _running_scope = inv.scope
        slot.current = inv
        # C calls, no try block (see _enter): -1 is PYGEN_ERROR, the exception is set.
        if exc is None:
            status = fastbind_send(<PyObject*>self.coro, <PyObject*>arg, result)
        else:
            status = fastbind_throw(<PyObject*>self.coro, <PyObject*>exc, result)
        if status < 0:
            if metered >= 0 and inv.owns_scope and inv.scope.cpu_exceeded and not PyErr_ExceptionMatches(_CancelledError):
                PyErr_Clear()  # whatever the child raised, its budget is what ended it
                return self._over_budget(previous, metered)
            self._fail_step(previous, metered)
            return -1
        if metered >= 0 and inv.owns_scope and inv.scope.cpu_exceeded and status == 0:
            Py_XDECREF(result[0])
            result[0] = NULL
            return self._over_budget(previous, metered)
        self._leave(previous, metered)
        if status == 1:  # PYGEN_NEXT: the child yielded a future to the loop
            return 1
        value = <object>result[0]
        Py_XDECREF(result[0])
        result[0] = NULL
        value = self._check_result(value)
        if self.redirect_mode and _redirect_status(value):
            return self._start_following(value, result)
        Py_INCREF(value)
        result[0] = <PyObject*>value
        return 0

    @cython.final
    cdef int _start_following(self, object response, PyObject** result) except? -1:
        """The child answered a redirect: follow it (binding_fetch.py), or return it."""
        follower = _redirect_follower(self.fetcher, self.origin, self.redirect_mode, response,
                                      start_binding_call)
        self.origin = None
        if follower is None:  # no Location: the response is the answer
            Py_INCREF(response)
            result[0] = <PyObject*>response
            return 0
        self.following = True
        self.coro = follower
        return self._follow_step(None, None, result)

    @cython.final
    cdef int _follow_step(self, object arg, object exc, PyObject** result) except? -1:
        """One step of the coroutine that follows redirects. It runs as the caller (its
        hops are the caller's binding calls), so the slot is left as it is."""
        coro = self.coro
        if coro is None:
            raise RuntimeError("cannot reuse already awaited binding call")
        cdef int status
        if exc is None:
            status = fastbind_send(<PyObject*>coro, <PyObject*>arg, result)
        else:
            status = fastbind_throw(<PyObject*>coro, <PyObject*>exc, result)
        if status != 1:
            self.coro = None
        return status

    @cython.final
    cdef int _over_budget(self, InvocationContext previous, int metered) except 0:
        """The child, which opened a scope, has ended past its ``cpu_ms``: whatever it
        answered or raised, its caller gets WorkerCpuLimitError."""
        self._leave(previous, metered)
        self._exit(_EXCEEDED_CPU, 0)
        raise _worker_cpu_limit_error()

    @cython.final
    cdef void _fail(self, str outcome) noexcept:
        """``_exit(outcome)`` while an exception is being raised, which it keeps."""
        cdef PyObject* kind
        cdef PyObject* value
        cdef PyObject* tb
        PyErr_Fetch(&kind, &value, &tb)  # nothing the exit frees may run with it set
        self._exit(outcome, 0)
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
        self._exit(outcome, 0)
        PyErr_Restore(kind, value, tb)

    @cython.final
    cdef inline void _leave(self, InvocationContext previous, int metered) noexcept:
        if metered >= 0:
            _leave_metered(self.slot, self.inv, previous, metered)
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
        if self.following:  # the child has ended: only the follower is left
            coro, self.coro = self.coro, None
            if coro is not None:
                coro.close()
            return 0
        if self.coro is not None:
            try:
                self.coro.close()
            finally:
                self._exit(_CANCELED, 0)
        elif not self.started:
            self.started = True
            self.inv._finish(_CANCELED, 0)
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


cdef void _leave_metered(ExecutionSlot slot, InvocationContext inv, InvocationContext previous,
                         int opened) noexcept:
    """The metered part of BindingCall._leave, out of line: the unmetered step stays small."""
    _meter_exit(slot, inv, inv.pipeline, opened)
    _leave_scope(previous)


cdef int _binding_call_send(object self, object arg, PyObject** result) except? -1:
    return (<BindingCall>self)._send(arg, None, result)


# env.X.fetch and RPC stubs: `await call` reaches _send without Cython's wrappers.
fastbind_install_send(BindingCall, 0, <fastbind_send_fn>_binding_call_send)
fastbind_install_send(RpcCall, 0, <fastbind_send_fn>_binding_call_send)  # slots copied from the base


cdef str _M_GET = "GET"


cdef object _request_for_url(object url):
    """``Request(url)`` for an http(s) URL that _quick_url accepts (all of which
    check_url accepts too), built here; None for anything else. ``fetch("https://...")``
    would otherwise spend most of a binding call in Request.__init__'s Python checks."""
    if not _quick_url(url):
        return None
    return _new_request(_M_GET, url, [], None, None)
