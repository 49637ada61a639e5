"""The Fetch API Response."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar, overload

import orjson

from .body import BodyInit, BodyMixin, check_body, with_text_type
from .headers import TEXT_ITEMS, Headers, HeadersInit
from .request import check_url
from .websocket import WebSocket

__all__ = ("Response",)

_NULL_BODY_STATUSES = frozenset((101, 103, 204, 205, 304))
_REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
_JSON_TYPE = ("content-type", "application/json")


def _check_status(status: object) -> int:
    if type(status) is not int or not 200 <= status <= 599:
        if status == 101 and type(status) is int:
            raise ValueError(
                "A Response with status 101 answers a WebSocket upgrade: give it the "
                "other end of a WebSocketPair, Response(None, status=101, web_socket=client)"
            )
        raise ValueError(f"Response status must be an int in 200..599, not {status!r}")
    return status


_Build = TypeVar("_Build")
_Read = TypeVar("_Read")


class _ClassOrInstance(Generic[_Build, _Read]):
    """``Response.json(obj)`` builds a Response; ``resp.json()`` reads one (as in JS)."""

    __slots__ = ("_build", "_read")

    def __init__(self, build: Any, read: Any) -> None:
        self._build = build
        self._read = read

    @overload
    def __get__(self, instance: None, owner: type) -> _Build: ...
    @overload
    def __get__(self, instance: object, owner: type) -> _Read: ...
    def __get__(self, instance: Any, owner: type) -> Any:
        if instance is None:
            return self._build.__get__(owner, owner)
        return self._read.__get__(instance, owner)


class _JsonBuilder(Protocol):
    def __call__(self, obj: Any, *, status: int = 200, headers: HeadersInit = None) -> Response: ...


def _build_json(cls: type[Response], obj: Any, *, status: int = 200, headers: HeadersInit = None) -> Response:
    """A Response whose body is ``obj`` serialised with orjson."""
    resp = cls(orjson.dumps(obj), status=status, headers=headers)
    if not resp.headers.has("content-type"):
        resp.headers.append(*_JSON_TYPE)
    return resp


class Response(BodyMixin):
    """An HTTP response: ``Response(body=None, *, status=200, headers=None, web_socket=None)``.

    ``web_socket``: the end of a WebSocketPair that answers an upgrade (status 101, no
    body); whoever receives the Response relays it.
    """

    # _web_socket is set only on the Responses that have one (most never pay for it).
    __slots__ = ("status", "headers", "body", "body_used", "_web_socket")

    status: int
    headers: Headers
    body: Any
    body_used: bool

    def __init__(
        self, body: BodyInit = None, *, status: int = 200, headers: HeadersInit = None,
        web_socket: WebSocket | None = None,
    ) -> None:
        if web_socket is not None:
            if not isinstance(web_socket, WebSocket):
                raise TypeError(f"web_socket must be a WebSocket, not {type(web_socket).__name__}")
            if status != 101 or body is not None:
                raise ValueError("A Response with a web_socket has status 101 and no body")
            self._web_socket = web_socket
        elif status != 200 or type(status) is not int:
            _check_status(status)
            if body is not None and status in _NULL_BODY_STATUSES:
                raise TypeError(f"Response with null body status {status} cannot have body")
        self.status = status
        if body is None or type(body) is bytes:
            self.headers = Headers(headers)
        elif type(body) is str:  # the Fetch standard's content type, unless one is given
            if headers is None:
                self.headers = Headers(TEXT_ITEMS)
            else:
                with_text_type(fields := Headers(headers), False)
                self.headers = fields
        else:
            self.headers = Headers(headers)
            self.body = check_body(body, "Response")
            self.body_used = False
            return
        self.body = body
        self.body_used = False

    json: _ClassOrInstance[_JsonBuilder, Callable[[], Coroutine[Any, Any, Any]]] = (
        _ClassOrInstance(_build_json, BodyMixin.json)
    )

    @classmethod
    def redirect(cls, url: str, status: int = 302) -> Response:
        if status not in _REDIRECT_STATUSES:
            raise ValueError(f"Redirect status must be one of 301, 302, 303, 307, 308, not {status!r}")
        return cls(None, status=status, headers={"location": check_url(url)})

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def web_socket(self) -> WebSocket | None:
        """The WebSocket end this Response answers an upgrade with, or None."""
        return getattr(self, "_web_socket", None)

    def clone(self) -> Response:
        if self.web_socket is not None:
            raise TypeError("A Response with a web_socket cannot be cloned: one end, one holder")
        mine, theirs = self._split_body()
        self.body = mine
        new = Response.__new__(Response)
        new.status = self.status
        new.headers = self.headers.copy()
        new.body = theirs
        new.body_used = False
        return new

    async def aclose(self) -> None:
        """Drop an unread body; a streamed body's source is closed."""
        body = self.body
        if body is not None:
            self.body_used = True
            closer = getattr(body, "aclose", None)
            if closer is not None:
                await closer()

    def __repr__(self) -> str:
        return f"<Response {self.status}>"
