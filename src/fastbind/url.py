"""URLs as the URL standard (WHATWG) serialises them, parsed once when a string enters.

``canonical_url("HTTP://Example.COM:80/a b")`` is ``"http://example.com/a%20b"``: scheme
and host lower-cased, the default port dropped, an empty path written ``/``, spaces
and non-ASCII percent-encoded, internationalised hosts in their IDNA (``xn--``) form,
``.`` and ``..`` segments resolved, tabs and newlines removed and leading or trailing
spaces and controls stripped, all as the standard says. The parser is ada (the
``ada-url`` package), which implements the standard exactly; yarl, which aiohttp
brings, departs from it (no ``/`` for an empty path, ``+`` for a space in the query,
``%7e`` decoded).

Most URLs arrive already in that form (a server writes them so, and so does a Request
made from another): ``_already_canonical`` recognises the common shape of those without
parsing them, and they are returned as they are. The compiled core has the same check
in C (``core/_url.pxd``); both accept only strings the full parse would return
unchanged, so either way the result is the same.
"""

from __future__ import annotations

import re

import ada_url

__all__ = ("canonical_url",)

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
# Characters no part of an http(s) URL percent-encodes or rewrites (a conservative set:
# anything else, such as ' " < > ` { } ^ | \, takes the full parse).
_PLAIN = r"A-Za-z0-9\-._~!$&()*+,;=:@/%"
_CANONICAL = re.compile(
    r"https?://"
    # host: lower-case labels whose last one starts with a letter (so not an IPv4
    # address in another notation), or a dotted quad written the standard's way
    r"((?:[a-z0-9-]+\.)*[a-z][a-z0-9-]*|(?:" + _OCTET + r"\.){3}" + _OCTET + r")"
    r"(?::([1-9][0-9]{0,4}))?"
    r"(/[" + _PLAIN + r"]*)"
    r"(?:\?[" + _PLAIN + r"?]*)?"
    r"(?:#[" + _PLAIN + r"?]*)?"
)
_DEFAULT_PORT = {"http": 80, "https": 443}


def _already_canonical(url: str) -> bool:
    match = _CANONICAL.fullmatch(url)
    if match is None:
        return False
    host, port, path = match.groups()
    if "xn--" in host:  # punycode the parse would check
        return False
    if port is not None:
        number = int(port)
        if number > 65535 or number == _DEFAULT_PORT[url[: url.index(":")]]:
            return False
    # "." and ".." segments (also spelled %2e) are resolved by the parse.
    return "/." not in path and "%2e" not in path and "%2E" not in path


def canonical_url(url: object) -> str:
    """``url``'s WHATWG serialisation, or TypeError("Invalid URL: ...") if it has none.

    A relative URL has none: Requests are made from absolute URLs only.
    """
    if type(url) is not str:
        if not isinstance(url, str):
            raise TypeError(f"Request URL must be str, not {type(url).__name__}")
        url = str.__str__(url)
    if _already_canonical(url):
        return url
    try:
        return ada_url.normalize_url(url)
    except ValueError:
        raise TypeError(f"Invalid URL: {url}") from None
