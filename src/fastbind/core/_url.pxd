# The quick check of an http(s) URL: a function every compiled module of fastbind that
# cimports this file gets its own inline copy of (fastbind.core._core, fastbind.http._raw).

from libc.stdint cimport uint64_t
from libc.string cimport memcpy


cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)


cdef inline bint quick_url(object url) noexcept:
    """What check_url accepts without a full parse: an ASCII http(s) URL with a host
    and no space, control character or DEL."""
    if type(url) is not str or not PyUnicode_IS_ASCII(url):
        return False
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(url), i, start
    cdef const unsigned char* s = <const unsigned char*>PyUnicode_DATA(url)
    if n > 8 and s[0] == c'h' and s[1] == c't' and s[2] == c't' and s[3] == c'p':
        if s[4] == c's' and s[5] == c':' and s[6] == c'/' and s[7] == c'/':
            start = 8
        elif s[4] == c':' and s[5] == c'/' and s[6] == c'/':
            start = 7
        else:
            return False
    else:
        return False
    if s[start] == c'/' or s[start] == c'?' or s[start] == c'#':
        return False
    # Any character below 0x21, or DEL? Eight at a time (n > 8), the last eight read
    # again from the end rather than one by one. Every byte is below 0x80, so adding
    # 0x5f or 1 to each carries into no other: the top bit of b + 0x5f is clear when
    # b < 0x21, that of b + 1 set when b is 0x7f.
    cdef uint64_t word, bad = 0, ones = 0x0101010101010101ULL
    i = 0
    while True:
        memcpy(&word, s + i, 8)
        bad |= ~(word + 0x5f * ones) | (word + ones)
        i += 8
        if i >= n:
            break
        if i > n - 8:
            i = n - 8
    return (bad & 0x8080808080808080ULL) == 0
