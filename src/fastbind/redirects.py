"""The redirect rule of fetch(), one owner for the global fetch and a binding's fetch.

What a 3xx with a ``Location`` turns the next request into (the Fetch standard's
"HTTP-redirect fetch"): at most ``MAX_REDIRECTS`` (20) are followed, the 21st raises
``TypeError("Too many redirects.")``; a 303 (but for HEAD), and a 301 or 302 after a
POST, become a GET without body and without the headers that describe one; a 307 or
308 sends the same method and body again, which a stream already sent cannot be; a
hop to another origin drops the credentials (``authorization``, ``proxy-authorization``,
``cookie``). ``redirect="error"`` refuses any redirect with ``RedirectError``.
``outbound/fetch.py`` applies it to the network, ``core/binding_fetch.py`` to a
binding, where each hop is sent through the same binding.
"""

from __future__ import annotations

from typing import Any

import ada_url

from .errors import RedirectError

__all__ = (
    "MAX_REDIRECTS",
    "REDIRECT_MODES",
    "REDIRECT_STATUSES",
    "check_redirect_mode",
    "location_of",
    "next_hop",
    "redirect_refused",
)

MAX_REDIRECTS = 20  # the Fetch standard's limit
REDIRECT_MODES = ("follow", "manual", "error")
REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
_BYTES_LIKE = (bytes, bytearray, memoryview, str)
# Dropped when a redirect turns the request into a bodiless GET (step 12).
_BODY_HEADERS = frozenset(("content-encoding", "content-language", "content-location", "content-type"))
# Never carried to another origin: they would hand it the caller's secrets.
_CREDENTIAL_HEADERS = frozenset(("authorization", "proxy-authorization", "cookie"))

Pairs = list[tuple[str, str]]


def check_redirect_mode(mode: object) -> str:
    if mode not in REDIRECT_MODES:
        raise TypeError(f'fetch() redirect must be "follow", "manual" or "error", not {mode!r}')
    return mode


def location_of(status: int, headers: Any) -> str | None:
    """The ``Location`` of a redirect response (``headers.get``-able), or None if it is none."""
    if status not in REDIRECT_STATUSES:
        return None
    location: str | None = headers.get("location")
    return location


def redirect_refused(url: str, status: int, location: str) -> RedirectError:
    return RedirectError(
        f'Fetch to {url} was redirected ({status} to {location}) and redirect is "error".'
    )


def next_hop(
    url: str, method: str, headers: Pairs, body: Any, status: int, location: str, followed: int
) -> tuple[str, str, Pairs, Any]:
    """The (url, method, headers, body) to send after ``followed`` redirects and this one.

    ``url`` is the URL that answered, ``headers`` the pairs sent to it (lower-case
    names). Raises TypeError past MAX_REDIRECTS, RedirectError for a Location that is
    no http(s) URL or a stream body that would have to be sent again.
    """
    if followed >= MAX_REDIRECTS:
        raise TypeError("Too many redirects.")
    try:
        target = ada_url.join_url(url, location)
        parsed = ada_url.parse_url(target, attributes=("protocol", "host", "origin"))
    except ValueError:
        parsed = None
    if parsed is None or parsed["protocol"] not in ("http:", "https:") or not parsed["host"]:
        raise RedirectError(f"Fetch to {url} was redirected ({status}) to an invalid URL {location!r}.")
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method = "GET"
        body = None
        headers = [h for h in headers if h[0] not in _BODY_HEADERS]
    elif body is not None and not isinstance(body, _BYTES_LIKE):
        raise RedirectError(
            f"Fetch to {url} was redirected ({status} to {target}), but its streamed body "
            'was sent already and cannot be sent again; send bytes or use redirect="manual".'
        )
    if parsed["origin"] != ada_url.parse_url(url, attributes=("origin",))["origin"]:
        headers = [h for h in headers if h[0] not in _CREDENTIAL_HEADERS]
    return target, method, headers, body
