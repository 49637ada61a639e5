/* C helpers of fastbind._core that Cython cannot express directly. */
#ifndef FASTBIND_CORE_CAPI_H
#define FASTBIND_CORE_CAPI_H

#include <Python.h>
#include <structmember.h>

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

static inline void fastbind_slot_set(PyObject *obj, Py_ssize_t off, PyObject *v) {
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

/* am_send lets `await binding_call` hand back the child's Response without raising
   StopIteration: PyIter_Send (the SEND opcode) uses it when the type has it. */
typedef int (*fastbind_send_fn)(PyObject *, PyObject *, PyObject **);
static fastbind_send_fn fastbind_send_impl = NULL;

static PySendResult fastbind_am_send(PyObject *self, PyObject *arg, PyObject **result) {
    return (PySendResult)fastbind_send_impl(self, arg, result);
}

static int fastbind_install_am_send(PyObject *type, fastbind_send_fn impl) {
    PyTypeObject *t = (PyTypeObject *)type;
    if (t->tp_as_async == NULL) {
        PyErr_SetString(PyExc_TypeError, "type has no async slots");
        return -1;
    }
    fastbind_send_impl = impl;
    t->tp_as_async->am_send = fastbind_am_send;
    return 0;
}

#endif
