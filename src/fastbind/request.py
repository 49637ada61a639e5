"""The Fetch API Request."""

from __future__ import annotations

from typing import Any

from .body import BodyInit, BodyMixin, check_body, take_body
from .errors import body_used_error
from .headers import TOKEN_CHARS as _TOKEN
from .headers import Headers, HeadersInit

__all__ = ("Request", "check_url", "normalize_method", "copy_headers", "forward_request")

_SCHEME_CHARS_ANY_CASE = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-."
)
# Schemes that must have an authority ("special" schemes of the URL standard).
_SPECIAL = frozenset(("http", "https", "ws", "wss", "ftp"))
_NORMALIZED = {m.lower(): m for m in ("DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH")}


def check_url(url: object) -> str:
    """Return ``url`` if it is an absolute URL, else raise TypeError("Invalid URL: ...")."""
    # The common case first: an http(s) URL with a host and nothing unprintable (which
    # covers CR, LF, NUL and tab) or a space. Everything it accepts, the full check
    # below accepts too; anything else goes there.
    if (
        type(url) is str
        and (
            (url.startswith("https://") and len(url) > 8 and url[8] not in "/?#")
            or (url.startswith("http://") and len(url) > 7 and url[7] not in "/?#")
        )
        and url.isprintable()
        and " " not in url
    ):
        return url
    return _check_url_fully(url)


def _check_url_fully(url: object) -> str:
    if type(url) is not str:
        if isinstance(url, str):
            url = str(url)
        else:
            raise TypeError(f"Request URL must be str, not {type(url).__name__}")
    if "\r" in url or "\n" in url or "\0" in url or " " in url or "\t" in url:
        raise TypeError(f"Invalid URL: {url}")
    colon = url.find(":")
    scheme = url[:colon]
    # Checked before lower(): some non-ASCII letters lower-case to ASCII (U+212A -> "k").
    if colon < 1 or not scheme[0].isalpha() or not _SCHEME_CHARS_ANY_CASE.issuperset(scheme):
        raise TypeError(f"Invalid URL: {url}")
    scheme = scheme.lower()
    if scheme in _SPECIAL and (
        url[colon + 1 : colon + 3] != "//" or len(url) <= colon + 3 or url[colon + 3] in "/?#"
    ):
        raise TypeError(f"Invalid URL: {url}")
    return url


def normalize_method(method: object) -> str:
    if type(method) is not str:
        if not isinstance(method, str):  # http.HTTPMethod and other str enums are fine
            raise TypeError(f"Invalid HTTP method: {method!r}")
        method = str.__str__(method)
    if not method or not _TOKEN.issuperset(method):
        raise TypeError(f"Invalid HTTP method: {method!r}")
    return _NORMALIZED.get(method.lower(), method)


class Request(BodyMixin):
    """An HTTP request: ``Request(input, *, method="GET", headers=None, body=None)``.

    ``input`` is an absolute URL or another Request, whose url, method, headers and
    body are taken (the keywords override); taking its body marks it used, as
    ``new Request(request)`` does in JavaScript.
    """

    __slots__ = ("url", "method", "headers", "body", "body_used")

    url: str
    method: str
    headers: Headers
    body: Any
    body_used: bool

    def __init__(
        self,
        input: str | Request,
        *,
        method: str | None = None,
        headers: HeadersInit = None,
        body: BodyInit = None,
    ) -> None:
        if isinstance(input, Request):
            self.url = input.url
            self.method = normalize_method(method) if method is not None else input.method
            self.headers = Headers(headers) if headers is not None else copy_headers(input.headers)
            if body is None:
                if input.body is not None:
                    if input.body_used:
                        raise body_used_error(input)
                    input.body_used = True
                body = input.body
        else:
            self.url = check_url(input)
            self.method = normalize_method(method) if method is not None else "GET"
            self.headers = Headers(headers)
        self.body = check_body(body, "Request")
        self.body_used = False
        if body is not None and self.method in ("GET", "HEAD"):
            raise TypeError(f"Request with {self.method} method cannot have a body.")

    def clone(self) -> Request:
        mine, theirs = self._split_body()
        self.body = mine
        new = Request.__new__(Request)
        new.url = self.url
        new.method = self.method
        new.headers = copy_headers(self.headers)
        new.body = theirs
        new.body_used = False
        return new

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.url}>"


def copy_headers(headers: object) -> Headers:
    """A new Request's copy of ``headers``: copy-on-write for a Headers; anything else
    that was assigned to ``request.headers`` (a dict, pairs) is made into a Headers,
    checked as ``Headers(...)`` checks it."""
    if type(headers) is Headers:
        return headers.copy()
    return Headers(headers)  # type: ignore[arg-type]  # Headers(...) names a wrong type


def forward_request(src: Request) -> Request:
    """What a binding hands its child: same url, method and body object, headers
    copied (copy-on-write), and ``src`` marked used. The compiled core does the same
    in C for the binding hot path, and calls this when ``src.headers`` is not a Headers."""
    req = Request.__new__(Request)
    req.url = src.url
    req.method = src.method
    req.headers = copy_headers(src.headers)
    req.body = take_body(src)
    req.body_used = False
    return req
