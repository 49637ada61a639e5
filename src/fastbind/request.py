"""The Fetch API Request."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .body import BodyInit, BodyMixin, check_body, take_body, with_text_type
from .errors import body_used_error
from .headers import TOKEN_CHARS as _TOKEN
from .headers import Headers, HeadersInit
from .url import canonical_url

__all__ = (
    "Request", "CfProperties", "check_url", "check_cf", "check_timeout", "normalize_method", "copy_headers",
    "forward_request",
)

_NORMALIZED = {m.lower(): m for m in ("DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH")}

# A Request's URL is its WHATWG serialisation, made once here (url.py); a Request made
# from another takes the other's as it is.
check_url = canonical_url


class CfProperties(dict):  # type: ignore[type-arg]
    """``request.cf``: what is known of the request beyond HTTP, as Cloudflare's ``cf``
    object; a key nobody filled in reads as None rather than raising KeyError."""

    __slots__ = ()

    def __missing__(self, key: object) -> None:
        return None


def check_cf(cf: object) -> CfProperties | None:
    """``fetch(..., cf=...)``: a mapping, copied (caller and callee never share it)."""
    if cf is None:
        return None
    if not isinstance(cf, Mapping):
        raise TypeError(f"fetch() cf must be a dict or None, not {type(cf).__name__}")
    return CfProperties(cf)


def check_timeout(value: object, what: str = "fetch() timeout") -> float:
    """``value`` as a float of seconds, or ValueError if it is not a positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
    return float(value)


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

    # ``_cf`` is unset on most Requests (the ``cf`` property reads None then): the
    # compiled core and the server build Requests without it.
    __slots__ = ("url", "method", "headers", "body", "body_used", "_cf")

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
        cf: Mapping[str, Any] | None = None,
    ) -> None:
        if cf is not None:
            self._cf = check_cf(cf)
        if isinstance(input, Request):
            if cf is None and input.cf is not None:
                self._cf = input.cf
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
        if type(body) is str:
            with_text_type(self.headers, False)

    @property
    def cf(self) -> CfProperties | None:
        """The ``cf`` object the request was made or sent with (``fetch(..., cf={...})``,
        or what ``fastbind serve`` knows of its client), or None."""
        try:
            return self._cf
        except AttributeError:
            return None

    def clone(self) -> Request:
        mine, theirs = self._split_body()
        self.body = mine
        new = Request.__new__(Request)
        new.url = self.url
        new.method = self.method
        new.headers = copy_headers(self.headers)
        new.body = theirs
        new.body_used = False
        if self.cf is not None:
            new._cf = self.cf
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
    cf = src.cf
    if cf is not None:
        req._cf = cf
    return req
