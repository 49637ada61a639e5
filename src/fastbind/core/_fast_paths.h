/* The fast paths: every technique of the compiled core that depends on CPython's
   private layout or on behaviour the C API does not document, behind one switch.

   Built only for the CPython versions the test suite runs on (3.11 to 3.13) with the
   GIL; off on any other version, on free-threaded builds and under the limited API.
   Where built, FASTBIND_FAST_PATHS=0 turns them off at import. With them off, the core
   takes the public C API path beside each of them and behaves identically (the whole
   suite runs both ways in CI); only its speed differs. docs/design.md lists them.

   1. Awaitable slots: am_send and tp_iternext of the core's awaitables, installed
      after the types are ready, so that `await call` skips Cython's method wrappers.
   2. One kept StopIteration (3.12+), reused while the core holds its only reference.
   3. Pools of Request, Headers and Response blocks, by replacing those classes' tp_dealloc.
   4. Freelists for two compiled subclasses (Cython keeps freelists for bases only).
   5. Vectorcall entry points installed on ready types (env.X.fetch, RPC stubs, the
      raw entry point).
   6. The running loop read from the thread state's dict where asyncio keeps it.
   7. The x86 time-stamp counter as the ledger's clock.
   8. Reference counts as proof of ownership: a Response's header list taken over
      when nobody else holds it (the raw answer, http/_raw.pyx); a child's Response
      handed to its caller as it is when nothing of the child still holds it. */

#ifndef FASTBIND_FAST_PATHS_H
#define FASTBIND_FAST_PATHS_H

#include <Python.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(PYPY_VERSION) || defined(Py_LIMITED_API) || defined(Py_GIL_DISABLED) \
    || PY_VERSION_HEX < 0x030B0000 || PY_VERSION_HEX >= 0x030E0000
#define FASTBIND_FAST_PATHS_BUILT 0
#else
#define FASTBIND_FAST_PATHS_BUILT 1
#endif

/* On when built and not turned off (set once, at import, by fastbind_fast_paths_init). */
static int fastbind_fast = 0;

static int fastbind_fast_paths_init(int wanted) {
    fastbind_fast = FASTBIND_FAST_PATHS_BUILT && wanted;
    return fastbind_fast;
}

/* The calling convention of the core's send implementations, as PyIter_Send's:
   1 and the value yielded, 0 and the value returned, -1 with the exception set. */
typedef int (*fastbind_send_fn)(PyObject *, PyObject *, PyObject **);

/* Monotonic nanoseconds (public: POSIX). */
static inline int64_t fastbind_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

#if FASTBIND_FAST_PATHS_BUILT

/* --- 1 and 2: the awaitables' slots ----------------------------------------------

   On CPython 3.11 the SEND opcode calls PyIter_Send, which uses am_send when the
   type has it: the child's Response comes back without a StopIteration. From 3.12,
   SEND calls tp_iternext instead (am_send only serves PyIter_Send's other callers),
   so the call's end is raised as StopIteration(value), here in C rather than from
   Cython's __next__, which adds a traceback entry per function on the way out. */

static PyObject *fastbind_new_stop(PyObject *value) {
    PyTypeObject *kind = (PyTypeObject *)PyExc_StopIteration;
    PyObject *args = PyTuple_Pack(1, value), *stop;
    if (args == NULL) return NULL;
    stop = kind->tp_new(kind, args, NULL);
    Py_DECREF(args);
    if (stop == NULL) return NULL;
    Py_INCREF(value);
    Py_XSETREF(((PyStopIterationObject *)stop)->value, value);
    return stop;
}

#if PY_VERSION_HEX >= 0x030C0000
/* Making a StopIteration per call is a third of what a call adds to a plain await on
   3.12. SEND takes the value out at once and drops the exception, so one instance is
   kept and raised again while the core's is its only reference, and cleared of what
   it carried when the awaitable that raised it is freed, so that it keeps no Response
   alive. */
static PyObject *fastbind_stop = NULL;

static void fastbind_raise_stop(PyObject *value) {
    PyStopIterationObject *stop = (PyStopIterationObject *)fastbind_stop;
    PyObject *old_value, *old_item, *old_tb, *old_context, *old_cause, *old_notes, *old_dict;
    if (stop == NULL || Py_REFCNT(stop) != 1 || stop->args == NULL
            || Py_REFCNT(stop->args) != 1 || PyTuple_GET_SIZE(stop->args) != 1) {
        PyObject *fresh = fastbind_new_stop(value);
        if (fresh == NULL) return;
        Py_XSETREF(fastbind_stop, Py_NewRef(fresh));
        PyErr_SetRaisedException(fresh);
        return;
    }
    Py_INCREF(stop);  /* the reference raised; a reuse from a __del__ below sees two */
    old_value = stop->value;
    old_item = PyTuple_GET_ITEM(stop->args, 0);
    old_tb = stop->traceback;
    old_context = stop->context;
    old_cause = stop->cause;
    old_notes = stop->notes;
    old_dict = stop->dict;
    Py_INCREF(value);
    Py_INCREF(value);
    stop->value = value;
    PyTuple_SET_ITEM(stop->args, 0, value);
    /* The collector untracks a tuple holding only untracked objects: tracked again, a
       cycle through it that a caller of next() makes with the value stays collectable. */
    if (!PyObject_GC_IsTracked(stop->args)) PyObject_GC_Track(stop->args);
    stop->traceback = stop->context = stop->cause = stop->notes = stop->dict = NULL;
    stop->suppress_context = 0;
    /* Dropped once the instance is whole again: any of them may run code when freed. */
    Py_XDECREF(old_value);
    Py_XDECREF(old_item);
    Py_XDECREF(old_tb);
    Py_XDECREF(old_context);
    Py_XDECREF(old_cause);
    Py_XDECREF(old_notes);
    Py_XDECREF(old_dict);
    PyErr_SetRaisedException((PyObject *)stop);
}

/* After an awaitable of the core is freed: the kept StopIteration lets go of its value. */
static void fastbind_stop_release(void) {
    PyStopIterationObject *stop = (PyStopIterationObject *)fastbind_stop;
    PyObject *old_value, *old_item;
    if (stop == NULL || stop->value == Py_None) return;
    if (Py_REFCNT(stop) != 1 || Py_REFCNT(stop->args) != 1) {
        fastbind_stop = NULL;  /* someone kept it (``except StopIteration as e``): theirs */
        Py_DECREF(stop);
        return;
    }
    old_value = stop->value;
    old_item = PyTuple_GET_ITEM(stop->args, 0);
    stop->value = Py_None;  /* (immortal from 3.12: no reference to take) */
    PyTuple_SET_ITEM(stop->args, 0, Py_None);
    Py_XDECREF(old_value);
    Py_XDECREF(old_item);
}

/* The awaitable types' tp_dealloc, each followed by the release. */
#define FASTBIND_STOP_TYPES 3
static destructor fastbind_stop_deallocs[FASTBIND_STOP_TYPES];
static void fastbind_stop_dealloc0(PyObject *o) { fastbind_stop_deallocs[0](o); fastbind_stop_release(); }
static void fastbind_stop_dealloc1(PyObject *o) { fastbind_stop_deallocs[1](o); fastbind_stop_release(); }
static void fastbind_stop_dealloc2(PyObject *o) { fastbind_stop_deallocs[2](o); fastbind_stop_release(); }
static const destructor fastbind_stop_wrappers[FASTBIND_STOP_TYPES] = {
    fastbind_stop_dealloc0, fastbind_stop_dealloc1, fastbind_stop_dealloc2};

static int fastbind_release_stop_on_dealloc(PyTypeObject *t) {
    int i;
    for (i = 0; i < FASTBIND_STOP_TYPES; i++) {
        if (t->tp_dealloc == fastbind_stop_wrappers[i]) return 0;
        if (fastbind_stop_deallocs[i] == NULL) {
            fastbind_stop_deallocs[i] = t->tp_dealloc;
            t->tp_dealloc = fastbind_stop_wrappers[i];
            return 0;
        }
    }
    PyErr_SetString(PyExc_TypeError, "no room for another awaitable type");
    return -1;
}

#else  /* 3.11 */
static void fastbind_raise_stop(PyObject *value) {
    PyObject *stop = fastbind_new_stop(value);
    if (stop == NULL) return;
    PyErr_SetObject(PyExc_StopIteration, stop);
    Py_DECREF(stop);
}

static int fastbind_release_stop_on_dealloc(PyTypeObject *t) { (void)t; return 0; }
#endif

/* Two implementations: binding calls (BindingCall, RpcCall) and top-level calls. */
static fastbind_send_fn fastbind_send_impls[2];

static PySendResult fastbind_am_send0(PyObject *s, PyObject *a, PyObject **r) {
    return (PySendResult)fastbind_send_impls[0](s, a, r);
}
static PySendResult fastbind_am_send1(PyObject *s, PyObject *a, PyObject **r) {
    return (PySendResult)fastbind_send_impls[1](s, a, r);
}

static inline PyObject *fastbind_iternext_of(fastbind_send_fn impl, PyObject *self) {
    PyObject *result = NULL;
    int status = impl(self, Py_None, &result);
    if (status == 1) return result;
    if (status == 0) {
        fastbind_raise_stop(result);
        Py_DECREF(result);
    }
    return NULL;
}
static PyObject *fastbind_iternext0(PyObject *self) { return fastbind_iternext_of(fastbind_send_impls[0], self); }
static PyObject *fastbind_iternext1(PyObject *self) { return fastbind_iternext_of(fastbind_send_impls[1], self); }

/* Give ``type`` (its own async slots, not its base's) the send implementation
   ``which``; 0 when installed or when the fast paths are off. */
static int fastbind_install_send(PyObject *type, int which, fastbind_send_fn impl) {
    PyTypeObject *t = (PyTypeObject *)type;
    if (!fastbind_fast) return 0;
    if (which < 0 || which > 1 || t->tp_as_async == NULL) {
        PyErr_SetString(PyExc_TypeError, "no async slots to install a send implementation in");
        return -1;
    }
    if (fastbind_send_impls[which] != NULL && fastbind_send_impls[which] != impl) {
        PyErr_SetString(PyExc_TypeError, "one implementation per kind of awaitable");
        return -1;
    }
    fastbind_send_impls[which] = impl;
    t->tp_as_async->am_send = which == 0 ? fastbind_am_send0 : fastbind_am_send1;
    t->tp_iternext = which == 0 ? fastbind_iternext0 : fastbind_iternext1;
    PyType_Modified(t);
    return fastbind_release_stop_on_dealloc(t);
}

/* --- 3: pools of Request, Headers and Response blocks -----------------------------

   Heap types with __slots__: CPython frees them through subtype_dealloc and allocates
   them through object_new, generic paths that walk the type and return the memory to
   the allocator. A pool replaces the type's tp_dealloc with one that clears the slots
   and keeps up to FASTBIND_POOL_SIZE blocks, as Cython's freelists do for compiled
   classes. Installed only on a plain __slots__ class: no __del__, no finalizer, no
   __dict__, no weak references. A subclass keeps subtype_dealloc, which calls the
   pool's dealloc as its base dealloc (that block is freed, never pooled). */
#define FASTBIND_POOL_SIZE 64
#define FASTBIND_POOL_SLOTS 8

typedef struct {
    PyTypeObject *type;
    Py_ssize_t offsets[FASTBIND_POOL_SLOTS];
    int n_offsets;
    int n_free;
    PyObject *free[FASTBIND_POOL_SIZE];
} fastbind_pool;

static fastbind_pool fastbind_pools[3];  /* 0: Request, 1: Headers, 2: Response */

static inline void fastbind_pool_dealloc(fastbind_pool *pool, PyObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    int i;
    /* A __del__ given to the class later still runs; it may resurrect the object. */
    if (type == pool->type && type->tp_finalize != NULL
            && PyObject_CallFinalizerFromDealloc(self) < 0) {
        return;
    }
    PyObject_GC_UnTrack(self);
    for (i = 0; i < pool->n_offsets; i++) {
        PyObject **p = (PyObject **)((char *)self + pool->offsets[i]);
        Py_CLEAR(*p);
    }
    if (type == pool->type && pool->n_free < FASTBIND_POOL_SIZE) {
        pool->free[pool->n_free++] = self;
    } else {
        type->tp_free(self);
    }
    Py_DECREF(type);  /* a heap type's instances own a reference to it */
}

static void fastbind_pool0_dealloc(PyObject *self) { fastbind_pool_dealloc(&fastbind_pools[0], self); }
static void fastbind_pool1_dealloc(PyObject *self) { fastbind_pool_dealloc(&fastbind_pools[1], self); }
static void fastbind_pool2_dealloc(PyObject *self) { fastbind_pool_dealloc(&fastbind_pools[2], self); }

/* An instance of ``type`` with every slot empty: from pool ``which`` when it serves
   that type, else as object_new allocates it. */
static inline PyObject *fastbind_pool_new(int which, PyTypeObject *type) {
    fastbind_pool *pool = &fastbind_pools[which];
    PyObject *o;
    if (pool->type == type && pool->n_free > 0) {
        o = pool->free[--pool->n_free];
        (void)PyObject_Init(o, type);
        PyObject_GC_Track(o);
        return o;
    }
    return type->tp_alloc(type, 0);
}

/* Pool ``which`` for ``type`` with slot offsets ``offsets``: 1 when installed, 0 when
   the fast paths are off or the class is not a plain __slots__ class. */
static int fastbind_pool_install(int which, PyObject *type_obj, const Py_ssize_t *offsets, int n) {
    PyTypeObject *type = (PyTypeObject *)type_obj, *base;
    fastbind_pool *pool = &fastbind_pools[which];
    if (!fastbind_fast || !PyType_Check(type_obj) || !(type->tp_flags & Py_TPFLAGS_HEAPTYPE)
            || !(type->tp_flags & Py_TPFLAGS_HAVE_GC) || n > FASTBIND_POOL_SLOTS
            || type->tp_basicsize != (Py_ssize_t)(sizeof(PyObject) + n * sizeof(PyObject *))) {
        return 0;
    }
    for (base = type; base != &PyBaseObject_Type; base = base->tp_base) {
        if (base == NULL || base->tp_itemsize != 0 || base->tp_finalize != NULL
                || base->tp_del != NULL || base->tp_dictoffset != 0
                || base->tp_weaklistoffset != 0
                || (base != type && base->tp_basicsize != (Py_ssize_t)sizeof(PyObject))) {
            return 0;
        }
    }
    memcpy(pool->offsets, offsets, (size_t)n * sizeof(Py_ssize_t));
    Py_INCREF(type_obj);  /* kept for the process's life, as the pooled blocks are */
    pool->type = type;
    pool->n_offsets = n;
    pool->n_free = 0;
    type->tp_dealloc = which == 0 ? fastbind_pool0_dealloc
        : which == 1 ? fastbind_pool1_dealloc : fastbind_pool2_dealloc;
    return 1;
}

/* --- 8: reference counts as proof of ownership --------------------------------------

   A binding call gives its caller a copy of the Response the child returned, so that
   the child cannot change what the caller holds. When the core's reference is the
   Response's only one and the Response's is its Headers' only one, nothing of the
   child can reach either any more: the Response itself is the caller's. */
static inline int fastbind_sole_response(PyObject *resp, PyObject *headers) {
    return fastbind_fast && Py_REFCNT(resp) == 1 && Py_REFCNT(headers) == 1;
}

/* --- 4: freelists for two compiled subclasses --------------------------------------- */
#define FASTBIND_FREELISTS 2
#define FASTBIND_FREELIST_SIZE 16

typedef struct {
    PyTypeObject *type;
    int n_free;
    PyObject *free[FASTBIND_FREELIST_SIZE];
} fastbind_freelist;

static fastbind_freelist fastbind_freelists[FASTBIND_FREELISTS];

static inline fastbind_freelist *fastbind_freelist_of(PyTypeObject *type) {
    int i;
    for (i = 0; i < FASTBIND_FREELISTS; i++) {
        if (fastbind_freelists[i].type == type) return &fastbind_freelists[i];
    }
    return NULL;
}

static PyObject *fastbind_freelist_alloc(PyTypeObject *type, Py_ssize_t nitems) {
    fastbind_freelist *list = fastbind_freelist_of(type);
    if (list != NULL && nitems == 0 && list->n_free > 0) {
        PyObject *o = list->free[--list->n_free];
        memset(o, 0, (size_t)type->tp_basicsize);
        (void)PyObject_Init(o, type);
        PyObject_GC_Track(o);  /* as PyType_GenericAlloc returns it */
        return o;
    }
    return PyType_GenericAlloc(type, nitems);
}

static void fastbind_freelist_free(void *block) {
    PyObject *o = (PyObject *)block;  /* untracked by the class's tp_dealloc */
    fastbind_freelist *list = fastbind_freelist_of(Py_TYPE(o));
    if (list != NULL && list->n_free < FASTBIND_FREELIST_SIZE) {
        list->free[list->n_free++] = o;
        return;
    }
    PyObject_GC_Del(o);
}

static int fastbind_freelist_install(PyObject *type_obj, int which) {
    PyTypeObject *type = (PyTypeObject *)type_obj;
    if (!fastbind_fast) return 0;
    if (which < 0 || which >= FASTBIND_FREELISTS || fastbind_freelists[which].type != NULL
            || (type->tp_flags & Py_TPFLAGS_HEAPTYPE) || !(type->tp_flags & Py_TPFLAGS_HAVE_GC)
            || type->tp_itemsize != 0 || type->tp_free != PyObject_GC_Del) {
        PyErr_SetString(PyExc_TypeError, "a freelist is for one static GC class");
        return -1;
    }
    fastbind_freelists[which].type = type;
    type->tp_alloc = fastbind_freelist_alloc;
    type->tp_free = fastbind_freelist_free;
    return 0;
}

/* --- 5: vectorcall entry points ----------------------------------------------------- */

/* Give instances of ``type`` a vectorcall entry point stored at ``offset`` in each
   instance: a call from Python then passes its arguments as a C array, where tp_call
   packs a tuple and a dict. tp_call stays for PyObject_Call. */
static int fastbind_install_vectorcall(PyObject *type, Py_ssize_t offset) {
    PyTypeObject *t = (PyTypeObject *)type;
    if (!fastbind_fast) return 0;
    if (offset <= 0 || t->tp_call == NULL) {
        PyErr_SetString(PyExc_TypeError, "no vectorcall slot");
        return -1;
    }
    t->tp_vectorcall_offset = offset;
    t->tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL;
    return 0;
}

/* --- 6: the running loop -------------------------------------------------------------

   Every top-level request asks which loop is running, to check that the core's task
   factory is on it. asyncio keeps the running loop in the thread state's dict under
   "__asyncio_running_event_loop__": 3.11 keeps a holder { PyObject_HEAD; PyObject
   *rl_loop; pid_t rl_pid; } there (and asyncio calls getpid() per call to compare),
   3.12 the loop itself (or None). 3.13 keeps it in the thread state's own struct and
   is not read here. Either layout is used only once fastbind_learn_holder() has
   checked it against a loop asyncio itself returned; the dict look-up is skipped while
   the thread's dict is unchanged (its PEP 509 version). */
typedef struct {
    PyObject_HEAD
    PyObject *rl_loop;
    pid_t rl_pid;
} fastbind_loop_holder;

static PyTypeObject *fastbind_holder_type = NULL;  /* 3.11: the holder's class, once checked */
static int fastbind_loop_in_dict = 0;              /* 3.12: the loop itself, once checked */
static int fastbind_learn_tries = 0;
static PyObject *fastbind_holder_key = NULL;
static pid_t fastbind_pid = 0;                     /* this process: set at import and fork */

static inline PyObject *fastbind_holder_in(PyObject *dict) {
    PyObject *holder;
    if (dict == NULL || fastbind_holder_key == NULL) return NULL;
    holder = PyDict_GetItemWithError(dict, fastbind_holder_key);
    if (holder == NULL && PyErr_Occurred()) PyErr_Clear();  /* a look-up only: ask asyncio */
    return holder;
}

#if PY_VERSION_HEX < 0x030D0000
static PyObject *fastbind_seen_dict = NULL;
static uint64_t fastbind_seen_version = 0;
static PyObject *fastbind_seen_value = NULL;
#endif

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"  /* ma_version_tag, 3.12 */
#endif
static inline PyObject *fastbind_holder_here(void) {
    PyObject *dict = PyThreadState_GetDict(), *value;
#if PY_VERSION_HEX < 0x030D0000
    if (dict != NULL && dict == fastbind_seen_dict
            && ((PyDictObject *)dict)->ma_version_tag == fastbind_seen_version) {
        return fastbind_seen_value;
    }
    value = fastbind_holder_in(dict);
    if (value != NULL) {
        fastbind_seen_dict = dict;
        fastbind_seen_version = ((PyDictObject *)dict)->ma_version_tag;
        fastbind_seen_value = value;
    }
#else
    value = fastbind_holder_in(dict);
#endif
    return value;
}
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

/* The running loop (borrowed), or NULL with no exception: then ask asyncio. */
static inline PyObject *fastbind_running_loop(void) {
    PyObject *value;
    if (fastbind_holder_type == NULL && !fastbind_loop_in_dict) return NULL;
    value = fastbind_holder_here();
    if (value == NULL) return NULL;
    if (fastbind_loop_in_dict) return value == Py_None ? NULL : value;
    if (Py_TYPE(value) != fastbind_holder_type
            || ((fastbind_loop_holder *)value)->rl_pid != fastbind_pid) {
        return NULL;
    }
    return ((fastbind_loop_holder *)value)->rl_loop;
}

/* ``loop`` is what asyncio.get_running_loop() just returned: learn which layout the
   dict's value has, if it has one of the two. */
static void fastbind_learn_holder(PyObject *loop) {
    PyObject *holder;
    if (!fastbind_fast || fastbind_holder_type != NULL || fastbind_loop_in_dict
            || fastbind_learn_tries >= 8) {
        return;
    }
    fastbind_learn_tries++;
    holder = fastbind_holder_here();
    if (holder == NULL) return;
#if PY_VERSION_HEX >= 0x030C0000
    if (holder == loop) fastbind_loop_in_dict = 1;
#else
    if (holder != loop
            && Py_TYPE(holder)->tp_basicsize == (Py_ssize_t)sizeof(fastbind_loop_holder)
            && Py_TYPE(holder)->tp_itemsize == 0
            && ((fastbind_loop_holder *)holder)->rl_loop == loop
            && ((fastbind_loop_holder *)holder)->rl_pid == getpid()) {
        Py_INCREF(Py_TYPE(holder));
        fastbind_holder_type = Py_TYPE(holder);
    }
#endif
}

/* At import (with the key) and in a forked child (key NULL: keep it). */
static int fastbind_running_loop_init(PyObject *key) {
    if (key != NULL) {
        Py_INCREF(key);
        Py_XSETREF(fastbind_holder_key, key);
    }
    fastbind_pid = getpid();
    return 0;
}

static int fastbind_running_loop_is_read_directly(void) {
    return fastbind_holder_type != NULL || fastbind_loop_in_dict;
}

#else  /* not built: the public paths only */

static int fastbind_install_send(PyObject *t, int w, fastbind_send_fn f) { (void)t; (void)w; (void)f; return 0; }
static inline PyObject *fastbind_pool_new(int which, PyTypeObject *type) { (void)which; return type->tp_alloc(type, 0); }
static int fastbind_pool_install(int w, PyObject *t, const Py_ssize_t *o, int n) { (void)w; (void)t; (void)o; (void)n; return 0; }
static int fastbind_freelist_install(PyObject *t, int w) { (void)t; (void)w; return 0; }
static int fastbind_install_vectorcall(PyObject *t, Py_ssize_t o) { (void)t; (void)o; return 0; }
static inline PyObject *fastbind_running_loop(void) { return NULL; }
static void fastbind_learn_holder(PyObject *loop) { (void)loop; }
static int fastbind_running_loop_init(PyObject *key) { (void)key; return 0; }
static int fastbind_running_loop_is_read_directly(void) { return 0; }
static inline int fastbind_sole_response(PyObject *r, PyObject *h) { (void)r; (void)h; return 0; }

#endif  /* FASTBIND_FAST_PATHS_BUILT */

/* --- 7: the ledger's clock -------------------------------------------------------------

   Each binding call stamps its start and end. With the fast paths, on x86-64 with an
   invariant TSC (CPUID 0x80000007 EDX bit 8), that is the time-stamp counter, about
   half the cost of clock_gettime under a hypervisor's clock source; ticks become
   nanoseconds only when the ledger is read, at a rate measured against
   CLOCK_MONOTONIC over the whole time since import. Otherwise (other CPUs, the fast
   paths off, FASTBIND_CLOCK=monotonic) ticks are CLOCK_MONOTONIC nanoseconds. */
#if FASTBIND_FAST_PATHS_BUILT && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <x86intrin.h>
#include <cpuid.h>
#define FASTBIND_HAVE_TSC 1
#else
#define FASTBIND_HAVE_TSC 0
#endif

static int fastbind_use_tsc = 0;
static int64_t fastbind_tick_origin = 0;   /* ticks at calibration start */
static int64_t fastbind_ns_origin = 0;     /* CLOCK_MONOTONIC ns at the same moment */
static double fastbind_ns_per_tick = 1.0;

static inline int64_t fastbind_ticks(void) {
#if FASTBIND_HAVE_TSC
    if (fastbind_use_tsc) return (int64_t)__rdtsc();
#endif
    return fastbind_monotonic_ns();
}

/* Nanoseconds per tick, measured over everything since the start. */
static double fastbind_tick_rate(void) {
    int64_t ticks, ns;
    if (!fastbind_use_tsc) return 1.0;
    ticks = fastbind_ticks() - fastbind_tick_origin;
    ns = fastbind_monotonic_ns() - fastbind_ns_origin;
    if (ticks > 0 && ns > 1000000) fastbind_ns_per_tick = (double)ns / (double)ticks;
    return fastbind_ns_per_tick;
}

/* Monotonic ns of a tick stamp, at the rate ``rate`` from fastbind_tick_rate(). */
static inline int64_t fastbind_ticks_to_ns(int64_t ticks, double rate) {
    if (!fastbind_use_tsc) return ticks;
    return fastbind_ns_origin + (int64_t)((double)(ticks - fastbind_tick_origin) * rate);
}

/* Chooses the clock (1: the TSC); with the TSC, a first rate from a 200 us wait. */
static int fastbind_ticks_init(int allow_tsc) {
#if FASTBIND_HAVE_TSC
    unsigned int eax, ebx, ecx, edx;
    int64_t t0, n0, n1;
    if (fastbind_fast && allow_tsc && __get_cpuid(0x80000007, &eax, &ebx, &ecx, &edx)
            && (edx & (1u << 8))) {
        fastbind_use_tsc = 1;
        n0 = fastbind_monotonic_ns();
        t0 = (int64_t)__rdtsc();
        do { n1 = fastbind_monotonic_ns(); } while (n1 - n0 < 200000);
        fastbind_ns_per_tick = (double)(n1 - n0) / (double)((int64_t)__rdtsc() - t0);
        fastbind_tick_origin = t0;
        fastbind_ns_origin = n0;
        if (!(fastbind_ns_per_tick > 0.0)) fastbind_use_tsc = 0;
    }
#endif
    (void)allow_tsc;
    return fastbind_use_tsc;
}

#endif
