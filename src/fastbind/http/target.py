"""The request line: method names, the Host header, the URL a Worker sees, unknown methods."""

from __future__ import annotations

import re
from urllib.parse import quote_from_bytes

import httptools

__all__ = (
    "METHODS", "HOST_OK", "valid_host", "quote_target", "other_form_url", "unknown_method", "MAX_METHOD",
)

# The usual methods without decoding; any other is decoded from the request line.
METHODS = {
    m.encode(): m
    for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
}
MAX_METHOD = 64
_CACHE_SIZE = 512

# Host header values already checked: clients send the same few again and again.
HOST_OK: dict[str, bool] = {}
# reg-name, IPv4 or [IPv6], and an optional port (RFC 9110 7.2, RFC 3986 3.2.2).
_HOST = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?")
# What llhttp fails on when it meets a method it does not know: a token and a space.
_REQUEST_LINE_START = re.compile(rb"[\r\n]*([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ")
_TOKEN_PREFIX = re.compile(rb"[\r\n]*[!#$%&'*+\-.^_`|~0-9A-Za-z]*")
_PLACEHOLDER_METHOD = b"POST"


def valid_host(host: str) -> bool:
    """Whether ``host`` is a Host header value that can stand in a URL."""
    known = HOST_OK.get(host)
    if known is None:
        known = bool(host) and _HOST.fullmatch(host) is not None
        if len(HOST_OK) < _CACHE_SIZE:
            HOST_OK[host] = known
    return known


def quote_target(target: bytes) -> str:
    """A request target with its bytes outside ASCII percent-encoded, as a browser sends them."""
    return quote_from_bytes(target, safe="/?#[]@!$&'()*+,;=:%-._~")


def other_form_url(target: bytes, host: str) -> str | None:
    """The URL of a request whose target is not a path (RFC 9112 3.2), or None if it is invalid."""
    text = target.decode("latin-1") if target.isascii() else quote_target(target)
    scheme, sep, rest = text.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        # absolute-form, as sent to a proxy: the URL itself, if it names a host
        end = len(rest)
        for stop in "/?#":
            found = rest.find(stop)
            if 0 <= found < end:
                end = found
        return text if valid_host(rest[:end]) else None
    if text == "*":
        return f"http://{host}/*"  # asterisk-form: OPTIONS * asks about the server
    # authority-form: CONNECT host:port
    return f"http://{text}/" if valid_host(text) else None


def unknown_method(data: bytes, start: int) -> tuple[str | None, bytes] | None:
    """Handle a request line at ``data[start:]`` whose method llhttp does not know.

    llhttp parses a fixed set of methods; any other token is still a method that a
    Worker may serve. Returns ``(method, data)`` with ``data`` to feed a new parser, a
    known method in place of the token; ``(None, rest)`` when the token has not ended
    yet (``rest`` waits for more bytes); None when there is no method token there.
    """
    match = _REQUEST_LINE_START.match(data, start)
    if match is None:
        prefix = _TOKEN_PREFIX.match(data, start)
        if prefix is not None and prefix.end() == len(data) and len(data) - start <= MAX_METHOD:
            return None, data[start:]
        return None
    token = match.group(1)
    if len(token) > MAX_METHOD:
        return None
    return token.decode("ascii"), data[start:match.start(1)] + _PLACEHOLDER_METHOD + data[match.end(1):]
