# The quick check of an http(s) URL already in its WHATWG serialisation: a function every
# compiled module of fastbind that cimports this file gets its own inline copy of
# (fastbind.core._core, fastbind.http._raw). The same rule as fastbind/url.py's
# _already_canonical: a URL it accepts is one the full parse would return unchanged.

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)


cdef extern from *:
    """
    /* 1: may stand in a path; 2: in a query or a fragment. The characters no part of
       an http(s) URL percent-encodes or rewrites (a conservative set). */
    static const unsigned char fastbind_url_plain[128] = {
        ['A'] = 3, ['B'] = 3, ['C'] = 3, ['D'] = 3, ['E'] = 3, ['F'] = 3, ['G'] = 3,
        ['H'] = 3, ['I'] = 3, ['J'] = 3, ['K'] = 3, ['L'] = 3, ['M'] = 3, ['N'] = 3,
        ['O'] = 3, ['P'] = 3, ['Q'] = 3, ['R'] = 3, ['S'] = 3, ['T'] = 3, ['U'] = 3,
        ['V'] = 3, ['W'] = 3, ['X'] = 3, ['Y'] = 3, ['Z'] = 3,
        ['a'] = 3, ['b'] = 3, ['c'] = 3, ['d'] = 3, ['e'] = 3, ['f'] = 3, ['g'] = 3,
        ['h'] = 3, ['i'] = 3, ['j'] = 3, ['k'] = 3, ['l'] = 3, ['m'] = 3, ['n'] = 3,
        ['o'] = 3, ['p'] = 3, ['q'] = 3, ['r'] = 3, ['s'] = 3, ['t'] = 3, ['u'] = 3,
        ['v'] = 3, ['w'] = 3, ['x'] = 3, ['y'] = 3, ['z'] = 3,
        ['0'] = 3, ['1'] = 3, ['2'] = 3, ['3'] = 3, ['4'] = 3, ['5'] = 3, ['6'] = 3,
        ['7'] = 3, ['8'] = 3, ['9'] = 3,
        ['-'] = 3, ['.'] = 3, ['_'] = 3, ['~'] = 3, ['!'] = 3, ['$'] = 3, ['&'] = 3,
        ['('] = 3, [')'] = 3, ['*'] = 3, ['+'] = 3, [','] = 3, [';'] = 3, ['='] = 3,
        [':'] = 3, ['@'] = 3, ['/'] = 3, ['%'] = 3, ['?'] = 2,
    };

    /* A host of lower-case labels whose last one starts with a letter and none starts
       with "xn--", or a dotted quad of decimal numbers 0..255 without leading zeros. */
    static int fastbind_url_host(const unsigned char *s, Py_ssize_t n) {
        Py_ssize_t i, label = 0;
        int dots = 0, digits_only = 1;
        if (n == 0)
            return 0;
        for (i = 0; i < n; i++) {
            unsigned char c = s[i];
            if (c == '.') {
                if (i == label)
                    return 0;
                dots++;
                label = i + 1;
            } else if (c >= '0' && c <= '9') {
            } else if ((c >= 'a' && c <= 'z') || c == '-') {
                digits_only = 0;
                if (c == 'x' && i == label && n - i >= 4 && s[i + 1] == 'n' && s[i + 2] == '-'
                        && s[i + 3] == '-')
                    return 0;
            } else {
                return 0;
            }
        }
        if (label == n)
            return 0;  /* a trailing dot */
        if (s[label] >= 'a' && s[label] <= 'z')
            return 1;
        if (!digits_only || dots != 3)
            return 0;
        label = 0;
        for (i = 0; i <= n; i++) {
            if (i == n || s[i] == '.') {
                Py_ssize_t len = i - label;
                if (len > 3 || (len > 1 && s[label] == '0'))
                    return 0;
                if (len == 3 && (s[label] > '2' || (s[label] == '2' && (s[label + 1] > '5'
                        || (s[label + 1] == '5' && s[label + 2] > '5')))))
                    return 0;
                label = i + 1;
            }
        }
        return 1;
    }

    static int fastbind_url_canonical(const unsigned char *s, Py_ssize_t n) {
        Py_ssize_t i, start, host_end;
        long port = 0, default_port;
        if (n > 8 && memcmp(s, "https://", 8) == 0) {
            start = 8;
            default_port = 443;
        } else if (n > 7 && memcmp(s, "http://", 7) == 0) {
            start = 7;
            default_port = 80;
        } else {
            return 0;
        }
        for (i = start; i < n && s[i] != '/' && s[i] != ':'; i++) {
        }
        host_end = i;
        if (!fastbind_url_host(s + start, host_end - start))
            return 0;
        if (i < n && s[i] == ':') {
            Py_ssize_t first = ++i;
            for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
                if (i - first == 5)
                    return 0;
                port = port * 10 + (s[i] - '0');
            }
            if (i == first || s[first] == '0' || port > 65535 || port == default_port)
                return 0;
        }
        if (i == n || s[i] != '/')
            return 0;  /* an empty path is written "/" */
        for (; i < n && s[i] != '?' && s[i] != '#'; i++) {
            unsigned char c = s[i];
            if (c >= 128 || !(fastbind_url_plain[c] & 1))
                return 0;
            /* "." and ".." segments (also spelled %2e) are resolved by the parse */
            if (c == '/' && i + 1 < n && s[i + 1] == '.')
                return 0;
            if (c == '%' && i + 2 < n && s[i + 1] == '2' && (s[i + 2] | 0x20) == 'e')
                return 0;
        }
        if (i < n && s[i] == '?') {
            for (i++; i < n && s[i] != '#'; i++) {
                if (s[i] >= 128 || !(fastbind_url_plain[s[i]] & 2))
                    return 0;
            }
        }
        if (i < n) {  /* '#' */
            for (i++; i < n; i++) {
                if (s[i] >= 128 || !(fastbind_url_plain[s[i]] & 2))
                    return 0;
            }
        }
        return 1;
    }
    """
    int fastbind_url_canonical(const unsigned char* s, Py_ssize_t n) noexcept


cdef inline bint quick_url(object url) noexcept:
    """Whether ``url`` is an http(s) URL already in its WHATWG serialisation, of the
    common shape (check_url would return it unchanged); False sends it to the full parse."""
    if type(url) is not str or not PyUnicode_IS_ASCII(url):
        return False
    return fastbind_url_canonical(
        <const unsigned char*>PyUnicode_DATA(url), PyUnicode_GET_LENGTH(url))
