"""Where messages and lines begin and end in what a connection reads, found only when needed.

llhttp's callbacks say what a read held, not where in it: ``scan`` follows the framing
llhttp has already checked (heads end at an empty line, a body at its Content-Length
or at the chunked body's last empty line) through one read, from the state the last
read ended in. It runs only when a read ends somewhere that needs it (inside a chunked
body, or after a Content-Length body and before a request line was whole), and costs a
few ``find`` calls per message.

The helpers on lines measure an unfinished head line as llhttp's callbacks will once it
is whole, and recognise a request line without a version.
"""

from __future__ import annotations

import re

__all__ = (
    "BOUNDARY", "HEAD", "SIZED", "CHUNK_SIZE", "CHUNK_DATA", "TRAILER", "scan",
    "partial_line_size", "compact_line", "versionless_request_line",
)

# Where a read ended: between messages, in a head, in a Content-Length body, or in a
# chunked body's size line, data (with its CRLF) or trailer section.
BOUNDARY, HEAD, SIZED, CHUNK_SIZE, CHUNK_DATA, TRAILER = range(6)

_HEX = re.compile(rb"[0-9A-Fa-f]*")
_TOKEN_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def scan(
    data: bytes, kind: int, left: int, line: bytes, framings: list[int], count: int = -1
) -> tuple[list[int], int, int, bytes]:
    """Follow the messages through ``data`` from the state ``(kind, left, line)``.

    ``left``: body or chunk bytes still due (SIZED, CHUNK_DATA); ``line``: the
    unfinished line the last read ended with (HEAD, CHUNK_SIZE, TRAILER).
    ``framings``: for each head that ended in ``data``, in order, its body: the
    Content-Length, 0 for none, -1 for chunked. Returns the offsets where messages
    ended (the first ``count`` only, if given), and the state at the end of ``data``.
    """
    ends: list[int] = []
    pos, size, heads = 0, len(data), 0
    while len(ends) != count:
        if kind == BOUNDARY:
            while pos < size and data[pos] in b"\r\n":
                pos += 1  # empty lines between messages
            if pos >= size:
                return ends, BOUNDARY, 0, b""
            kind, line = HEAD, b""
        if kind == HEAD or kind == TRAILER:
            end = _empty_line_end(data, pos, line)
            if end < 0:
                return ends, kind, 0, _unfinished(data, pos, line)
            pos, line = end, b""
            if kind == TRAILER:
                ends.append(pos)
                kind = BOUNDARY
                continue
            framing = framings[heads] if heads < len(framings) else 0
            heads += 1
            if framing == 0:
                ends.append(pos)
                kind = BOUNDARY
            elif framing > 0:
                kind, left = SIZED, framing
            else:
                kind = CHUNK_SIZE
            continue
        if kind == SIZED or kind == CHUNK_DATA:
            if size - pos < left:
                return ends, kind, left - (size - pos), b""
            pos += left
            if kind == SIZED:
                ends.append(pos)
                kind = BOUNDARY
            else:
                kind, line = CHUNK_SIZE, b""
            continue
        # CHUNK_SIZE: hex digits, maybe extensions, CRLF
        newline = data.find(b"\n", pos)
        if newline < 0:
            return ends, kind, 0, (line + data[pos:])[:32]
        digits = _HEX.match(line + data[pos:newline])
        pos, line = newline + 1, b""
        chunk = int(digits[0] or b"0", 16) if digits is not None else 0
        if chunk:
            kind, left = CHUNK_DATA, chunk + 2
        else:
            kind = TRAILER
    return ends, kind, left, line


def _empty_line_end(data: bytes, pos: int, line: bytes) -> int:
    """Where the first empty line at or after ``data[pos]`` ends; ``line`` is the
    unfinished line before ``pos`` (b"": ``pos`` starts a line). -1 if none."""
    if not line and data[pos:pos + 2] == b"\r\n":
        return pos + 2
    if line == b"\r" and data[pos:pos + 1] == b"\n":
        return pos + 1
    found = data.find(b"\n\r\n", pos)
    return -1 if found < 0 else found + 3


def _unfinished(data: bytes, pos: int, line: bytes) -> bytes:
    """The line ``data`` ends with (only whether it is empty or a lone CR matters here)."""
    newline = data.rfind(b"\n", pos)
    tail = line + data[pos:] if newline < 0 else data[newline + 1:]
    return tail if len(tail) <= 1 else b"-" + tail[-1:]


def partial_line_size(line: bytes) -> int:
    """What an unfinished head line will add to the head size once llhttp has it whole.

    A header line counts its name, its value and 4 bytes (as ``on_header`` does); the
    blanks before the value are not part of it, and neither is a final CR. A request
    line counts nothing here: its target is counted piece by piece as it arrives. Never
    more than the whole line will count, so a limit checked on it refuses only heads
    that would be refused whole.
    """
    if line[-1:] == b"\r":
        line = line[:-1]
    if not line:
        return 0
    colon = line.find(b":")
    space = line.find(b" ")
    if space >= 0 and (colon < 0 or space < colon):
        return 0  # a space before any colon: the request line (a header name has none)
    if colon < 0:
        return len(line) + 4
    return len(line) - 1 - _blanks(line, colon + 1) + 4


def compact_line(line: bytes) -> bytes:
    """A header line with the blanks before its value cut to one: they do not count,
    and a client may send any number of them."""
    colon = line.find(b":")
    if colon < 0 or _blanks(line, colon + 1) < 2:
        return line
    space = line.find(b" ")
    if 0 <= space < colon:
        return line  # the request line
    return line[:colon + 1] + b" " + line[colon + 1:].lstrip(b" \t")


def _blanks(line: bytes, start: int) -> int:
    end = start
    while end < len(line) and line[end] in b" \t":
        end += 1
    return end - start


def versionless_request_line(line: bytes, url: bytes) -> bool:
    """Whether ``line`` (a whole line) is ``METHOD SP url CRLF``: a request line with no
    version, which llhttp takes for HTTP/0.9 and then waits for headers after."""
    method, space, rest = line.strip(b"\r\n").partition(b" ")
    return bool(space) and rest == url and bool(method) and all(c in _TOKEN_BYTES for c in method)
