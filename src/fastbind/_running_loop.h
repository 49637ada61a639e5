/* The running event loop of this thread, read where asyncio keeps it.

   Every top-level request asks which loop is running, to check that the core's task
   factory is on it. asyncio keeps the running loop in the thread state's dict under
   "__asyncio_running_event_loop__":

   - CPython 3.11 keeps a holder there: { PyObject_HEAD; PyObject *rl_loop; pid_t
     rl_pid; }, and asyncio.get_running_loop() calls getpid() each time to compare the
     pid (so that a forked child does not see its parent's loop): a system call, about
     160 ns here, a tenth of a raw round trip. fastbind_running_loop() reads the loop
     from the holder when its pid is this process's (kept by an at-fork hook instead of
     asked each time), which is the answer asyncio gives.
   - 3.12 keeps the loop itself there (or None), and resets it in a forked child: the
     value is the answer. (3.13 keeps it in the thread state's own struct, which is
     not read here: asyncio's path, which is short there.)

   Either way is used only once fastbind_learn_holder() has checked it against a loop
   asyncio itself returned: the object in the dict is that loop, or a holder of it of
   the layout above (its class's size is the struct's, its pid this process's). On
   any other layout the check fails and every call takes asyncio's own path (after a
   few tries: a check that failed eight times is not made again).

   The dict look-up itself (a hundred instructions) is skipped while the thread's
   dict is the one of the last look-up, unchanged: its PEP 509 version, which every
   change of a dict replaces by a number no dict has had. The value found then is
   still in that dict. Both pointers are borrowed; the dict's is only compared. */

#ifndef FASTBIND_RUNNING_LOOP_H
#define FASTBIND_RUNNING_LOOP_H

#include <Python.h>
#include <unistd.h>

typedef struct {
    PyObject_HEAD
    PyObject *rl_loop;
    pid_t rl_pid;
} fastbind_loop_holder;

static PyTypeObject *fastbind_holder_type = NULL;  /* 3.11: the holder's class, once checked */
static int fastbind_loop_in_dict = 0;              /* 3.12: the loop itself, once checked */
static int fastbind_learn_tries = 0;
static PyObject *fastbind_holder_key = NULL;       /* "__asyncio_running_event_loop__" */
static pid_t fastbind_pid = 0;                     /* this process: set at import and fork */

/* The value in thread state dict ``dict``, borrowed; NULL (no exception) if none. */
static inline PyObject *fastbind_holder_in(PyObject *dict) {
    PyObject *holder;
    if (dict == NULL || fastbind_holder_key == NULL) return NULL;
    holder = PyDict_GetItemWithError(dict, fastbind_holder_key);
    if (holder == NULL && PyErr_Occurred()) PyErr_Clear();  /* a look-up only: ask asyncio */
    return holder;
}

#if PY_VERSION_HEX < 0x030D0000
#define FASTBIND_DICT_VERSION(d) (((PyDictObject *)(d))->ma_version_tag)
static PyObject *fastbind_seen_dict = NULL;
static uint64_t fastbind_seen_version = 0;
static PyObject *fastbind_seen_value = NULL;
#endif

/* 3.12 marks ma_version_tag deprecated (dict watchers succeed it for other uses); it
   still changes with every change of the dict, which is all that is read here. */
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
#endif
/* The value under the key in this thread's dict (borrowed), or NULL. */
static inline PyObject *fastbind_holder_here(void) {
    PyObject *dict = PyThreadState_GetDict(), *value;
#if PY_VERSION_HEX < 0x030D0000
    if (dict != NULL && dict == fastbind_seen_dict
            && FASTBIND_DICT_VERSION(dict) == fastbind_seen_version) {
        return fastbind_seen_value;
    }
    value = fastbind_holder_in(dict);
    if (value != NULL) {
        fastbind_seen_dict = dict;
        fastbind_seen_version = FASTBIND_DICT_VERSION(dict);
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

/* ``loop`` is what asyncio.get_running_loop() just returned: learn which of the two
   layouts above the dict's value has, if it has one. */
static void fastbind_learn_holder(PyObject *loop) {
    PyObject *holder;
    if (fastbind_holder_type != NULL || fastbind_loop_in_dict || fastbind_learn_tries >= 8) {
        return;
    }
    fastbind_learn_tries++;
    holder = fastbind_holder_here();
    if (holder == NULL) return;
#if PY_VERSION_HEX >= 0x030C0000
    if (holder == loop) {
        fastbind_loop_in_dict = 1;
    }
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

#endif
