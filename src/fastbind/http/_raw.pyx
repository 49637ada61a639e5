# cython: language_level=3, embedsignature=True
"""Raw HTTP conversion in C: parser-level parts become the Request a Worker receives,
and its Response becomes ``(status, header pairs, body)`` (``fastbind.embed``).

The same conversions in Python, for every input off the common shapes, are in
``fastbind/http/raw.py``, with a pure ``RawEntry`` for builds without this module.
"""

cimport cython
from cpython.list cimport PyList_AsTuple, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF, Py_REFCNT, Py_XDECREF
from libc.string cimport memcmp, memcpy

from fastbind.core._core cimport Entry, entry_call, new_request
from fastbind.core._url cimport quick_url

from fastbind.core import _core as _compiled_core
from fastbind.headers import Headers, use_raw_decoder
from fastbind.http.raw import COMMON_NAMES, METHODS, raw_request, raw_response
from fastbind.response import Response

cdef extern from "_capi.h":
    int fastbind_fast_paths_init(int wanted)
    int fastbind_install_vectorcall(object type, Py_ssize_t offset) except -1
    Py_ssize_t fastbind_slot_offset(object type, const char* name) except -1
    object fastbind_slot_get(object obj, Py_ssize_t off, const char* name)
    void fastbind_slot_set(object obj, Py_ssize_t off, object value)

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    object PyUnicode_DecodeLatin1(const char* s, Py_ssize_t size, const char* errors)
    object PyBytes_FromStringAndSize(const char* s, Py_ssize_t size)
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    Py_ssize_t PySequence_Fast_GET_SIZE(object o)
    PyObject** PySequence_Fast_ITEMS(object o)
    PyTypeObject* Py_TYPE(PyObject* o)
    PyObject* PyTuple_GET_ITEM(object t, Py_ssize_t i)
    Py_ssize_t PyTuple_GET_SIZE(object t)
    PyObject* PyList_GET_ITEM(object l, Py_ssize_t i)
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    Py_ssize_t PyVectorcall_NARGS(size_t nargsf)

# This module's copy of the switch follows the core's (see core/_fast_paths.h).
cdef bint _FAST = fastbind_fast_paths_init(_compiled_core.fast_paths()["on"])

cdef object _HeadersType = Headers
cdef object _ResponseType = Response
cdef Py_ssize_t _HDR_ITEMS = fastbind_slot_offset(Headers, "_items")
cdef Py_ssize_t _HDR_SHARED = fastbind_slot_offset(Headers, "_shared")
cdef Py_ssize_t _HDR_RAW = fastbind_slot_offset(Headers, "_raw")
cdef Py_ssize_t _RESP_STATUS = fastbind_slot_offset(Response, "status")
cdef Py_ssize_t _RESP_HEADERS = fastbind_slot_offset(Response, "headers")
cdef Py_ssize_t _RESP_BODY = fastbind_slot_offset(Response, "body")
cdef Py_ssize_t _RESP_BODY_USED = fastbind_slot_offset(Response, "body_used")

# The method table, bytes keys only (b"GET" and "GET" hash alike, and comparing a
# bytes key with a str one is slow; a str method takes the Python path).
cdef dict _raw_methods = {k: v for k, v in METHODS.items() if type(k) is bytes}
cdef object _raw_request_py = raw_request
cdef object _raw_response_py = raw_response

# Common header names in a small open-addressing table keyed by length and the first
# and last letters (any case): a name found here is shared, not decoded (or encoded)
# again for every request.
cdef struct _KnownName:
    Py_ssize_t n                    # 0: an empty slot
    const unsigned char* chars      # the lower-case name (the bytes object's buffer)
    PyObject* text                  # str, kept alive by _known_keep
    PyObject* raw                   # bytes, kept alive by _known_keep

cdef enum:
    _KNOWN_SLOTS = 128              # a power of two, well above the number of names

cdef _KnownName _known[_KNOWN_SLOTS]
cdef list _known_keep = []


cdef inline unsigned char _fold(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef inline Py_ssize_t _known_slot(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    return (n * 7 + _fold(s[0]) * 3 + _fold(s[n - 1])) & (_KNOWN_SLOTS - 1)


cdef int _install_known_names(names) except -1:
    cdef Py_ssize_t slot
    cdef bytes encoded
    for name in names:
        name = str(name).lower()
        encoded = name.encode("ascii")
        if not encoded or _known_name(encoded, len(encoded), True) is not None:
            continue
        if len(_known_keep) >= _KNOWN_SLOTS // 2:
            break
        _known_keep.append((name, encoded))
        slot = _known_slot(encoded, len(encoded))
        while _known[slot].n:
            slot = (slot + 1) & (_KNOWN_SLOTS - 1)
        _known[slot].n = len(encoded)
        _known[slot].chars = encoded
        _known[slot].text = <PyObject*>name
        _known[slot].raw = <PyObject*>encoded
    return 0


cdef inline object _known_name(const unsigned char* src, Py_ssize_t n, bint want_str):
    """The shared str (or bytes) of common header name ``src`` (any case), or None."""
    if n <= 0:
        return None
    cdef Py_ssize_t slot = _known_slot(src, n), i
    cdef _KnownName* entry
    while True:
        entry = &_known[slot]
        if entry.n == 0:
            return None
        # Most names arrive lower-case (HTTP/2, and every name a Headers holds): one
        # memcmp, and the folding loop only when it differs.
        if entry.n == n and memcmp(src, entry.chars, n) == 0:
            return <object>(entry.text if want_str else entry.raw)
        if entry.n == n:
            for i in range(n):
                if _fold(src[i]) != entry.chars[i]:
                    break
            else:
                return <object>(entry.text if want_str else entry.raw)
        slot = (slot + 1) & (_KNOWN_SLOTS - 1)


cdef inline object _latin1(object raw, bint lower):
    """``raw.decode("latin-1")`` (and ``.lower()``), without a call for ASCII bytes."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), i
    cdef const unsigned char* src = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef unsigned char c, top = 0
    if lower:
        known = _known_name(src, n, True)
        if known is not None:
            return known
    for i in range(n):
        top |= src[i]
    if top >= 0x80:
        text = PyUnicode_DecodeLatin1(<const char*>src, n, NULL)
        return text.lower() if lower else text
    out = PyUnicode_New(n, 127)
    cdef unsigned char* dst = <unsigned char*>PyUnicode_DATA(out)
    if lower:
        for i in range(n):
            c = src[i]
            dst[i] = c + 32 if 65 <= c <= 90 else c
    elif n:
        memcpy(dst, src, n)
    return out


cdef str _M_GET = "GET"
cdef str _M_PUT = "PUT"
cdef str _M_POST = "POST"
cdef str _M_HEAD = "HEAD"
cdef str _M_PATCH = "PATCH"
cdef str _M_DELETE = "DELETE"
cdef str _M_OPTIONS = "OPTIONS"


cdef inline object _raw_method(object method):
    """The method name of a bytes method token, or None when it is not a common one."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(method)
    cdef const char* m = PyBytes_AS_STRING(method)
    if n == 3:
        if memcmp(m, b"GET", 3) == 0:
            return _M_GET
        if memcmp(m, b"PUT", 3) == 0:
            return _M_PUT
    elif n == 4:
        if memcmp(m, b"POST", 4) == 0:
            return _M_POST
        if memcmp(m, b"HEAD", 4) == 0:
            return _M_HEAD
    elif n == 5 and memcmp(m, b"PATCH", 5) == 0:
        return _M_PATCH
    elif n == 6 and memcmp(m, b"DELETE", 6) == 0:
        return _M_DELETE
    elif n == 7 and memcmp(m, b"OPTIONS", 7) == 0:
        return _M_OPTIONS
    cdef PyObject* known = PyDict_GetItemWithError(_raw_methods, method)
    return None if known == NULL else <object>known


cdef object _fast_raw_request(object method, object url, object raw_headers, object body):
    """The Request for raw parts in the common shapes, or None for the Python path."""
    if type(method) is not bytes:
        return None
    name = _raw_method(method)
    if name is None or not quick_url(url):
        return None
    if body is None:
        pass
    elif type(body) is bytes:
        if PyBytes_GET_SIZE(body) == 0:
            body = None
    else:
        return None
    if type(raw_headers) is list:
        if not _bytes_pairs(raw_headers):
            return None
        if PyList_GET_SIZE(raw_headers) == 0:
            return new_request(name, url, [], None, body)
        # Left raw until the Worker reads them (Headers decodes them then), as a tuple
        # (one block, from CPython's freelist): the caller may reuse its list, and
        # the pairs themselves are immutable.
        return new_request(name, url, None, PyList_AsTuple(raw_headers), body)
    if type(raw_headers) is tuple:
        if not _bytes_pairs(raw_headers):
            return None
        if PyTuple_GET_SIZE(raw_headers) == 0:
            return new_request(name, url, [], None, body)
        return new_request(name, url, None, raw_headers, body)
    return None


cdef inline bint _bytes_pairs(object pairs):
    """Every item of list or tuple ``pairs`` is a (bytes, bytes) tuple."""
    cdef Py_ssize_t i, n = PySequence_Fast_GET_SIZE(pairs)
    cdef PyObject** items = PySequence_Fast_ITEMS(pairs)
    cdef PyObject* pair
    for i in range(n):
        pair = items[i]
        if (Py_TYPE(pair) != <PyTypeObject*>tuple or PyTuple_GET_SIZE(<object>pair) != 2
                or Py_TYPE(PyTuple_GET_ITEM(<object>pair, 0)) != <PyTypeObject*>bytes
                or Py_TYPE(PyTuple_GET_ITEM(<object>pair, 1)) != <PyTypeObject*>bytes):
            return False
    return True


def decode_raw_headers(headers):
    """fastbind.headers.decode_raw_headers in C: decode raw Headers now, return the items."""
    if type(headers) is not _HeadersType:
        raise TypeError(f"decode_raw_headers() needs a Headers, not {type(headers).__name__}")
    raw = fastbind_slot_get(headers, _HDR_RAW, "_raw")
    if (type(raw) is not list and type(raw) is not tuple) or not _bytes_pairs(raw):
        raise TypeError(f"raw headers must be (name, value) pairs of bytes, not {raw!r}")
    cdef Py_ssize_t i, n = PySequence_Fast_GET_SIZE(raw)
    cdef PyObject** pairs = PySequence_Fast_ITEMS(raw)
    cdef list items = PyList_New(n)
    for i in range(n):
        item = (_latin1(<object>PyTuple_GET_ITEM(<object>pairs[i], 0), True),
                _latin1(<object>PyTuple_GET_ITEM(<object>pairs[i], 1), False))
        Py_INCREF(item)  # PyList_SET_ITEM takes a reference
        PyList_SET_ITEM(items, i, item)
    fastbind_slot_set(headers, _HDR_ITEMS, items)
    fastbind_slot_set(headers, _HDR_RAW, None)
    fastbind_slot_set(headers, _HDR_SHARED, False)
    return items


use_raw_decoder(decode_raw_headers)  # Headers decode raw pairs in C from now on


# A header a Worker answers with again and again (a content-type written as a literal
# in its code) is the same two str objects every time: their (bytes, bytes) pair is
# kept and handed out again, as tuples of bytes are immutable. Keyed by the two
# objects' identity (the slot holds them, so an address is not reused while there);
# short values only, in a direct-mapped table, so a value that changes with every
# response (a length, a date) only replaces its slot.
cdef enum:
    _PAIR_SLOTS = 64
    _PAIR_MAX_VALUE = 64

cdef struct _PairSlot:
    PyObject* name      # str, owned
    PyObject* value     # str, owned
    PyObject* pair      # (bytes, bytes), owned

cdef _PairSlot _pairs[_PAIR_SLOTS]


cdef inline object _raw_pair(object name, object value):
    """``(name, value)`` (ASCII str) as bytes: the kept pair when there is one."""
    cdef _PairSlot* slot = &_pairs[((<size_t><PyObject*>name >> 4) ^ (<size_t><PyObject*>value >> 4))
                                   & (_PAIR_SLOTS - 1)]
    if slot.name == <PyObject*>name and slot.value == <PyObject*>value:
        return <object>slot.pair
    raw_name = _known_name(<const unsigned char*>PyUnicode_DATA(name), PyUnicode_GET_LENGTH(name), False)
    if raw_name is None:
        raw_name = PyBytes_FromStringAndSize(<const char*>PyUnicode_DATA(name), PyUnicode_GET_LENGTH(name))
    pair = (raw_name, PyBytes_FromStringAndSize(<const char*>PyUnicode_DATA(value), PyUnicode_GET_LENGTH(value)))
    cdef PyObject* old_name = slot.name
    cdef PyObject* old_value = slot.value
    cdef PyObject* old_pair = slot.pair
    if PyUnicode_GET_LENGTH(value) <= _PAIR_MAX_VALUE:
        Py_INCREF(name)
        Py_INCREF(value)
        Py_INCREF(pair)
        slot.name, slot.value, slot.pair = <PyObject*>name, <PyObject*>value, <PyObject*>pair
        Py_XDECREF(old_name)  # str and tuples of bytes: freeing them runs no Python code
        Py_XDECREF(old_value)
        Py_XDECREF(old_pair)
    return pair


# A str body answered again and again (a literal in the Worker's code: Response("ok")) is
# the same object every time: its UTF-8 bytes are kept the same way, for short bodies.
cdef enum:
    _BODY_SLOTS = 16
    _BODY_MAX = 256

cdef struct _BodySlot:
    PyObject* text      # str, owned
    PyObject* raw       # its UTF-8 bytes, owned

cdef _BodySlot _bodies[_BODY_SLOTS]


cdef inline object _raw_body(object text):
    """``text.encode()``: the kept bytes when ``text`` is a body seen last time in its slot."""
    cdef _BodySlot* slot = &_bodies[(<size_t><PyObject*>text >> 4) & (_BODY_SLOTS - 1)]
    if slot.text == <PyObject*>text:
        return <object>slot.raw
    raw = (<str>text).encode("utf-8")
    cdef PyObject* old_text = slot.text
    cdef PyObject* old_raw = slot.raw
    if PyUnicode_GET_LENGTH(text) <= _BODY_MAX:
        Py_INCREF(text)
        Py_INCREF(raw)
        slot.text, slot.raw = <PyObject*>text, <PyObject*>raw
        Py_XDECREF(old_text)  # a str and bytes: freeing them runs no Python code
        Py_XDECREF(old_raw)
    return raw


cdef object _fast_raw_response(object response):
    """``(status, headers, body)`` of a Response with a plain body, or None for the Python path."""
    headers = fastbind_slot_get(response, _RESP_HEADERS, "headers")
    if type(headers) is not _HeadersType:
        return None
    body = fastbind_slot_get(response, _RESP_BODY, "body")
    if body is None:
        body = b""
    elif type(body) is str:
        body = _raw_body(body)
    elif type(body) is not bytes and type(body) is not bytearray and type(body) is not memoryview:
        return None
    items = fastbind_slot_get(headers, _HDR_ITEMS, "_items")
    if type(items) is not list:  # e.g. raw request headers put in the response as they are
        return None
    cdef Py_ssize_t i, n = PyList_GET_SIZE(items)
    cdef PyObject* item
    for i in range(n):
        item = PyList_GET_ITEM(items, i)
        if Py_TYPE(item) != <PyTypeObject*>tuple or PyTuple_GET_SIZE(<object>item) != 2:
            return None
        name = <object>PyTuple_GET_ITEM(<object>item, 0)
        value = <object>PyTuple_GET_ITEM(<object>item, 1)
        if (type(name) is not str or type(value) is not str or not PyUnicode_IS_ASCII(name)
                or not PyUnicode_IS_ASCII(value)):
            return None
    cdef list out
    cdef PyObject* old
    if (_FAST and Py_REFCNT(response) == 1 and type(response) is _ResponseType
            and Py_REFCNT(headers) == 2 and Py_REFCNT(items) == 2):
        # (A fast path: reference counts as proof of ownership.) Nothing else holds
        # the Response (its one reference is the caller's), its Headers or their list, and it is freed when this call returns, with no Python
        # code run before: its list becomes the answer's, the pairs replaced in place,
        # rather than a new list made and this one freed.
        fastbind_slot_set(headers, _HDR_ITEMS, None)
        out = <list>items
    else:
        out = PyList_New(n)  # every place filled below (or the list dropped)
    cdef bint in_place = out is items
    for i in range(n):
        old = PyList_GET_ITEM(items, i)
        pair = _raw_pair(<object>PyTuple_GET_ITEM(<object>old, 0), <object>PyTuple_GET_ITEM(<object>old, 1))
        Py_INCREF(pair)  # PyList_SET_ITEM takes a reference
        PyList_SET_ITEM(out, i, pair)
        if in_place:
            Py_XDECREF(old)  # the list's reference to the str pair it held
    fastbind_slot_set(response, _RESP_BODY_USED, True)
    return (fastbind_slot_get(response, _RESP_STATUS, "status"), out, body)


cdef object _to_raw(object response):
    """A top-level request's answer for a raw caller (the TopLevelCall's converter)."""
    result = _fast_raw_response(response)
    if result is None:
        result = _raw_response_py(response)
    return result


cdef class RawEntry:
    """Base of fastbind.embed.RawDispatcher: calling it serves one raw request."""

    cdef void* _vectorcall  # _raw_entry_vectorcall: ``raw(m, u, h, b)`` packs no tuple
    cdef readonly object runtime
    cdef readonly str entry
    cdef object _target     # runtime.entry(entry), from the first call

    def __cinit__(self):
        self._vectorcall = <void*>_raw_entry_vectorcall

    def __init__(self, runtime, str entry not None):
        self.runtime = runtime
        self.entry = entry

    def __call__(self, method, url, headers, body=None):
        # Calls from Python take _raw_entry_vectorcall when the fast paths are on;
        # this serves keywords and PyObject_Call.
        return _raw_serve(self, method, url, headers, body)


cdef inline object _raw_serve(RawEntry self, method, url, headers, body):
    target = self._target
    if target is None:  # an unknown Worker raises ConfigError here, at each call
        target = self._target = self.runtime.entry(self.entry)
    if type(target) is not Entry:  # a Runtime on the pure twin
        return target.converted(_raw_request_py(method, url, headers, body), _raw_response_py)
    request = _fast_raw_request(method, url, headers, body)
    if request is None:
        request = _raw_request_py(method, url, headers, body)
    return entry_call(<Entry>target, request, _to_raw)


cdef object _raw_entry_vectorcall(object callable, PyObject** args, size_t nargsf, PyObject* kwnames):
    cdef Py_ssize_t n = PyVectorcall_NARGS(nargsf)
    if (n == 3 or n == 4) and (kwnames == NULL or PyTuple_GET_SIZE(<object>kwnames) == 0):
        return _raw_serve(<RawEntry>callable, <object>args[0], <object>args[1], <object>args[2],
                          <object>args[3] if n == 4 else None)
    # Keywords, or a wrong number of arguments: __call__ parses and reports them.
    cdef tuple names = () if kwnames == NULL else <tuple>kwnames
    positional = tuple([<object>args[i] for i in range(n)])
    keywords = {names[i]: <object>args[n + i] for i in range(len(names))}
    return RawEntry.__call__(callable, *positional, **keywords)


def enable_fast_calls(type cls not None):
    """Give ``cls``, a subclass of RawEntry that keeps its ``__call__``, the C entry point.

    CPython 3.11 does not pass a vectorcall entry point on to subclasses defined in
    Python; fastbind.embed calls this for RawDispatcher. Does nothing when the fast
    paths are off.
    """
    if not issubclass(cls, RawEntry) or cls.__call__ is not RawEntry.__call__:
        raise TypeError(f"{cls.__name__} is not a RawEntry that keeps RawEntry.__call__")
    cdef RawEntry probe = RawEntry.__new__(RawEntry)
    fastbind_install_vectorcall(cls, <char*>&probe._vectorcall - <char*><PyObject*>probe)


enable_fast_calls(RawEntry)
_install_known_names(COMMON_NAMES)
