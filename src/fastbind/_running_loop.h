/* The running event loop of this thread without a system call.

   Every top-level request asks which loop is running, to check that the core's task
   factory is on it. On CPython 3.11, asyncio.get_running_loop() calls getpid() each
   time (it compares the pid its holder recorded, so that a forked child does not see
   its parent's loop): a system call, about 160 ns here, a tenth of a raw round trip.
   3.12 dropped the check and the holder.

   The holder is an object in the thread state's dict under
   "__asyncio_running_event_loop__": { PyObject_HEAD; PyObject *rl_loop; pid_t rl_pid; }.
   fastbind_running_loop() reads the loop from it when its pid is this process's
   (kept by an at-fork hook instead of asked each time), which is the answer asyncio
   gives. It reads a holder only after fastbind_learn_holder() has checked, against a
   loop asyncio itself returned, that the object in the dict is such a holder: its
   class's size is the struct's, its loop field is that loop and its pid field this
   process's. On any other layout (3.12 stores the loop itself there) the check fails
   and every call takes asyncio's own path. The dict look-up itself (a hundred
   instructions) is skipped while the thread's dict has not changed since the last one
   (its PEP 509 version). */

#ifndef FASTBIND_RUNNING_LOOP_H
#define FASTBIND_RUNNING_LOOP_H

#include <Python.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    PyObject *rl_loop;
    pid_t rl_pid;
} fastbind_loop_holder;

static PyTypeObject *fastbind_holder_type = NULL;  /* set once checked; kept for life */
static PyObject *fastbind_holder_key = NULL;       /* "__asyncio_running_event_loop__" */
static pid_t fastbind_pid = 0;                     /* this process: set at import and fork */

/* The holder in thread state dict ``dict``, borrowed; NULL (no exception) if none. */
static inline PyObject *fastbind_holder_in(PyObject *dict) {
    PyObject *holder;
    if (dict == NULL || fastbind_holder_key == NULL) return NULL;
    holder = PyDict_GetItemWithError(dict, fastbind_holder_key);
    if (holder == NULL && PyErr_Occurred()) PyErr_Clear();  /* a look-up only: ask asyncio */
    return holder;
}

static inline PyObject *fastbind_holder_here(void) {
    return fastbind_holder_in(PyThreadState_GetDict());
}

#if PY_VERSION_HEX < 0x030C0000
/* The holder last found, and the state of the dict it was found in: the dict itself
   and its version (PEP 509), which every change of that dict replaces by a new number
   no other dict has had. While the thread's dict is that one, unchanged, the holder
   is still in it: the look-up is skipped. Both pointers are borrowed; the dict's is
   only compared, and the holder's read only while that dict holds it. */
static PyObject *fastbind_seen_dict = NULL;
static uint64_t fastbind_seen_version = 0;
static PyObject *fastbind_seen_holder = NULL;
#endif

/* The running loop (borrowed), or NULL with no exception: then ask asyncio. */
static inline PyObject *fastbind_running_loop(void) {
    PyObject *holder;
    if (fastbind_holder_type == NULL) return NULL;
#if PY_VERSION_HEX < 0x030C0000
    PyObject *dict = PyThreadState_GetDict();
    if (dict != NULL && dict == fastbind_seen_dict
            && ((PyDictObject *)dict)->ma_version_tag == fastbind_seen_version) {
        holder = fastbind_seen_holder;
    } else {
        holder = fastbind_holder_in(dict);
        if (holder == NULL || Py_TYPE(holder) != fastbind_holder_type) return NULL;
        fastbind_seen_dict = dict;
        fastbind_seen_version = ((PyDictObject *)dict)->ma_version_tag;
        fastbind_seen_holder = holder;
    }
#else
    holder = fastbind_holder_here();
    if (holder == NULL || Py_TYPE(holder) != fastbind_holder_type) return NULL;
#endif
    if (((fastbind_loop_holder *)holder)->rl_pid != fastbind_pid) return NULL;
    return ((fastbind_loop_holder *)holder)->rl_loop;
}

/* ``loop`` is what asyncio.get_running_loop() just returned: learn the holder's class
   if the object in the dict is a holder of that loop, laid out as above. */
static void fastbind_learn_holder(PyObject *loop) {
    PyObject *holder;
    if (fastbind_holder_type != NULL) return;
    holder = fastbind_holder_here();
    if (holder == NULL || holder == loop
            || Py_TYPE(holder)->tp_basicsize != (Py_ssize_t)sizeof(fastbind_loop_holder)
            || Py_TYPE(holder)->tp_itemsize != 0) {
        return;
    }
    if (((fastbind_loop_holder *)holder)->rl_loop != loop
            || ((fastbind_loop_holder *)holder)->rl_pid != getpid()) {
        return;
    }
    Py_INCREF(Py_TYPE(holder));
    fastbind_holder_type = Py_TYPE(holder);
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

#endif
