"""A binding's fetch with the global fetch's options (redirect, timeout, cf); URLs and str bodies as the standards write them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fastbind import FetchError, Request, Response, Runtime
from fastbind.errors import RedirectError


def test_request_urls_are_the_url_standards_serialisation() -> None:
    # The examples of the issue, each as the URL standard writes it.
    cases = {
        "http://example.com": "http://example.com/",
        "HTTP://EXAMPLE.COM:80/a": "http://example.com/a",
        "https://Example.com:443/x?y": "https://example.com/x?y",
        "https://example.com:8443": "https://example.com:8443/",
        "https://example.com/a b?c d#e f": "https://example.com/a%20b?c%20d#e%20f",
        "https://example.com/caf\xe9": "https://example.com/caf%C3%A9",
        "https://m\xfcnchen.de/": "https://xn--mnchen-3ya.de/",
        "https://example.com/a/./b/../c": "https://example.com/a/c",
    }
    for given, expected in cases.items():
        assert Request(given).url == expected
        assert Request(Request(given)).url == expected  # taken as it is, not parsed again


def test_a_str_body_gets_the_standards_content_type_unless_one_is_given() -> None:
    assert Response("ok").headers.get("content-type") == "text/plain;charset=UTF-8"
    assert Response("ok", headers={"content-type": "text/html"}).headers.get("content-type") == "text/html"
    assert Response(b"ok").headers.get("content-type") is None
    assert Response(None).headers.get("content-type") is None
    post = Request("https://e/", method="POST", body="hi")
    assert post.headers.get("content-type") == "text/plain;charset=UTF-8"
    typed = Request("https://e/", method="POST", body="{}", headers={"Content-Type": "application/json"})
    assert typed.headers.get_all("content-type") == ["application/json"]


def redirecting_leaf(seen: list[tuple[str, str, str, str | None]]) -> Any:
    async def leaf(request: Request, env: Any, ctx: Any) -> Response:
        body = await request.text()
        seen.append((request.method, request.url, body, request.headers.get("authorization")))
        path = request.url.split("/", 3)[3]
        if path.startswith("hop/"):  # /hop/N redirects N more times, then lands
            n = int(path[4:])
            return Response(None, status=302, headers={"location": f"/hop/{n - 1}" if n else "/end"})
        if path == "see-other":
            return Response("moved", status=303, headers={"location": "/end"})
        if path == "temporary":
            return Response(None, status=307, headers={"location": "https://other.example/end"})
        if path == "no-location":
            return Response(None, status=302)
        return Response(f"{request.method} {body}")

    return leaf


def run_caller(core: Any, run: Any, caller: Any) -> tuple[list[Any], list[Any]]:
    seen: list[Any] = []
    reports: list[Any] = []
    rt = Runtime(on_pipeline_end=reports.append)
    rt.add_worker("caller", caller, services={"LEAF": "leaf"})
    rt.add_worker("leaf", redirecting_leaf(seen))
    response = run(rt.dispatch("caller", Request("https://x/")))
    assert response.status == 200
    return seen, reports


def test_a_redirect_chain_is_followed_through_the_binding(core, run) -> None:
    results: list[Any] = []

    async def caller(request: Request, env: Any, ctx: Any) -> Response:
        response = await env.LEAF.fetch(Request("https://x/hop/2", method="POST", body=b"data"))
        results.append((response.status, await response.text()))
        response = await env.LEAF.fetch("https://x/see-other")  # the plain call follows too
        results.append((response.status, await response.text()))
        response = await env.LEAF.fetch("https://x/no-location")
        results.append((response.status, response.headers.get("location")))
        return Response(None)

    seen, reports = run_caller(core, run, caller)
    # 302 after a POST: a GET without body; each hop through the same binding.
    assert seen[:4] == [
        ("POST", "https://x/hop/2", "data", None), ("GET", "https://x/hop/1", "", None),
        ("GET", "https://x/hop/0", "", None), ("GET", "https://x/end", "", None),
    ]
    assert results == [(200, "GET "), (200, "GET "), (302, None)]
    assert seen[4:] == [("GET", "https://x/see-other", "", None), ("GET", "https://x/end", "", None),
                        ("GET", "https://x/no-location", "", None)]
    kinds = [(r.kind, r.target, r.depth) for r in reports[0].subrequests]
    assert kinds == [("binding", "leaf", 2)] * 7  # each hop one subrequest at depth 2


def test_307_keeps_method_and_body_and_another_origin_gets_no_credentials(core, run) -> None:
    async def caller(request: Request, env: Any, ctx: Any) -> Response:
        response = await env.LEAF.fetch(
            "https://x/temporary", method="PUT", body=b"same", headers={"authorization": "secret"}
        )
        assert await response.text() == "PUT same"
        return Response(None)

    seen, _ = run_caller(core, run, caller)
    assert seen == [("PUT", "https://x/temporary", "same", "secret"),
                    ("PUT", "https://other.example/end", "same", None)]


def test_manual_error_and_too_many_redirects(core, run) -> None:
    async def caller(request: Request, env: Any, ctx: Any) -> Response:
        response = await env.LEAF.fetch("https://x/hop/0", redirect="manual")
        assert (response.status, response.headers.get("location")) == (302, "/end")
        with pytest.raises(RedirectError, match=r'redirected \(302 to /end\) and redirect is "error"') as info:
            await env.LEAF.fetch("https://x/hop/0", redirect="error")
        assert isinstance(info.value, TypeError)
        with pytest.raises(TypeError, match="^Too many redirects.$"):
            await env.LEAF.fetch("https://x/hop/25")
        response = await env.LEAF.fetch("https://x/hop/19")  # 20 redirects: the limit
        assert response.status == 200
        with pytest.raises(TypeError, match="redirect must be"):
            env.LEAF.fetch("https://x/", redirect="sometimes")
        return Response(None)

    seen, reports = run_caller(core, run, caller)
    # hop/25: the request and 20 redirects are sent; the 21st redirect is refused.
    assert [s[1] for s in seen[2:23]] == [f"https://x/hop/{n}" for n in range(25, 4, -1)]
    assert len(reports[0].subrequests) == 1 + 1 + 21 + 21


def test_cf_reaches_the_callee_and_timeout_bounds_the_wait(core, run) -> None:
    got: list[Any] = []

    async def leaf(request: Request, env: Any, ctx: Any) -> Response:
        got.append(request.cf)
        if request.url.endswith("/slow"):
            await asyncio.sleep(5)
        return Response(None)

    async def caller(request: Request, env: Any, ctx: Any) -> Response:
        cf = {"country": "PT", "colo": "LIS"}
        await env.LEAF.fetch("https://x/", cf=cf)
        cf["country"] = "changed"  # the callee has its own copy
        await env.LEAF.fetch(Request("https://x/", cf={"asn": 1}))  # forwarded with its cf
        await env.LEAF.fetch("https://x/")
        with pytest.raises(FetchError, match="had no Response within 0.05 s"):
            await env.LEAF.fetch("https://x/slow", timeout=0.05)
        with pytest.raises(TypeError, match="cf must be a dict"):
            env.LEAF.fetch("https://x/", cf="PT")
        return Response(None)

    rt = Runtime()
    rt.add_worker("caller", caller, services={"LEAF": "leaf"})
    rt.add_worker("leaf", leaf)
    assert run(rt.dispatch("caller", Request("https://x/"))).status == 200
    assert got[0] == {"country": "PT", "colo": "LIS"} and got[0]["city"] is None  # None-safe
    assert got[1] == {"asn": 1} and got[2] is None
