/* C helpers of fastbind.core._core that Cython cannot express directly.

   Only the public C API (including its non-limited, documented parts: PyTypeObject's
   fields, PyMemberDef, vectorcall) is used here. Everything that relies on CPython's
   private layout or undocumented behaviour is in _fast_paths.h, behind its switch. */
#ifndef FASTBIND_CAPI_H
#define FASTBIND_CAPI_H

#include <Python.h>
#include <errno.h>
#include <string.h>
#include <structmember.h>
#include <pthread.h>
#include <time.h>

#include "_fast_paths.h"

#if PY_VERSION_HEX >= 0x030C0000
#define FASTBIND_MEMBER_OBJECT Py_T_OBJECT_EX
#else
#define FASTBIND_MEMBER_OBJECT T_OBJECT_EX
#endif

/* --- __slots__ fields ----------------------------------------------------------------

   The offset of the __slots__ member ``name`` of ``type``, from the PyMemberDef tables
   of the class and its bases (tp_members: what the member descriptor itself reads).
   The hot path then reads and writes those fields as C does its own, while the
   classes stay plain Python (the pure twin shares them). */
static Py_ssize_t fastbind_slot_offset(PyObject *type_obj, const char *name) {
    PyObject *mro = ((PyTypeObject *)type_obj)->tp_mro;
    Py_ssize_t i, n = mro == NULL ? 0 : PyTuple_GET_SIZE(mro);
    for (i = 0; i < n; i++) {
        PyTypeObject *t = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        PyMemberDef *m;
        for (m = t->tp_members; m != NULL && m->name != NULL; m++) {
            if (strcmp(m->name, name) == 0) {
                if (m->type != FASTBIND_MEMBER_OBJECT || (m->flags & READONLY)) break;
                return m->offset;
            }
        }
    }
    PyErr_Format(PyExc_TypeError, "%R.%s is not a writable __slots__ member", type_obj, name);
    return -1;
}

#define FASTBIND_SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

static inline PyObject *fastbind_slot_get(PyObject *obj, Py_ssize_t off, const char *name) {
    PyObject *v = FASTBIND_SLOT(obj, off);
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "'%s' object has no attribute '%s'",
                     Py_TYPE(obj)->tp_name, name);
        return NULL;
    }
    Py_INCREF(v);
    return v;
}

/* A Response's HTTP status (its int slot at ``off``) as the ledger keeps it: 0 when it
   is unset or not an int of 100..999. Never fails. */
static inline int fastbind_status_of(PyObject *response, Py_ssize_t off) {
    PyObject *v = FASTBIND_SLOT(response, off);
    long status;
    if (v == NULL || !PyLong_CheckExact(v)) return 0;
    status = PyLong_AsLong(v);
    if (status < 100 || status > 999) {
        PyErr_Clear();  /* an overflow sets one */
        return 0;
    }
    return (int)status;
}

static inline void fastbind_slot_set(PyObject *obj, Py_ssize_t off, PyObject *v) {
    PyObject **p = (PyObject **)((char *)obj + off);
    PyObject *old = *p;
    Py_INCREF(v);
    *p = v;
    Py_XDECREF(old);
}

/* A slot's value, borrowed, or NULL when it is unset. */
static inline PyObject *fastbind_slot_peek(PyObject *obj, Py_ssize_t off) {
    return FASTBIND_SLOT(obj, off);
}

/* A slot of an object just allocated (empty): no old value to release. */
static inline void fastbind_slot_store(PyObject *fresh, Py_ssize_t off, PyObject *v) {
    Py_INCREF(v);
    FASTBIND_SLOT(fresh, off) = v;
}

/* A new instance of a plain class without running __new__ or __init__. */
static inline PyObject *fastbind_alloc_instance(PyObject *type) {
    return PyType_GenericNew((PyTypeObject *)type, NULL, NULL);
}

/* --- context variables and calls ------------------------------------------------------ */

/* The value of context variable ``var`` as a new reference: None when it is unset or
   None, NULL with TypeError when it is not an instance of ``type``. */
static inline PyObject *fastbind_context_value(PyObject *var, PyTypeObject *type) {
    PyObject *value = NULL;
    if (PyContextVar_Get(var, NULL, &value) < 0) return NULL;
    if (value != NULL && Py_TYPE(value) == type) return value;
    if (value == NULL) Py_RETURN_NONE;
    if (value == Py_None || PyObject_TypeCheck(value, type)) return value;
    PyErr_Format(PyExc_TypeError, "context variable %R holds a %.200s, not a %.200s",
                 var, Py_TYPE(value)->tp_name, type->tp_name);
    Py_DECREF(value);
    return NULL;
}

/* handler(a, b, c) through the function's own vectorcall entry point. */
static inline PyObject *fastbind_call3(PyObject *f, PyObject *a, PyObject *b, PyObject *c) {
    PyObject *args[4] = {NULL, a, b, c};
    vectorcallfunc call = PyVectorcall_Function(f);
    if (call != NULL) return call(f, args + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    return PyObject_Vectorcall(f, args + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

static inline void *fastbind_vectorcall_of(PyObject *func) {
    return (void *)PyVectorcall_Function(func);
}

/* ``func(arg)`` / ``func()`` through ``call``, func's vectorcall entry point (or NULL). */
static inline PyObject *fastbind_call_one(void *call, PyObject *func, PyObject *arg) {
    if (call != NULL) return ((vectorcallfunc)call)(func, &arg, 1, NULL);
    return PyObject_CallOneArg(func, arg);
}

static inline PyObject *fastbind_call_none(void *call, PyObject *func) {
    if (call != NULL) return ((vectorcallfunc)call)(func, NULL, 0, NULL);
    return PyObject_CallNoArgs(func);
}

/* --- driving coroutines ---------------------------------------------------------------- */

/* PyIter_Send with the am_send slot called in place (a coroutine's, on every step). */
static inline int fastbind_send(PyObject *iter, PyObject *arg, PyObject **result) {
    PyAsyncMethods *am = Py_TYPE(iter)->tp_as_async;
    if (am != NULL && am->am_send != NULL) return (int)am->am_send(iter, arg, result);
    return (int)PyIter_Send(iter, arg, result);
}

/* coro.throw(exc) with PyIter_Send's convention. */
static int fastbind_throw(PyObject *coro, PyObject *exc, PyObject **result) {
    PyObject *kind, *value, *tb, *returned = NULL;
    PyObject *r = PyObject_CallMethod(coro, "throw", "O", exc);
    if (r != NULL) {
        *result = r;
        return 1;
    }
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) return -1;
    PyErr_Fetch(&kind, &value, &tb);
    PyErr_NormalizeException(&kind, &value, &tb);
    if (value != NULL) returned = PyObject_GetAttrString(value, "value");
    if (returned == NULL) {
        PyErr_Clear();
        returned = Py_NewRef(Py_None);
    }
    *result = returned;
    Py_XDECREF(kind);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return 0;
}

/* A driver's step called through a pointer declared without Cython's exception check:
   -1 with the exception set comes back as it is, for fastbind_take_error. */
typedef int (*fastbind_step_fn)(PyObject *, PyObject *, PyObject *, PyObject **);

static inline int fastbind_step(fastbind_step_fn f, PyObject *self, PyObject *arg,
                                PyObject *exc, PyObject **result) {
    return f(self, arg, exc, result);
}

/* The exception being raised, normalized, with its traceback; the error is cleared. */
static PyObject *fastbind_take_error(void) {
    PyObject *kind, *value, *tb;
    PyErr_Fetch(&kind, &value, &tb);
    PyErr_NormalizeException(&kind, &value, &tb);
    if (tb != NULL && value != NULL) PyException_SetTraceback(value, tb);
    Py_XDECREF(kind);
    Py_XDECREF(tb);
    return value;
}

/* --- weak references (PyWeakref_GetRef is 3.13+; PyWeakref_GetObject is gone in 3.15) - */

/* The referent of ``ref`` as a new reference, or NULL (no exception) when it is dead. */
static inline PyObject *fastbind_weakref_get(PyObject *ref) {
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *obj = NULL;
    if (PyWeakref_GetRef(ref, &obj) < 0) PyErr_Clear();
    return obj;
#else
    PyObject *obj = PyWeakref_GetObject(ref);
    if (obj == NULL) {
        PyErr_Clear();
        return NULL;
    }
    return obj == Py_None ? NULL : Py_NewRef(obj);
#endif
}

/* --- CPU clocks ---------------------------------------------------------------------

   The CPU metering reads this thread's CPU time (CLOCK_THREAD_CPUTIME_ID), and the
   watchdog thread reads the same clock of the loop's thread through
   pthread_getcpuclockid. Where that call does not exist (macOS), the watchdog reads
   the process's CPU clock instead: other threads' work then counts against a running
   pipeline's budget while the watchdog decides whether to interrupt it (the budget
   itself is still charged from the thread's own clock). */
#if defined(__APPLE__) || !defined(_POSIX_THREAD_CPUTIME) || _POSIX_THREAD_CPUTIME < 0
#define FASTBIND_HAVE_THREAD_CPU_CLOCK 0
#else
#define FASTBIND_HAVE_THREAD_CPU_CLOCK 1
#endif

/* The clock another thread may read for this thread's CPU time. */
static inline clockid_t fastbind_watch_clock(void) {
#if FASTBIND_HAVE_THREAD_CPU_CLOCK
    clockid_t id;
    if (pthread_getcpuclockid(pthread_self(), &id) == 0) return id;
#endif
    return CLOCK_PROCESS_CPUTIME_ID;
}

static inline int64_t fastbind_clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* --- what the watchdog thread reads without the GIL -------------------------------------

   The loop's thread publishes the slice it runs in a few int64 words; the watchdog
   thread reads them while it does not hold the GIL, so that when it looks does not
   depend on when the loop's thread lets the GIL go (it does so between steps, where no
   slice is open, unless a step runs past the switch interval). Acquire/release order
   makes a slice's fields visible before its id; the reader checks the id again after
   reading them. */
#if defined(__GNUC__) || defined(__clang__)
static inline int64_t fastbind_load(const int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void fastbind_store(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void fastbind_fence(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
#else
static inline int64_t fastbind_load(const int64_t *p) { return *(volatile const int64_t *)p; }
static inline void fastbind_store(int64_t *p, int64_t v) { *(volatile int64_t *)p = v; }
static inline void fastbind_fence(void) {}
#endif

/* A clock's reading in ns, or -1 when it cannot be read (a thread that has ended). */
static inline int64_t fastbind_clock_or_none(int64_t clock) {
    struct timespec ts;
    if (clock_gettime((clockid_t)clock, &ts) != 0) return -1;
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline void fastbind_sleep_ns(int64_t ns) {
    struct timespec ts;
    ts.tv_sec = (time_t)(ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

/* --- a coarse clock: a count that goes up every half second ----------------------------

   Kept by a thread of its own that never takes the GIL: a Python thread needs the GIL
   for each tick, and waits for it for seconds while the loop's thread runs short steps.
   Only that thread writes the count (and a child after fork, alone then); started under
   the GIL. */
static int64_t fastbind_coarse_ticks = 0;
static int64_t fastbind_coarse_period_ns = 500000000;
static int fastbind_coarse_running = 0;

static void *fastbind_coarse_run(void *unused) {
    (void)unused;
    for (;;) {
        fastbind_sleep_ns(fastbind_load(&fastbind_coarse_period_ns));
        fastbind_store(&fastbind_coarse_ticks, fastbind_load(&fastbind_coarse_ticks) + 1);
    }
    return NULL;
}

/* Start the thread unless it runs; 0, or an errno value. */
static inline int fastbind_coarse_start(void) {
    pthread_t thread;
    pthread_attr_t attr;
    int rc;
    if (fastbind_coarse_running)
        return 0;
    rc = pthread_attr_init(&attr);
    if (rc != 0)
        return rc;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    rc = pthread_create(&thread, &attr, fastbind_coarse_run, NULL);
    pthread_attr_destroy(&attr);
    if (rc == 0)
        fastbind_coarse_running = 1;
    return rc;
}

/* In a child after fork: the thread was not copied; the count moves on, so that what
   waits for the next tick does not wait for a thread that the next start() makes. */
static inline void fastbind_coarse_after_fork(void) {
    fastbind_coarse_running = 0;
    fastbind_store(&fastbind_coarse_ticks, fastbind_load(&fastbind_coarse_ticks) + 1);
}

/* --- the ledger's blocks --------------------------------------------------------------

   Block k holds 8 << k entries, from index 8 * (2^k - 1): entries never move once
   written, and a pipeline with one subrequest allocates room for eight only. */
static inline int fastbind_ledger_block(Py_ssize_t index, Py_ssize_t *offset) {
    unsigned long long q = ((unsigned long long)index >> 3) + 1;
    int k;
#if defined(__GNUC__) || defined(__clang__)
    k = 63 - __builtin_clzll(q);
#else
    k = 0;
    while (q >>= 1) k++;
#endif
    *offset = index - (Py_ssize_t)(8 * ((1ULL << k) - 1));
    return k;
}

/* --- the child's copy of a Request, the caller's copy of a Response ------------------ */

/* Where Request, Response and Headers keep their fields, set once at import. */
typedef struct {
    Py_ssize_t url, method, headers, body, body_used, cf;  /* Request (cf: "_cf", often unset) */
    Py_ssize_t items, shared, raw;                     /* Headers */
    Py_ssize_t r_status, r_headers, r_body, r_body_used, r_web_socket;  /* Response */
    PyTypeObject *headers_type;
    PyTypeObject *response_type;
    PyObject *forward_request;  /* request.forward_request: the path for odd headers */
    PyObject *hand_over_response;  /* rpc_values.hand_over_response: the same, for a Response */
} fastbind_request_layout;

static fastbind_request_layout fastbind_req;

/* A copy of Headers ``headers`` that shares its list until either side writes (as
   Headers.copy()); raw pairs not decoded yet (items is None) are shared as they are. */
static PyObject *fastbind_headers_cow(PyObject *headers) {
    const fastbind_request_layout *L = &fastbind_req;
    PyObject *items = FASTBIND_SLOT(headers, L->items), *copy;
    if (items == NULL) {
        PyErr_SetString(PyExc_AttributeError, "'Headers' object has no attribute '_items'");
        return NULL;
    }
    copy = fastbind_pool_new(1, L->headers_type);
    if (copy == NULL) return NULL;
    fastbind_slot_store(copy, L->items, items);
    fastbind_slot_store(copy, L->shared, Py_True);
    if (items == Py_None) {
        PyObject *raw = FASTBIND_SLOT(headers, L->raw);
        if (raw == NULL) {
            Py_DECREF(copy);
            PyErr_SetString(PyExc_AttributeError, "'Headers' object has no attribute '_raw'");
            return NULL;
        }
        fastbind_slot_store(copy, L->raw, raw);
    }
    if (FASTBIND_SLOT(headers, L->shared) != Py_True) {
        PyObject *old = FASTBIND_SLOT(headers, L->shared);
        Py_INCREF(Py_True);
        FASTBIND_SLOT(headers, L->shared) = Py_True;
        Py_XDECREF(old);
    }
    return copy;
}

/* Mark a message's body taken (``body`` and ``used_at``: its fields' offsets); 1 when
   it was read already (the caller takes the Python path, which raises the error). */
static inline int fastbind_take_body(PyObject *msg, Py_ssize_t body, Py_ssize_t used_at) {
    PyObject *used = FASTBIND_SLOT(msg, used_at);
    if (FASTBIND_SLOT(msg, body) == Py_None) return 0;
    if (used == Py_True) return 1;
    Py_INCREF(Py_True);
    FASTBIND_SLOT(msg, used_at) = Py_True;
    Py_XDECREF(used);
    return 0;
}

/* The child's copy of Request ``src`` (of the exact class, checked by the caller): the
   same body object, the headers copied on write, and ``src`` marked used when it has
   a body. NULL with an exception set. Written out in C because it runs on every
   binding call. */
static PyObject *fastbind_forward(PyObject *src) {
    const fastbind_request_layout *L = &fastbind_req;
    PyObject *url = FASTBIND_SLOT(src, L->url), *method = FASTBIND_SLOT(src, L->method);
    PyObject *headers = FASTBIND_SLOT(src, L->headers), *body = FASTBIND_SLOT(src, L->body);
    PyObject *used = FASTBIND_SLOT(src, L->body_used), *copy, *req;
    if (url == NULL || method == NULL || headers == NULL || body == NULL || used == NULL) {
        PyErr_SetString(PyExc_AttributeError,
                        "a Request field (url, method, headers, body or body_used) is unset");
        return NULL;
    }
    if (Py_TYPE(headers) != L->headers_type) {
        /* Something else was assigned to request.headers (a dict, pairs, a subclass):
           the Python path makes it a Headers, as the pure core does. */
        return PyObject_CallOneArg(L->forward_request, src);
    }
    if (fastbind_take_body(src, L->body, L->body_used))
        return PyObject_CallOneArg(L->forward_request, src);  /* it raises, with fastbind's note */
    copy = fastbind_headers_cow(headers);
    if (copy == NULL) return NULL;
    req = fastbind_pool_new(0, Py_TYPE(src));
    if (req == NULL) {
        Py_DECREF(copy);
        return NULL;
    }
    fastbind_slot_store(req, L->url, url);
    fastbind_slot_store(req, L->method, method);
    FASTBIND_SLOT(req, L->headers) = copy;
    fastbind_slot_store(req, L->body, body);
    fastbind_slot_store(req, L->body_used, Py_False);
    if (FASTBIND_SLOT(src, L->cf) != NULL)
        fastbind_slot_store(req, L->cf, FASTBIND_SLOT(src, L->cf));
    return req;
}

/* What a binding call hands its caller for the Response ``src`` its child returned:
   as a forwarded Request, the same body object and the headers copied on write, and
   ``src`` marked used when it has a body, so the child keeps nothing the caller holds
   (its WebSocket, when it answers an upgrade, goes with it). NULL with an exception set. */
static PyObject *fastbind_hand_over(PyObject *src) {
    const fastbind_request_layout *L = &fastbind_req;
    PyObject *status = FASTBIND_SLOT(src, L->r_status), *headers = FASTBIND_SLOT(src, L->r_headers);
    PyObject *body = FASTBIND_SLOT(src, L->r_body), *web_socket, *copy, *resp;
    if (Py_TYPE(src) != L->response_type || headers == NULL || Py_TYPE(headers) != L->headers_type
            || status == NULL || body == NULL || FASTBIND_SLOT(src, L->r_body_used) == NULL) {
        /* A subclass, unset fields, or headers that are not a Headers: the Python path. */
        return PyObject_CallOneArg(L->hand_over_response, src);
    }
    if (fastbind_sole_response(src, headers)) return Py_NewRef(src);  /* (a fast path) */
    if (fastbind_take_body(src, L->r_body, L->r_body_used))
        return PyObject_CallOneArg(L->hand_over_response, src);  /* it raises */
    copy = fastbind_headers_cow(headers);
    if (copy == NULL) return NULL;
    resp = fastbind_pool_new(2, L->response_type);
    if (resp == NULL) {
        Py_DECREF(copy);
        return NULL;
    }
    fastbind_slot_store(resp, L->r_status, status);
    FASTBIND_SLOT(resp, L->r_headers) = copy;
    fastbind_slot_store(resp, L->r_body, body);
    fastbind_slot_store(resp, L->r_body_used, Py_False);
    web_socket = FASTBIND_SLOT(src, L->r_web_socket);
    if (web_socket != NULL)
        fastbind_slot_store(resp, L->r_web_socket, web_socket);
    return resp;
}

#endif
