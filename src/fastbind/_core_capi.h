/* C helpers of fastbind._core that Cython cannot express directly. */
#ifndef FASTBIND_CORE_CAPI_H
#define FASTBIND_CORE_CAPI_H

#include <Python.h>
#include <string.h>
#include <structmember.h>

/* For the few small helpers of the hot path that GCC would otherwise leave out of
   line in some of their callers. */
#if defined(__GNUC__) || defined(__clang__)
#define FASTBIND_ALWAYS_INLINE inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define FASTBIND_ALWAYS_INLINE __forceinline
#else
#define FASTBIND_ALWAYS_INLINE inline
#endif

/* Every error exit of Cython's code calls __Pyx_AddTraceback, which Cython defines
   further down this file. Declared cold here, first, it makes GCC treat each block
   that leads to it as cold and move it out of its function's hot code (hot/cold
   partitioning, which otherwise needs a training profile): the fast paths of the
   core then take fewer instruction-cache lines. */
#if defined(__GNUC__) && !defined(__clang__)
static void __Pyx_AddTraceback(const char *funcname, int c_line, int py_line,
                               const char *filename) __attribute__((cold, noinline));

/* The same way, the small steps of a binding call and of a top-level request are
   inlined into them: what GCC does with a training profile, and not without one,
   because each of these functions has several callers or is also a type's slot (a
   tp_new or tp_dealloc). The names are Cython's for the functions of _core.pyx; a
   changed signature there is a compile error here. */
#ifdef CYTHON_VECTORCALL_TPNEW  /* Cython 3.2+ names its tp_new functions so */
#if CYTHON_VECTORCALL_TPNEW
#define FASTBIND_TP_NEW_ARGS PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames
#else
#define FASTBIND_TP_NEW_ARGS PyObject *a, PyObject *k
#endif
/* The two objects every binding call makes: its awaitable and the child's invocation;
   the pipeline and the driver of a top-level request. */
static PyObject *__pyx_tp_new_vectorcall_8fastbind_5_core_BindingCall(
    PyTypeObject *t, FASTBIND_TP_NEW_ARGS) __attribute__((always_inline));
static PyObject *__pyx_tp_new_vectorcall_8fastbind_5_core_InvocationContext(
    PyTypeObject *t, FASTBIND_TP_NEW_ARGS) __attribute__((always_inline));
static PyObject *__pyx_tp_new_vectorcall_8fastbind_5_core_PipelineContext(
    PyTypeObject *t, FASTBIND_TP_NEW_ARGS) __attribute__((always_inline));
static PyObject *__pyx_tp_new_vectorcall_8fastbind_5_core_TopLevelCall(
    PyTypeObject *t, FASTBIND_TP_NEW_ARGS) __attribute__((always_inline));
#undef FASTBIND_TP_NEW_ARGS
#endif
/* The driver's dealloc ends with BindingCall's. */
static void __pyx_tp_dealloc_8fastbind_5_core_BindingCall(PyObject *o) __attribute__((always_inline));
/* The end of the child invocation and of its ledger entry, into the end of the call. */
struct __pyx_obj_8fastbind_5_core_PipelineContext;
struct __pyx_obj_8fastbind_5_core_InvocationContext;
static CYTHON_INLINE void __pyx_f_8fastbind_5_core_15PipelineContext__finish_entry(
    struct __pyx_obj_8fastbind_5_core_PipelineContext *, Py_ssize_t, PyObject *, int64_t)
    __attribute__((always_inline));
static CYTHON_INLINE void __pyx_f_8fastbind_5_core_17InvocationContext__finish(
    struct __pyx_obj_8fastbind_5_core_InvocationContext *, PyObject *) __attribute__((always_inline));
/* The Request of a raw request, and the raw entry point's two steps, into it. */
static CYTHON_INLINE PyObject *__pyx_f_8fastbind_5_core__new_request(
    PyObject *, PyObject *, PyObject *, PyObject *, PyObject *) __attribute__((always_inline));
struct __pyx_obj_8fastbind_5_core_RawEntry;
struct __pyx_obj_8fastbind_5_core_DispatchPlan;
struct __pyx_obj_8fastbind_5_core_WorkerHandle;
struct __pyx_obj_8fastbind_5_core_TopLevelCall;
static CYTHON_INLINE PyObject *__pyx_f_8fastbind_5_core__raw_serve(
    struct __pyx_obj_8fastbind_5_core_RawEntry *, PyObject *, PyObject *, PyObject *, PyObject *)
    __attribute__((always_inline));
static struct __pyx_obj_8fastbind_5_core_TopLevelCall *__pyx_f_8fastbind_5_core__raw_call(
    struct __pyx_obj_8fastbind_5_core_DispatchPlan *, PyObject *,
    struct __pyx_obj_8fastbind_5_core_WorkerHandle *, PyObject *, PyObject *, PyObject *,
    PyObject *) __attribute__((always_inline));

/* (GCC warns that a function whose address is taken, as a slot's is, "might not be
   inlinable"; it still inlines every direct call.) */
#pragma GCC diagnostic ignored "-Wattributes"
#endif

/* Offsets of __slots__ members of the Fetch API classes, found once at import: the
   hot path then reads and writes those fields as C does for its own types, while
   the classes stay plain Python (the pure twin shares them). */
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

static FASTBIND_ALWAYS_INLINE void
fastbind_slot_set(PyObject *obj, Py_ssize_t off, PyObject *v) {
    PyObject **p = (PyObject **)((char *)obj + off);
    PyObject *old = *p;
    Py_INCREF(v);
    *p = v;
    Py_XDECREF(old);
}

/* A new instance of a plain class without running __new__ or __init__ (what
   PyType_GenericNew does: tp_alloc, then any dict is made when first needed). */
static inline PyObject *fastbind_alloc_instance(PyObject *type) {
    return PyType_GenericNew((PyTypeObject *)type, NULL, NULL);
}

/* The value of context variable ``var`` in the running context, as a new reference:
   None when it is unset or None, NULL with TypeError when it is not an instance of
   ``type`` (the variable is the core's, but a Context's keys can be reached). Inlined
   at each use: the look-up is on every binding call, twice. */
static FASTBIND_ALWAYS_INLINE PyObject *
fastbind_context_value(PyObject *var, PyTypeObject *type) {
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

/* Give instances of ``type`` a vectorcall entry point, stored at ``offset`` in each
   instance: a call from Python then passes its arguments as a C array, where tp_call
   would pack them in a tuple and the keywords in a dict. tp_call stays for
   PyObject_Call. */
static int fastbind_install_vectorcall(PyObject *type, Py_ssize_t offset) {
    PyTypeObject *t = (PyTypeObject *)type;
    if (offset <= 0 || t->tp_call == NULL) {
        PyErr_SetString(PyExc_TypeError, "no vectorcall slot");
        return -1;
    }
    t->tp_vectorcall_offset = offset;
    t->tp_flags |= Py_TPFLAGS_HAVE_VECTORCALL;
    return 0;
}

/* How `await binding_call` reaches the core. On CPython 3.11 the SEND opcode calls
   PyIter_Send, which uses am_send when the type has it: the child's Response comes
   back without a StopIteration. From 3.12, SEND calls tp_iternext instead (am_send
   only serves PyIter_Send's other callers), so the call's end has to be raised as
   StopIteration(value): it is raised here, in C, where Cython's __next__ would add a
   traceback entry, with a frame object, for each of its functions on the way out
   (about 10,000 instructions a call, 2.6x the floor, on 3.12). Both slots call the
   same C implementation, with PyIter_Send's convention: 1 and the value yielded, 0
   and the value returned, -1 with the exception set. */
typedef int (*fastbind_send_fn)(PyObject *, PyObject *, PyObject **);
static fastbind_send_fn fastbind_send_impl = NULL;

static PySendResult fastbind_am_send(PyObject *self, PyObject *arg, PyObject **result) {
    return (PySendResult)fastbind_send_impl(self, arg, result);
}

/* Raise StopIteration(value), as a generator's return does, for the SEND that reads its
   value at once: the instance is made by the class's tp_new with its value set in
   place (StopIteration.__init__ would only set the same field), and raised as it is
   (3.12's PyErr_SetObject would look for an exception being handled to chain). */
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
/* From 3.12 every binding call ends in a StopIteration (see above), and making one
   (its args tuple, a GC object, their frees) is about a third of what the call adds
   to a plain await. SEND takes the value out at once and drops the exception, so one
   instance is kept and raised again: only while the core's is its only reference (a
   caller of next() that kept the exception gets a new one the next time), and cleared
   of what it carried when the awaitable that raised it is freed (release below), so
   it keeps no Response alive. PyErr_SetRaisedException chains nothing to it, and what
   a propagation through Python frames added (traceback, notes...) is dropped on reuse.
   3.11 uses am_send and raises no StopIteration on this path. */
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
    /* The collector untracks a tuple that holds only untracked objects (None, after
       a release), taking it for immutable: tracked again, a cycle through it that a
       caller of next() makes with the value stays collectable. */
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
        /* Someone kept it (an ``except StopIteration as e`` still alive): it is theirs. */
        fastbind_stop = NULL;
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

/* The awaitable types' tp_dealloc, each followed by the release (after it: the object
   is gone before anything the release frees can run code). */
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
        if (t->tp_dealloc == fastbind_stop_wrappers[i]) return 0;  /* already */
        if (fastbind_stop_deallocs[i] == NULL) {
            fastbind_stop_deallocs[i] = t->tp_dealloc;
            t->tp_dealloc = fastbind_stop_wrappers[i];
            return 0;
        }
    }
    PyErr_SetString(PyExc_TypeError, "no room for another awaitable type");
    return -1;
}

#else
static void fastbind_raise_stop(PyObject *value) {
    PyObject *stop = fastbind_new_stop(value);
    if (stop == NULL) return;
    PyErr_SetObject(PyExc_StopIteration, stop);
    Py_DECREF(stop);
}

static int fastbind_release_stop_on_dealloc(PyTypeObject *t) { (void)t; return 0; }
#endif

/* tp_iternext over an implementation with that convention. */
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

static PyObject *fastbind_iternext(PyObject *self) {
    return fastbind_iternext_of(fastbind_send_impl, self);
}

static int fastbind_install_am_send(PyObject *type, fastbind_send_fn impl) {
    PyTypeObject *t = (PyTypeObject *)type;
    if (t->tp_as_async == NULL) {
        PyErr_SetString(PyExc_TypeError, "type has no async slots");
        return -1;
    }
    if (fastbind_send_impl != NULL && fastbind_send_impl != impl) {
        PyErr_SetString(PyExc_TypeError, "one implementation serves every BindingCall type");
        return -1;
    }
    fastbind_send_impl = impl;
    t->tp_as_async->am_send = fastbind_am_send;
    t->tp_iternext = fastbind_iternext;
    return fastbind_release_stop_on_dealloc(t);
}

/* Object pools for the plain-Python classes the hot path allocates (Request and
   Headers: a child's copy of both on every binding call). They are heap types with
   __slots__, so CPython frees them through subtype_dealloc and allocates them through
   object_new: generic paths that walk the type, run the trashcan and return the
   memory to the allocator. A pool replaces the type's tp_dealloc with one that
   clears the slots and keeps up to FASTBIND_POOL_SIZE blocks, and the core takes its
   own copies from there, as Cython's freelists do for compiled classes.

   Installed only when the class cannot need more than that: no __del__, no
   finalizer, no __dict__, no weak references (checked at install). Subclasses keep
   CPython's subtype_dealloc, which calls the pool's dealloc as their base dealloc
   once their own part is cleared: then it clears the base slots and frees the
   memory (never pooled: the block has the subclass's size). */
#define FASTBIND_POOL_SIZE 64
#define FASTBIND_POOL_SLOTS 8

typedef struct {
    PyTypeObject *type;
    Py_ssize_t offsets[FASTBIND_POOL_SLOTS];
    int n_offsets;
    int n_free;
    PyObject *free[FASTBIND_POOL_SIZE];
} fastbind_pool;

static fastbind_pool fastbind_pools[2];  /* 0: Request, 1: Headers */

static inline void fastbind_pool_dealloc(fastbind_pool *pool, PyObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    int i;
    /* A __del__ given to the class after the pool was installed still runs (for a
       subclass, subtype_dealloc has run it already); it may resurrect the object. */
    if (type == pool->type && type->tp_finalize != NULL
            && PyObject_CallFinalizerFromDealloc(self) < 0) {
        return;
    }
    /* Untracked before the slots are cleared, as subtype_dealloc does (a subclass's
       subtype_dealloc tracks the object again before calling its base dealloc). */
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

/* A new instance of the pool's class with every slot empty, as object_new gives
   (a pooled block's slots were all cleared when it was freed). */
static FASTBIND_ALWAYS_INLINE PyObject *fastbind_pool_new(int which) {
    fastbind_pool *pool = &fastbind_pools[which];
    PyObject *o;
    if (pool->n_free > 0) {
        o = pool->free[--pool->n_free];
        (void)PyObject_Init(o, pool->type);
        PyObject_GC_Track(o);
        return o;
    }
    return pool->type->tp_alloc(pool->type, 0);
}

/* Pool ``which`` for ``type``, whose slots are ``names`` (a tuple of str). */
static int fastbind_pool_install(int which, PyObject *type_obj, PyObject *names) {
    PyTypeObject *type = (PyTypeObject *)type_obj;
    fastbind_pool *pool = &fastbind_pools[which];
    PyTypeObject *base;
    Py_ssize_t i, n = PyTuple_GET_SIZE(names);
    if (!PyType_Check(type_obj) || !(type->tp_flags & Py_TPFLAGS_HEAPTYPE)
            || !(type->tp_flags & Py_TPFLAGS_HAVE_GC) || n > FASTBIND_POOL_SLOTS) {
        return 0;  /* not a plain __slots__ class: keep CPython's own paths */
    }
    /* The class and its bases (mixins with empty __slots__) up to object: nothing but
       the named slots to clear, and no finalizer to run. */
    for (base = type; base != &PyBaseObject_Type; base = base->tp_base) {
        if (base == NULL || base->tp_itemsize != 0 || base->tp_finalize != NULL
                || base->tp_del != NULL || base->tp_dictoffset != 0
                || base->tp_weaklistoffset != 0
                || (base != type && base->tp_basicsize != (Py_ssize_t)sizeof(PyObject))) {
            return 0;
        }
    }
    for (i = 0; i < n; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        Py_ssize_t off = fastbind_slot_offset(type_obj, PyUnicode_AsUTF8(name));
        if (off < 0) return -1;
        pool->offsets[i] = off;
    }
    if (type->tp_basicsize != (Py_ssize_t)(sizeof(PyObject) + n * sizeof(PyObject *))) {
        return 0;  /* slots the pool does not know about */
    }
    Py_INCREF(type_obj);  /* kept for the process's life, as the pooled blocks are */
    pool->type = type;
    pool->n_offsets = (int)n;
    pool->n_free = 0;
    type->tp_dealloc = which == 0 ? fastbind_pool0_dealloc : fastbind_pool1_dealloc;
    return 1;
}

/* A driver's step called through a pointer declared without Cython's exception
   check: -1 with the exception set comes back as it is, for the caller to take with
   fastbind_take_error (a Cython ``try`` would save the exception state first). */
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

/* Where Request and Headers keep their fields (offsets of their __slots__), set once
   at import, for the copy a binding call makes (fastbind_forward). */
typedef struct {
    Py_ssize_t url, method, headers, body, body_used;  /* Request */
    Py_ssize_t items, shared, raw;                     /* Headers */
    PyTypeObject *headers_type;
    int pooled_request, pooled_headers;
    PyObject *body_used_message;
    PyObject *forward_request;  /* request.forward_request: the path for odd headers */
} fastbind_request_layout;

static fastbind_request_layout fastbind_req;

#define FASTBIND_SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

static inline void fastbind_slot_store(PyObject *fresh, Py_ssize_t off, PyObject *v) {
    Py_INCREF(v);  /* ``fresh`` was just allocated: the slot is empty */
    FASTBIND_SLOT(fresh, off) = v;
}

static inline PyObject *fastbind_new_pooled(int which, int pooled, PyTypeObject *type) {
    return pooled ? fastbind_pool_new(which) : type->tp_alloc(type, 0);
}

/* The child's copy of Request ``src`` (of the exact class, checked by the caller): the
   same body object, the headers copied on write, and ``src`` marked used when it has a body. NULL with an exception set. In C rather
   than Cython because it runs on every binding call: written out by hand, it is a
   few cache lines of straight code. */
static PyObject *fastbind_forward(PyObject *src) {
    const fastbind_request_layout *L = &fastbind_req;
    PyObject *url = FASTBIND_SLOT(src, L->url), *method = FASTBIND_SLOT(src, L->method);
    PyObject *headers = FASTBIND_SLOT(src, L->headers), *body = FASTBIND_SLOT(src, L->body);
    PyObject *used = FASTBIND_SLOT(src, L->body_used), *copy, *items, *req;
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
    if (body != Py_None) {
        if (used == Py_True) {
            PyErr_SetObject(PyExc_TypeError, L->body_used_message);
            return NULL;
        }
        Py_INCREF(Py_True);
        FASTBIND_SLOT(src, L->body_used) = Py_True;
        Py_DECREF(used);
    }
    items = FASTBIND_SLOT(headers, L->items);
    if (items == NULL) {
        PyErr_SetString(PyExc_AttributeError, "'Headers' object has no attribute '_items'");
        return NULL;
    }
    copy = fastbind_new_pooled(1, L->pooled_headers, L->headers_type);
    if (copy == NULL) return NULL;
    /* Copy-on-write, as Headers.copy(): both sides share one list until one writes;
       raw pairs not decoded yet (items is None) are shared as they are. */
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
    req = fastbind_new_pooled(0, L->pooled_request, Py_TYPE(src));
    if (req == NULL) {
        Py_DECREF(copy);
        return NULL;
    }
    fastbind_slot_store(req, L->url, url);
    fastbind_slot_store(req, L->method, method);
    FASTBIND_SLOT(req, L->headers) = copy;
    fastbind_slot_store(req, L->body, body);
    fastbind_slot_store(req, L->body_used, Py_False);
    return req;
}

/* handler(a, b, c): a function handler's coroutine, NULL with the exception set.
   Through the function's own vectorcall, as Cython's fast calls do: PyObject_Vectorcall
   adds a thread-state fetch and a check of the result on each call. */
static inline PyObject *fastbind_call3(PyObject *f, PyObject *a, PyObject *b, PyObject *c) {
    PyObject *args[4] = {NULL, a, b, c};
    vectorcallfunc call = PyVectorcall_Function(f);
    if (call != NULL) return call(f, args + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    return PyObject_Vectorcall(f, args + 1, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

/* PyIter_Send with the am_send slot called in place (a coroutine's, on every step). */
static inline int fastbind_send(PyObject *iter, PyObject *arg, PyObject **result) {
    PyAsyncMethods *am = Py_TYPE(iter)->tp_as_async;
    if (am != NULL && am->am_send != NULL) return (int)am->am_send(iter, arg, result);
    return (int)PyIter_Send(iter, arg, result);
}

/* coro.throw(exc) with PyIter_Send's convention: 1 and the yielded value, 0 and the
   returned value, or -1 with the exception set. */
static int fastbind_throw(PyObject *coro, PyObject *exc, PyObject **result) {
    PyObject *kind, *value, *tb, *returned;
    PyObject *r = PyObject_CallMethod(coro, "throw", "O", exc);
    if (r != NULL) {
        *result = r;
        return 1;
    }
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) return -1;
    PyErr_Fetch(&kind, &value, &tb);
    PyErr_NormalizeException(&kind, &value, &tb);
    returned = (value != NULL && PyObject_TypeCheck(value, (PyTypeObject *)PyExc_StopIteration))
        ? ((PyStopIterationObject *)value)->value : Py_None;
    Py_INCREF(returned);
    *result = returned;
    Py_XDECREF(kind);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return 0;
}

/* The ledger's clock. Each binding call stamps its start and end; on x86-64 with an
   invariant TSC (constant rate, not stopped in sleep states: CPUID 0x80000007 EDX
   bit 8) that is the time-stamp counter, about half the cost of clock_gettime under
   a hypervisor's clock source. Ticks become nanoseconds only when the ledger is read,
   at a rate measured against CLOCK_MONOTONIC over the whole time since import, so the
   longer the process runs the finer the rate. Elsewhere ticks are nanoseconds. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <x86intrin.h>
#include <cpuid.h>
#define FASTBIND_HAVE_TSC 1
#else
#define FASTBIND_HAVE_TSC 0
#endif
#include <time.h>

static int fastbind_use_tsc = 0;
static int64_t fastbind_tick_origin = 0;   /* ticks at calibration start */
static int64_t fastbind_ns_origin = 0;     /* CLOCK_MONOTONIC ns at the same moment */
static double fastbind_ns_per_tick = 1.0;

static inline int64_t fastbind_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

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

/* Chooses the clock; with the TSC, a first rate from a 200 us wait. */
static void fastbind_ticks_init(int allow_tsc) {
#if FASTBIND_HAVE_TSC
    unsigned int eax, ebx, ecx, edx;
    int64_t t0, n0, n1;
    if (allow_tsc && __get_cpuid(0x80000007, &eax, &ebx, &ecx, &edx) && (edx & (1u << 8))) {
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
}

/* The ledger's blocks: block k holds 8 << k entries, from index 8 * (2^k - 1). Entries
   never move once written (no copy as the ledger grows, as a doubling array makes)
   and a pipeline with one subrequest still allocates room for eight only. */
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

/* The same for the top-level dispatch driver (a second type, a second implementation). */
static fastbind_send_fn fastbind_top_send_impl = NULL;

static PySendResult fastbind_top_am_send(PyObject *self, PyObject *arg, PyObject **result) {
    return (PySendResult)fastbind_top_send_impl(self, arg, result);
}

static PyObject *fastbind_top_iternext(PyObject *self) {
    return fastbind_iternext_of(fastbind_top_send_impl, self);
}

static int fastbind_install_top_am_send(PyObject *type, fastbind_send_fn impl) {
    PyTypeObject *t = (PyTypeObject *)type;
    if (t->tp_as_async == NULL) {
        PyErr_SetString(PyExc_TypeError, "type has no async slots");
        return -1;
    }
    if (t->tp_base != NULL && t->tp_base->tp_as_async == t->tp_as_async) {
        /* (TopLevelCall extends BindingCall: writing here would change both) */
        PyErr_SetString(PyExc_TypeError, "type shares its async slots with its base");
        return -1;
    }
    fastbind_top_send_impl = impl;
    t->tp_as_async->am_send = fastbind_top_am_send;
    t->tp_iternext = fastbind_top_iternext;
    return fastbind_release_stop_on_dealloc(t);
}

/* Freelists for compiled classes that Cython cannot give one (subclasses: Cython keeps
   freelists for base classes only), installed as their tp_alloc and tp_free and
   working as Cython's own: a freed block keeps its memory and is cleared when taken. */
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

/* A class's tp_dealloc preceded by a C clean-up: what a Cython __dealloc__ does, less
   the save and restore of the current exception Cython puts around every __dealloc__
   (two calls into libpython per object). The clean-up must run no Python code and
   raise nothing. One class has one: the pipeline, whose ledger is C memory. */
typedef void (*fastbind_cleanup_t)(PyObject *);
static destructor fastbind_cleanup_base = NULL;
static fastbind_cleanup_t fastbind_cleanup_fn = NULL;

static void fastbind_cleanup_dealloc(PyObject *o) {
    fastbind_cleanup_fn(o);
    fastbind_cleanup_base(o);
}

static int fastbind_install_cleanup(PyObject *type_obj, fastbind_cleanup_t cleanup) {
    PyTypeObject *type = (PyTypeObject *)type_obj;
    if (fastbind_cleanup_fn != NULL || (type->tp_flags & Py_TPFLAGS_HEAPTYPE)) {
        PyErr_SetString(PyExc_TypeError, "a clean-up is for one static class");
        return -1;
    }
    fastbind_cleanup_fn = cleanup;
    fastbind_cleanup_base = type->tp_dealloc;
    type->tp_dealloc = fastbind_cleanup_dealloc;
    return 0;
}

/* A new instance of a __slots__ class, as object.__new__(type) but without its checks
   (the caller knows the type: no __init__ to skip, no arguments). */
static inline PyObject *fastbind_alloc(PyObject *type) {
    return ((PyTypeObject *)type)->tp_alloc((PyTypeObject *)type, 0);
}

/* ``func(arg)`` through ``call``, func's vectorcall entry point as
   fastbind_vectorcall_of() gave it (NULL: func has none): PyObject_CallOneArg less
   its look-ups and its check of the result (that a NULL comes with an exception), for
   a getter asked on every top-level request (the loop's get_task_factory). */
static inline void *fastbind_vectorcall_of(PyObject *func) {
    return (void *)PyVectorcall_Function(func);
}

static inline PyObject *fastbind_call_one(void *call, PyObject *func, PyObject *arg) {
    if (call != NULL) {
        return ((vectorcallfunc)call)(func, &arg, 1, NULL);
    }
    return PyObject_CallOneArg(func, arg);
}

/* ``func()`` the same way (asyncio.get_running_loop, where the loop is not read from
   the thread state's dict: CPython 3.13+). */
static inline PyObject *fastbind_call_none(void *call, PyObject *func) {
    if (call != NULL) {
        return ((vectorcallfunc)call)(func, NULL, 0, NULL);
    }
    return PyObject_CallNoArgs(func);
}

#endif
