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
    #include <stdint.h>
    #include <string.h>
    /* Character classes, by byte (the string is ASCII): 1 in a host (lower-case letter, digit, '-',
       '.'); in a path 1 plain, 2 '/', 3 '%'; in a query or a fragment nonzero. Plain are
       the characters no part of an http(s) URL percent-encodes or rewrites (a
       conservative set: anything else takes the full parse). */
    #define FASTBIND_URL_PLAIN(X) \
        X('A') X('B') X('C') X('D') X('E') X('F') X('G') X('H') X('I') X('J') X('K') \
        X('L') X('M') X('N') X('O') X('P') X('Q') X('R') X('S') X('T') X('U') X('V') \
        X('W') X('X') X('Y') X('Z') X('_') X('~') X('!') X('$') X('&') X('(') X(')') \
        X('*') X('+') X(',') X(';') X('=') X(':') X('@') FASTBIND_URL_HOSTCHARS(X)
    #define FASTBIND_URL_HOSTCHARS(X) \
        X('a') X('b') X('c') X('d') X('e') X('f') X('g') X('h') X('i') X('j') X('k') \
        X('l') X('m') X('n') X('o') X('p') X('q') X('r') X('s') X('t') X('u') X('v') \
        X('w') X('x') X('y') X('z') X('0') X('1') X('2') X('3') X('4') X('5') X('6') \
        X('7') X('8') X('9') X('-') X('.')
    #define FASTBIND_URL_ONE(c) [c] = 1,
    static const unsigned char fastbind_url_host_chars[128] = {
        FASTBIND_URL_HOSTCHARS(FASTBIND_URL_ONE)
    };
    static const unsigned char fastbind_url_path_chars[128] = {
        FASTBIND_URL_PLAIN(FASTBIND_URL_ONE) ['/'] = 2, ['%'] = 3,
    };
    static const unsigned char fastbind_url_query_chars[128] = {
        FASTBIND_URL_PLAIN(FASTBIND_URL_ONE) ['/'] = 1, ['%'] = 1, ['?'] = 1,
    };

    /* A host of lower-case labels whose last one starts with a letter and none starts
       with "xn--", or a dotted quad of decimal numbers 0..255 without leading zeros
       (the quick check below tests the first kind itself, and calls this for others). */
    static int fastbind_url_host(const unsigned char *s, Py_ssize_t n) {
        Py_ssize_t i, label = 0;
        int dots = 0;
        if (n == 0 || s[n - 1] == '.')
            return 0;
        for (i = 0; i < n; i++) {
            if (s[i] == '.') {
                if (i == label)
                    return 0;
                dots++;
                label = i + 1;
            } else if (i == label && s[i] == 'x' && n - i > 4 && s[i + 1] == 'n'
                       && s[i + 2] == '-' && s[i + 3] == '-') {
                return 0;
            }
        }
        if (s[label] >= 'a' && s[label] <= 'z')
            return 1;
        if (dots != 3)
            return 0;
        label = 0;
        for (i = 0; i <= n; i++) {
            if (i == n || s[i] == '.') {
                Py_ssize_t len = i - label, k;
                for (k = label; k < i; k++)
                    if (s[k] < '0' || s[k] > '9')
                        return 0;
                if (len > 3 || (len > 1 && s[label] == '0'))
                    return 0;
                if (len == 3 && (s[label] - '0') * 100 + (s[label + 1] - '0') * 10
                        + (s[label + 2] - '0') > 255)
                    return 0;
                label = i + 1;
            }
        }
        return 1;
    }

    static int fastbind_url_canonical(const unsigned char *s, Py_ssize_t n) {
        Py_ssize_t i, start;
        long port = 0, default_port;
        unsigned char kind;
        uint64_t head;
        if (n <= 8)
            return 0;
        memcpy(&head, s, 8);  /* one load; compared with the schemes as bytes */
        if (memcmp(&head, "https://", 8) == 0) {
            start = 8;
            default_port = 443;
        } else if (memcmp(&head, "http://", 7) == 0) {
            start = 7;
            default_port = 80;
        } else {
            return 0;
        }
        /* The host in one pass: where its last label starts, and no "xn--" label
           (punycode, which the parse checks); the rare dotted quad checked apart. */
        Py_ssize_t label = start;
        for (i = start; i < n; i++) {
            unsigned char c = s[i];
            if (c == '.') {
                if (i == label)
                    return 0;
                label = i + 1;
            } else if (!fastbind_url_host_chars[c]) {
                break;
            } else if (c == 'x' && i == label && n - i > 4 && s[i + 1] == 'n' && s[i + 2] == '-'
                       && s[i + 3] == '-') {
                return 0;
            }
        }
        if (label == i)
            return 0;  /* no host, or a trailing dot */
        if (!(s[label] >= 'a' && s[label] <= 'z') && !fastbind_url_host(s + start, i - start))
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
            return 0;  /* an empty path is written "/"; anything else takes the parse */
        for (;;) {
            while (i < n && (kind = fastbind_url_path_chars[s[i]]) == 1)
                i++;
            if (i == n)
                return 1;
            if (kind == 2) {  /* "." and ".." segments are resolved by the parse */
                if (i + 1 < n && s[i + 1] == '.')
                    return 0;
            } else if (kind == 3) {  /* and so is %2e */
                if (i + 2 < n && s[i + 1] == '2' && (s[i + 2] | 0x20) == 'e')
                    return 0;
            } else {
                break;
            }
            i++;
        }
        if (s[i] == '?') {
            for (i++; i < n && fastbind_url_query_chars[s[i]]; i++) {
            }
        }
        if (i < n && s[i] == '#') {
            for (i++; i < n && fastbind_url_query_chars[s[i]]; i++) {
            }
        }
        return i == n;
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
