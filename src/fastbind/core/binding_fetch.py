"""A binding's ``fetch`` with the options of the global fetch, and the redirects it follows.

``env.X.fetch(input, *, method, headers, body, redirect="follow", timeout=None, cf=None)``
takes what ``fastbind.fetch`` takes, with the same defaults. The plain call,
``fetch(request)``, stays on the core's fast path; any option comes here, to one
function both cores share.

Redirects (the rule is ``fastbind/redirects.py``, the global fetch's): a response of the
bound Worker with a 3xx status and a ``Location`` is, with ``redirect="follow"``, answered
by sending the next request through the same binding, as workerd does: each hop a
binding call of its own (one subrequest, depth + 1), at most 20. ``"manual"`` returns
the 3xx, ``"error"`` raises RedirectError (a TypeError). ``timeout`` bounds the wait for
the bound Worker's Response, redirects included (FetchError past it); ``cf`` reaches the
callee as ``request.cf``.

The core's call keeps what it needs to follow: the ``origin`` of the request (the
caller's Request, the URL it was made from, or a snapshot of a Request built here) and
the redirect mode; when the child's Response is a redirect it calls
``redirect_follower`` and drives the coroutine it returns in the caller's place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import FetchError
from ..redirects import check_redirect_mode, location_of, next_hop, redirect_refused
from ..request import Request, check_timeout

__all__ = ("MANUAL", "FOLLOW", "ERROR", "fetch_with_options", "redirect_follower")

# Redirect modes as the core keeps them (a C char on the compiled core).
MANUAL, FOLLOW, ERROR = 0, 1, 2
_MODES = {"manual": MANUAL, "follow": FOLLOW, "error": ERROR}

# start_call(fetcher, request, mode, origin): the core's awaitable running the bound
# Worker's fetch handler with ``request`` as a child of the running invocation.
StartCall = Callable[[Any, Request, int, Any], Awaitable[Any]]


def fetch_with_options(
    fetcher: Any, binding: str, input: Any, method: Any, headers: Any, body: Any,
    redirect: Any, timeout: Any, cf: Any, start_call: StartCall,
) -> Awaitable[Any]:
    """``env.X.fetch(input, **options)`` other than the plain call."""
    mode = _MODES[check_redirect_mode(redirect)]
    if timeout is not None:
        timeout = check_timeout(timeout)
    request = Request(input, method=method, headers=headers, body=body, cf=cf)
    origin = (request.url, request.method, list(request.headers), request.body, request.cf)
    call = start_call(fetcher, request, mode, origin if mode != MANUAL else None)
    if timeout is None:
        return call
    return _within(call, timeout, f"env.{binding}.fetch({request.url!r})")


async def _within(call: Awaitable[Any], timeout: float, what: str) -> Any:
    limit = asyncio.timeout(timeout)
    try:
        async with limit:
            return await call
    except TimeoutError:
        if limit.expired():
            raise FetchError(f"{what} had no Response within {timeout:g} s.") from None
        raise


def _parts(origin: Any) -> tuple[str, str, list[tuple[str, str]], Any, Any]:
    """(url, method, header pairs, body, cf) of what the first request sent."""
    if type(origin) is tuple:
        return origin
    if isinstance(origin, Request):  # the caller's own Request, forwarded
        return origin.url, origin.method, list(origin.headers), origin.body, origin.cf
    return origin, "GET", [], None, None  # fetch(url)


def redirect_follower(
    fetcher: Any, origin: Any, mode: int, response: Any, start_call: StartCall
) -> Awaitable[Any] | None:
    """What the core awaits in place of ``response`` when it is a redirect to follow:
    None when it is not one (no Location); raises RedirectError in ``"error"`` mode."""
    location = location_of(response.status, response.headers)
    if location is None:
        return None
    url, method, headers, body, cf = _parts(origin)
    if mode == ERROR:
        raise redirect_refused(url, response.status, location)
    return _follow(fetcher, url, method, headers, body, cf, response, location, start_call)


async def _follow(
    fetcher: Any, url: str, method: str, headers: list[tuple[str, str]], body: Any, cf: Any,
    response: Any, location: str, start_call: StartCall,
) -> Any:
    followed = 0
    while True:
        url, method, headers, body = next_hop(
            url, method, headers, body, response.status, location, followed
        )
        followed += 1
        await response.aclose()  # the redirect's own body is not read
        request = Request(url, method=method, headers=headers, body=body, cf=cf)
        response = await start_call(fetcher, request, MANUAL, None)
        next_location = location_of(response.status, response.headers)
        if next_location is None:
            return response
        location = next_location
